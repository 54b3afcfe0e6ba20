"""Ingest sampler batches into samples and the hourly ledger; re-attribute when jobs change.

Both paths run every interval through `attribute_interval`, so ingest and re-attribution
cannot disagree. The caller owns the transaction (and commits once).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from accounting.clock import Clock, hour_floor_us, to_datetime, to_us
from accounting.db import lock_gpus
from accounting.errors import InvalidInput
from accounting.gpu.specs import match_spec
from accounting.jobs.models import Allocation, Gpu

from .attribution import Share, Tenancy, attribute_interval
from .batch import Batch
from .models import IDLE, GpuEvent, IngestedBatch, LedgerEntry, Sample, job_account

log = logging.getLogger(__name__)

# (gpu_id, hour_us, job_id or None, method) → [energy_mj, gpu_us]
Deltas = dict[tuple[int, int, int | None, str], list[int]]


@dataclass(frozen=True)
class IngestResult:
    node: str
    seq: int
    duplicate: bool
    intervals: int
    energy_mj: int


def parse_batch(raw: dict) -> Batch:
    try:
        return Batch.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "batch"
        raise InvalidInput(field, first["msg"]) from exc


def ensure_gpus(session: Session, batch: Batch, *, now_us: int) -> dict[str, int]:
    """Register the batch's GPUs (insert-if-absent, race-free) and return uuid → id."""
    described = {g.uuid: g for g in batch.gpus}
    uuids = set(described) | {i.uuid for i in batch.intervals}
    uuids |= {e.uuid for e in batch.events if e.uuid}
    if not uuids:
        return {}
    return register_gpus(session, sorted(uuids), now_us=now_us, node=batch.node, described=described)


def register_gpus(
    session: Session, uuids: Sequence[str], *, now_us: int, node: str | None = None, described=None
) -> dict[str, int]:
    described = described or {}
    table = Gpu.__table__
    now = to_datetime(now_us)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    rows = [{"uuid": u, "first_seen_at": now} for u in uuids]
    session.execute(insert(table).values(rows).on_conflict_do_nothing(index_elements=["uuid"]))
    ids = dict(session.execute(sa.select(table.c.uuid, table.c.id).where(table.c.uuid.in_(uuids))).all())
    for uuid, info in described.items():
        spec = match_spec(info.name) if info.name else None
        session.execute(
            sa.update(table)
            .where(table.c.id == ids[uuid])
            .values(name=info.name, index=info.index, node=node,
                    model=spec.model if spec else None, last_seen_at=now)
        )
    return ids


def tenancies_for(session: Session, gpu_ids: Iterable[int], from_us: int, to_us_: int) -> dict[int, list[Tenancy]]:
    a = Allocation.__table__
    rows = session.execute(
        sa.select(a.c.gpu_id, a.c.job_id, a.c.start_at, a.c.end_at).where(
            a.c.gpu_id.in_(list(gpu_ids)),
            a.c.start_at < to_datetime(to_us_),
            sa.or_(a.c.end_at.is_(None), a.c.end_at > to_datetime(from_us)),
        )
    ).all()
    result: dict[int, list[Tenancy]] = defaultdict(list)
    for gpu_id, job_id, start_at, end_at in rows:
        result[gpu_id].append(Tenancy(job_id, to_us(start_at), to_us(end_at) if end_at else None))
    return result


def _accumulate(deltas: Deltas, gpu_id: int, shares: Iterable[Share], min_hour_us: int = 0) -> None:
    for share in shares:
        if share.hour_us < min_hour_us:
            continue
        slot = deltas.setdefault((gpu_id, share.hour_us, share.job_id, str(share.method)), [0, 0])
        slot[0] += share.energy_mj
        slot[1] += share.gpu_us


def add_to_ledger(session: Session, deltas: Deltas) -> None:
    """Add energy and GPU time to ledger rows (the GPUs must be locked by the caller)."""
    if not deltas:
        return
    t = LedgerEntry.__table__
    gpu_ids = {k[0] for k in deltas}
    hours = {to_datetime(k[1]) for k in deltas}
    existing = {
        (gpu_id, to_us(hour), account, method): (row_id, energy, gpu_us)
        for row_id, gpu_id, hour, account, method, energy, gpu_us in session.execute(
            sa.select(t.c.id, t.c.gpu_id, t.c.hour, t.c.account, t.c.method, t.c.energy_mj, t.c.gpu_us)
            .where(t.c.gpu_id.in_(gpu_ids), t.c.hour.in_(hours))
        )
    }
    updates, inserts = [], []
    for (gpu_id, hour_us, job_id, method), (energy, gpu_us) in deltas.items():
        account = IDLE if job_id is None else job_account(job_id)
        found = existing.get((gpu_id, hour_us, account, method))
        if found:
            updates.append({"row_id": found[0], "e": found[1] + energy, "g": found[2] + gpu_us})
        else:
            inserts.append({"gpu_id": gpu_id, "hour": to_datetime(hour_us), "account": account,
                            "job_id": job_id, "method": method, "energy_mj": energy, "gpu_us": gpu_us})
    if updates:
        session.execute(
            sa.update(t).where(t.c.id == sa.bindparam("row_id"))
            .values(energy_mj=sa.bindparam("e"), gpu_us=sa.bindparam("g")),
            updates,
            execution_options={"synchronize_session": False},
        )
    if inserts:
        session.execute(sa.insert(t), inserts)


