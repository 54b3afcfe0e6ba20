"""Recording work reports (idempotent by key) and adding them up per job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from accounting.clock import US_PER_S, Clock, to_datetime, to_us
from accounting.errors import InvalidInput
from accounting.jobs.service import get_job

from .models import Provenance, WorkReport, WorkReportCreate

# Clocks drift and loops report slightly ahead; a day ahead is a mistake (as for jobs).
MAX_FUTURE_S = 24 * 3600
# Work reported a little before the job's registered start: clocks of the node and the
# scheduler disagree by seconds, not minutes.
START_SLACK_S = 60
FIGURES = ("flops", "tokens", "samples", "steps")


@dataclass(frozen=True, slots=True)
class WorkTotals:
    """A job's reported work: sums as Python ints (FLOPs pass 2^63), 0 where nothing was
    reported; `figures` names those some report carried, so 0 reported and none reported differ."""

    flops: int = 0
    tokens: int = 0
    samples: int = 0
    steps: int = 0
    reports: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    figures: frozenset[str] = frozenset()


def _stored(session: Session, job_id: int, key: str) -> WorkReport | None:
    return session.exec(select(WorkReport).where(WorkReport.job_id == job_id, WorkReport.key == key)).first()


def record_work(session: Session, job_id: int, data: WorkReportCreate, *, clock: Clock) -> tuple[WorkReport, bool]:
    """Store a work report of a job; returns (report, duplicate).

    The key makes it idempotent: a report whose key the job already has changes nothing and
    gives back the stored report with duplicate=True, even if this body differs from the stored
    one (the first receipt wins; a retry must not count twice, and a client that reuses a key
    for other work has made a mistake that only it can see). Concurrent twins are safe: the
    insert runs in a savepoint, and the loser of the unique constraint returns the winner's row.

    NotFound for an unknown job; InvalidInput naming `at` when it is more than 24 h ahead of
    the clock or before the job's start minus a minute."""
    job = get_job(session, job_id)
    stored = _stored(session, job_id, data.key)
    if stored is not None:
        return stored, True
    now_us, at_us = clock.now_us(), to_us(data.at)
    if at_us > now_us + MAX_FUTURE_S * US_PER_S:
        raise InvalidInput("at", "more than 24 hours in the future")
    if at_us < to_us(job.started_at) - START_SLACK_S * US_PER_S:
        raise InvalidInput("at", f"before the job started ({job.started_at.isoformat()})")
    report = WorkReport.model_validate(data, update={
        "at": to_datetime(at_us), "job_id": job_id, "provenance": Provenance.reported.value,
        "received_at": to_datetime(now_us),
    })
    try:
        with session.begin_nested():
            session.add(report)
            session.flush()
    except sa.exc.IntegrityError:
        stored = _stored(session, job_id, data.key)
        if stored is None:  # not our key's constraint after all
            raise
        return stored, True
    return report, False


def list_work(session: Session, job_id: int, *, limit: int = 1000, offset: int = 0) -> list[WorkReport]:
    """A job's reports in the order the work was done (then received)."""
    query = select(WorkReport).where(WorkReport.job_id == job_id).order_by(WorkReport.at, WorkReport.id)
    return list(session.exec(query.offset(offset).limit(limit)).all())


def work_totals(session: Session, job_ids: Sequence[int]) -> dict[int, WorkTotals]:
    """Each job's reported work, summed; every job asked about has an entry.

    The sums are taken in Python: SQLite holds FLOP counts as decimal strings, and a SQL sum of
    64-bit columns could overflow where Python's ints do not."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    table = WorkReport.__table__
    rows = session.execute(
        sa.select(table.c.job_id, table.c.flops, table.c.tokens, table.c.samples, table.c.steps, table.c.at)
        .where(table.c.job_id.in_(ids))
    ).all()
    acc: dict[int, dict] = {
        job_id: {"sums": dict.fromkeys(FIGURES, 0), "figures": set(), "reports": 0, "first": None, "last": None}
        for job_id in ids
    }
    for job_id, *values, at in rows:
        entry = acc[job_id]
        entry["reports"] += 1
        entry["first"] = at if entry["first"] is None else min(entry["first"], at)
        entry["last"] = at if entry["last"] is None else max(entry["last"], at)
        for figure, value in zip(FIGURES, values, strict=True):
            if value is not None:
                entry["sums"][figure] += int(value)
                entry["figures"].add(figure)
    return {
        job_id: WorkTotals(**e["sums"], reports=e["reports"], first_at=e["first"], last_at=e["last"],
                           figures=frozenset(e["figures"]))
        for job_id, e in acc.items()
    }
