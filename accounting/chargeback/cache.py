"""Open statements of past months, cached in the process until what they read changes.

A month's open statement is recomputed from the whole month's ledger, jobs, allocations, work
reports and factors: seconds on a large fleet. On PostgreSQL every transaction that changes one
of those tables leaves a row in `change_log` (a statement-level trigger, migration 0007), so a
statement computed after taking snapshot S stays right while every change_log row is visible
in S. Checking that is one index range scan. Not cached: on SQLite (no change log), inside a
transaction that has written (its own changes are not in the log until it commits), and months
that have not ended (efficiency figures of running allocations move with the clock).
Entries also expire after MAX_AGE_S, well inside the change log's pruning horizon.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable

import sqlalchemy as sa
from sqlmodel import Session

MAX_AGE_S = 15 * 60
MAX_ENTRIES = 64
CHANGE_LOG_KEEP_S = 3_600  # rows younger than this are kept: more than MAX_AGE_S

_entries: OrderedDict[tuple, tuple[str, float, dict]] = OrderedDict()

_SNAPSHOT = sa.text("SELECT pg_current_snapshot()::text, pg_current_xact_id_if_assigned() IS NULL")
_CHANGED_SINCE = sa.text(
    "SELECT EXISTS (SELECT 1 FROM change_log WHERE txid >= pg_snapshot_xmin(CAST(:snap AS pg_snapshot))::text::bigint "
    "AND NOT pg_visible_in_snapshot(txid::text::xid8, CAST(:snap AS pg_snapshot)))")


def _snapshot(session: Session) -> str | None:
    """The current snapshot, or None where caching is off (SQLite; a transaction that wrote)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    snapshot, clean = session.execute(_SNAPSHOT).one()
    return snapshot if clean else None


def cached(session: Session, key: tuple, compute: Callable[[], dict]) -> dict:
    """compute(), or a copy of what it gave before if nothing it reads has changed since."""
    snapshot = _snapshot(session)
    if snapshot is None:
        return compute()
    key = (session.get_bind().url.render_as_string(hide_password=True), *key)
    entry = _entries.get(key)
    if entry is not None:
        taken, at, value = entry
        if time.monotonic() - at < MAX_AGE_S and not session.execute(_CHANGED_SINCE, {"snap": taken}).scalar_one():
            return copy.deepcopy(value)
        _entries.pop(key, None)
    value = compute()
    _entries[key] = (snapshot, time.monotonic(), copy.deepcopy(value))
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    return value


def clear() -> None:
    _entries.clear()
