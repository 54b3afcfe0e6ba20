"""The request body limit: a body over `api_max_body_bytes` is a 413 naming the limit, never read whole.

A pure ASGI middleware (no BaseHTTPMiddleware, which would buffer and re-wrap the stream). A
declared Content-Length over the limit is refused before the app sees the request; a body that
declares none (chunked) or lies is counted as it is read, and refused the moment it passes the
limit, so a client cannot make the server hold more than the limit in memory.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accounting.config import Settings


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the streamed body passes the limit. An HTTPException, because
    FastAPI turns any other error raised while it reads the body into a 400."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(status_code=413, detail=too_large_detail(limit_bytes))


def too_large_detail(limit_bytes: int) -> str:
    return (f"request body too large: the limit is {limit_bytes} bytes "
            "(setting api_max_body_bytes, env WATTLEDGER_API_MAX_BODY_BYTES)")


class BodyLimit:
    def __init__(self, app: ASGIApp, *, limit_bytes: int) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    raise BodyTooLarge(self.limit_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:  # too late for a 413: let the server drop the connection
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        # The same shape as the 413 FastAPI renders when BodyTooLarge surfaces inside a route.
        body = json.dumps({"detail": too_large_detail(self.limit_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we see it
    return None


def install(app: FastAPI, settings: Settings) -> None:
    """Wrap `app` with the body limit (once; create_app calls this)."""
    if getattr(app.state, "body_limit_installed", False):
        return
    app.add_middleware(BodyLimit, limit_bytes=settings.api_max_body_bytes)
    app.state.body_limit_installed = True
