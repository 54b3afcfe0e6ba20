"""Beat tasks: raw-sample retention."""

from __future__ import annotations

from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for, session_scope
from accounting.ledger.retention import expire_samples

from ..celery_app import app


@app.task(name="maintenance.expire_samples")
def expire_raw_samples() -> int:
    settings = get_settings()
    with session_scope(engine_for(settings.resolved_database_url)) as session:
        deleted = expire_samples(session, retention_days=settings.sample_retention_days, clock=SystemClock())
        session.commit()
    return deleted
