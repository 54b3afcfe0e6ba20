"""The project's errors as HTTP answers: 404 / 409 / 422 naming the field, never a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from accounting.errors import Conflict, InvalidInput, NotFound


def install(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        # The same shape as FastAPI's own validation errors, so clients parse one format.
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]},
        )
