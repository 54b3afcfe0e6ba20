"""Liveness and readiness probes."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..auth import maybe_principal
from ..deps import SessionDep

# Probes are public unless WATTLEDGER_API_PUBLIC_HEALTH=false; then any valid key may call them.


def probe_access(request: Request, session: SessionDep) -> None:
    maybe_principal(request, session, public=request.app.state.settings.api_public_health)


router = APIRouter(tags=["health"], dependencies=[Depends(probe_access)])


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
