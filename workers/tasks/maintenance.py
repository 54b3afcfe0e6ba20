"""Beat tasks: raw-sample retention (partitions made ahead, expired ones dropped) and the change
log's pruning."""

from __future__ import annotations

from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for, session_scope
from accounting.ledger.retention import ensure_partitions, expire_samples, prune_change_log

from ..celery_app import app


@app.task(name="maintenance.expire_samples")
def expire_raw_samples() -> int:
    settings, clock = get_settings(), SystemClock()
    with session_scope(engine_for(settings.resolved_database_url)) as session:
        ensure_partitions(session, clock=clock)
        deleted = expire_samples(session, retention_days=settings.sample_retention_days, clock=clock)
        prune_change_log(session, clock=clock)
        session.commit()
    return deleted
