"""create_app: the FastAPI application, wired to a database engine and a clock."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.engine import Engine

import accounting
from accounting.clock import Clock, SystemClock
from accounting.config import Settings, get_settings
from accounting.db import engine_for

from . import auth, errors, limits
from .routes import chargeback, efficiency, energy, gpus, health, jobs, ledger, metrics, rebound, sites, work


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, clock: Clock | None = None
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="WattLedger",
        version=accounting.__version__,
        description="GPU energy accounting: every joule attributed to the job that caused it, "
        "reconciled with the meters. Energy is stated with its unit in every answer. "
        "Send an API key as `Authorization: Bearer <key>`; roles: admin, finance, team, agent.",
    )
    app.state.settings = settings
    app.state.engine = engine or engine_for(settings.resolved_database_url)
    app.state.clock = clock or SystemClock()
    errors.install(app)
    limits.install(app, settings)
    app.include_router(health.router, responses={401: auth.RESPONSES[401]})
    app.include_router(metrics.router)
    for module in (jobs, work, gpus, ledger, energy, efficiency, rebound, chargeback, sites):
        app.include_router(module.router, prefix="/v1", responses={**auth.RESPONSES, **errors.EVERY_ROUTE})
    return app