def ingest_batch(session: Session, raw: dict, *, clock: Clock) -> IngestResult:
    """Take one sampler batch into samples and the ledger, exactly once per (node, seq)."""
    batch = parse_batch(raw)
    now_us = clock.now_us()
    ids = ensure_gpus(session, batch, now_us=now_us)
    lock_gpus(session, list(ids.values()))
    seen = session.execute(
        sa.select(IngestedBatch.id).where(IngestedBatch.node == batch.node, IngestedBatch.seq == batch.seq)
    ).first()
    total_mj = sum(i.energy_mj for i in batch.intervals)
    if seen:
        log.info("batch %s/%s already ingested; ignored", batch.node, batch.seq)
        return IngestResult(batch.node, batch.seq, True, len(batch.intervals), total_mj)
    if batch.intervals:
        session.execute(sa.insert(Sample.__table__), [
            {"gpu_id": ids[i.uuid], "start_at": to_datetime(i.start_us), "end_at": to_datetime(i.end_us),
             "energy_mj": i.energy_mj, "method": i.method, "power_mw": i.power_mw,
             "gpu_util_pct": i.gpu_util_pct, "memory_util_pct": i.memory_util_pct,
             "memory_used_bytes": i.memory_used_bytes, "sm_clock_mhz": i.sm_clock_mhz}
            for i in batch.intervals
        ])
        tenancies = tenancies_for(
            session, {ids[i.uuid] for i in batch.intervals},
            min(i.start_us for i in batch.intervals), max(i.end_us for i in batch.intervals),
        )
        deltas: Deltas = {}
        for i in batch.intervals:
            gpu_id = ids[i.uuid]
            shares = attribute_interval(i.start_us, i.end_us, i.energy_mj, i.method, tenancies.get(gpu_id, []))
            _accumulate(deltas, gpu_id, shares)
        add_to_ledger(session, deltas)
    if batch.events:
        session.execute(sa.insert(GpuEvent.__table__), [
            {"gpu_id": ids.get(e.uuid) if e.uuid else None, "node": batch.node,
             "at": to_datetime(e.at_us), "kind": e.kind, "detail": e.detail}
            for e in batch.events
        ])
    session.add(IngestedBatch(node=batch.node, seq=batch.seq, ingested_at=to_datetime(now_us),
                              intervals=len(batch.intervals), energy_mj=total_mj))
    session.flush()
    return IngestResult(batch.node, batch.seq, False, len(batch.intervals), total_mj)


def reattribute(session: Session, gpu_ids: Sequence[int], from_us: int) -> int:
    """Recompute the ledger of these GPUs from the hour of `from_us` on, from the raw samples.

    Called when a job's allocations change after their samples arrived (a job registered
    late, or finished at a past time). Hours whose samples have expired are left as they are.
    Returns the number of samples re-attributed.
    """
    lock_gpus(session, gpu_ids)
    t, s, g = LedgerEntry.__table__, Sample.__table__, Gpu.__table__
    done = 0
    for gpu_id in sorted(set(gpu_ids)):
        expired_before = session.execute(
            sa.select(g.c.samples_expired_before).where(g.c.id == gpu_id)
        ).scalar_one_or_none()
        start_hour = hour_floor_us(from_us)
        if expired_before is not None:
            start_hour = max(start_hour, to_us(expired_before))
        samples = session.execute(
            sa.select(s.c.start_at, s.c.end_at, s.c.energy_mj, s.c.method)
            .where(s.c.gpu_id == gpu_id, s.c.end_at > to_datetime(start_hour))
        ).all()
        session.execute(sa.delete(t).where(t.c.gpu_id == gpu_id, t.c.hour >= to_datetime(start_hour)))
        if not samples:
            continue
        last_us = max(to_us(row.end_at) for row in samples)
        tenancies = tenancies_for(session, [gpu_id], start_hour, last_us).get(gpu_id, [])
        deltas: Deltas = {}
        for row in samples:
            shares = attribute_interval(to_us(row.start_at), to_us(row.end_at), row.energy_mj, row.method, tenancies)
            _accumulate(deltas, gpu_id, shares, min_hour_us=start_hour)
        add_to_ledger(session, deltas)
        done += len(samples)
    return done
