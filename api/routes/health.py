"""Liveness and readiness probes."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep):
    try:
        session.execute(sa.text("SELECT 1 FROM alembic_version"))
    except Exception as exc:  # noqa: BLE001 — any failure means not ready
        return JSONResponse(status_code=503, content={"status": "unavailable", "detail": type(exc).__name__})
    return {"status": "ready"}
