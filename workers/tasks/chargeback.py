"""Chargeback statements for large fleets, built off the API's request path."""

from __future__ import annotations

from accounting.chargeback.statements import build_statement as build
from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for, session_scope

from ..celery_app import app


@app.task(name="chargeback.build_statement")
def build_statement(period: str, group_by: str, idle_policy: str) -> dict:
    """Build the open statement (read-only: nothing is stored) and return its summary."""
    with session_scope(engine_for(get_settings().resolved_database_url)) as session:
        statement = build(session, period=period, group_by=group_by, idle_policy=idle_policy, clock=SystemClock())
    return {"period": period, "group_by": group_by, "idle_policy": idle_policy, "status": statement["status"],
            "lines": len(statement["lines"]), "totals": statement["totals"],
            "reconciliation": statement["reconciliation"], "adjustments": len(statement["adjustments"])}
