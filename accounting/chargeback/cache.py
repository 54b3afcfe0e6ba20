"""Open statements of past months, cached in the process until a change to what they read commits.

A month's open statement is recomputed from the whole month's ledger, jobs, allocations, work
reports and factors: a minute on a large fleet. On PostgreSQL every transaction that changes one
of those tables leaves a row in `change_log` (statement-level triggers, migration 0007) with the
span of time [start_at, end_at) the change touches. An entry records what it read as a span too
(`Reads`: its months), so a statement computed after taking snapshot S stays right while no
change_log row that overlaps its span is invisible in S. Ingest, which commits every few ms,
writes the current hour (and locks GPUs without changing them): it leaves a past month's entry
alone. Checking is one index range scan over the rows logged since the entry was last confirmed.

Confirming moves the entry to the snapshot of the check: the rows that snapshot sees and S did
not were just found not to overlap, so the value is that snapshot's too. This keeps each check
short and keeps an entry valid while change_log rows older than the pruning horizon go
(retention.prune_change_log keeps an hour): an entry not confirmed within CONFIRM_WITHIN_S is
dropped, since rows it would need may be gone.

MAX_AGE_S is long (a day) because an entry's value does not depend on when it is read: a past
month's figures change only through the tables logged, and the check sees every committed change
to them. The one exception is the clock: a job with an open allocation has a life that grows
with now, which moves its work share in the month (efficiency.py). A statement whose months such a
job ran in says so (`Reads.clock_bound`) and keeps CLOCK_BOUND_MAX_AGE_S. The day bounds what an
unknown gap in the logging (a table written with the triggers disabled) could cost.

Not cached: on SQLite (no change log), inside a transaction that has written (its own changes are
not in the log until it commits), and months that have not ended.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

MAX_AGE_S = 24 * 3_600
CLOCK_BOUND_MAX_AGE_S = 15 * 60
CONFIRM_WITHIN_S = 30 * 60  # well inside the change log's pruning horizon (an hour)
MAX_ENTRIES = 64


@dataclass(frozen=True)
class Reads:
    """The UTC span [start, end) whose changes a value depends on; clock_bound: it also moves with now."""

    start: datetime
    end: datetime
    clock_bound: bool = False


@dataclass
class _Entry:
    snapshot: str  # the latest snapshot the value is known right for
    confirmed_at: float  # time.monotonic() of that snapshot
    made_at: float
    reads: Reads
    value: dict


_entries: OrderedDict[tuple, _Entry] = OrderedDict()

_SNAPSHOT = sa.text("SELECT pg_current_snapshot()::text, pg_current_xact_id_if_assigned() IS NULL")
# One statement: under READ COMMITTED each statement has its own snapshot, and the one returned
# must be the one the EXISTS scanned with.
_CONFIRM = sa.text(
    "SELECT pg_current_snapshot()::text, EXISTS (SELECT 1 FROM change_log "
    "WHERE txid >= pg_snapshot_xmin(CAST(:snap AS pg_snapshot))::text::bigint "
    "AND NOT pg_visible_in_snapshot(txid::text::xid8, CAST(:snap AS pg_snapshot)) "
    "AND coalesce(start_at, '-infinity') < :end AND coalesce(end_at, 'infinity') > :start)")


def _snapshot(session: Session) -> str | None:
    """The current snapshot, or None where caching is off (SQLite; a transaction that wrote)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    snapshot, clean = session.execute(_SNAPSHOT).one()
    return snapshot if clean else None


def _confirmed(session: Session, entry: _Entry) -> bool:
    """Whether the entry is still right; if so it moves to the current snapshot."""
    now = time.monotonic()
    max_age_s = CLOCK_BOUND_MAX_AGE_S if entry.reads.clock_bound else MAX_AGE_S
    if now - entry.made_at >= max_age_s or now - entry.confirmed_at >= CONFIRM_WITHIN_S:
        return False
    snapshot, changed = session.execute(
        _CONFIRM, {"snap": entry.snapshot, "start": entry.reads.start, "end": entry.reads.end}).one()
    if changed:
        return False
    entry.snapshot, entry.confirmed_at = snapshot, now
    return True


def cached(session: Session, key: tuple, compute: Callable[[], tuple[dict, Reads]]) -> dict:
    """compute()'s value, or a copy of what it gave before if nothing it reads has changed since."""
    snapshot = _snapshot(session)
    if snapshot is None:
        return compute()[0]
    key = (session.get_bind().url.render_as_string(hide_password=True), *key)
    entry = _entries.get(key)
    if entry is not None:
        if _confirmed(session, entry):
            _entries.move_to_end(key)
            return copy.deepcopy(entry.value)
        _entries.pop(key, None)
    made_at = time.monotonic()
    value, reads = compute()
    _entries[key] = _Entry(snapshot, made_at, made_at, reads, copy.deepcopy(value))
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    return value


def clear() -> None:
    _entries.clear()
