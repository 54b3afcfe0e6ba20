"""The project's errors as HTTP answers: 404 / 409 / 422 naming the field, 503 when the database is
unavailable; never a 500."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError

from accounting.errors import Conflict, InvalidInput, NotFound

RETRY_AFTER_S = 5


class ErrorAnswer(BaseModel):
    """Every error but a 422: what went wrong, in words."""

    detail: str


_MEANINGS = {
    400: "The body could not be read as JSON.",
    404: "The id names nothing this key may see.",
    409: "The request contradicts stored state.",
    413: "The body is larger than the server's limit (api_max_body_bytes); the detail names it.",
    501: "Not available in this installation.",
    503: "The database is unreachable or the request lost a lock race (a deadlock); retry after Retry-After.",
}


def documented(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses=` for the error codes a route answers, all with an ErrorAnswer body."""
    return {code: {"model": ErrorAnswer, "description": _MEANINGS[code]} for code in codes}


# Every /v1 route, besides the key's 401 and 403 (api/auth.py): an unreadable or oversized body,
# and the database down or a deadlock victim (nothing was stored: the transaction rolled back).
EVERY_ROUTE = documented(400, 413, 503)


def json_safe(node):
    """NaN and ±Infinity as the strings JSON lacks a number for. Python's parser accepts `NaN`
    in a body, and pydantic echoes the bad value in its error: rendered as is, the 422 would
    fail to serialize (strict JSON) and become a 500."""
    if isinstance(node, float) and not math.isfinite(node):
        return "NaN" if math.isnan(node) else ("Infinity" if node > 0 else "-Infinity")
    if isinstance(node, dict):
        return {k: json_safe(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [json_safe(v) for v in node]
    return node


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

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_unavailable(_: Request, exc: OperationalError | InterfaceError) -> JSONResponse:
        # A restart of PostgreSQL or a deadlock is the client's to retry, not a server bug (500).
        return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                            content={"detail": f"the database is unavailable or busy ({type(exc.orig).__name__}); "
                                               f"nothing was stored; retry in {RETRY_AFTER_S} s"})

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": json_safe(jsonable_encoder(exc.errors()))})
