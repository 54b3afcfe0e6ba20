"""Ingest sampler batches into samples and the hourly ledger; re-attribute when jobs change.

Both paths run every interval through `attribute_interval`, so ingest and re-attribution
cannot disagree. The caller owns the transaction (and commits once).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from accounting.clock import Clock, hour_floor_us, to_datetime, to_us
from accounting.db import lock_gpus
from accounting.errors import InvalidInput
from accounting.gpu.specs import match_spec
from accounting.jobs.models import Gpu

from .attribution import Share, attribute_interval
from .batch import Batch, BatchEvent, BatchInterval
from .models import IDLE, UNATTRIBUTED, GpuEvent, IngestedBatch, LedgerEntry, Sample, UnattributedUse, job_account
from .signals import SignalBuilder

log = logging.getLogger(__name__)


# Ledger columns summed on upsert, in the order Deltas keeps them.
SUMMED = ("energy_mj", "gpu_us", "util_known_us", "busy_us", "gpm_known_us", "sm_active_us", "tensor_active_us",
          "dram_active_us")


@dataclass(frozen=True)
class Activity:
    """An interval's utilization readings, in percent; None where not read."""

    gpu_util_pct: float | None = None
    sm_active_pct: float | None = None
    tensor_active_pct: float | None = None
    dram_bw_pct: float | None = None

    def weights_us(self, gpu_us: int) -> list[int]:
        """[util_known, busy, gpm_known, sm, tensor, dram] activity-µs for `gpu_us` of GPU time."""
        util, sm, tensor, dram = self.gpu_util_pct, self.sm_active_pct, self.tensor_active_pct, self.dram_bw_pct
        gpm = sm is not None or tensor is not None or dram is not None
        return [gpu_us if util is not None else 0, round(gpu_us * (util or 0) / 100),
                gpu_us if gpm else 0, round(gpu_us * (sm or 0) / 100), round(gpu_us * (tensor or 0) / 100),
                round(gpu_us * (dram or 0) / 100)]


NO_ACTIVITY = Activity()


class Deltas:
    """Energy, GPU time and activity to add to ledger rows, and the unattributed processes' detail."""

    def __init__(self) -> None:
        self.ledger: dict[tuple[int, int, str, int | None, str], list[int]] = {}
        self.unattributed: dict[tuple[int, int, int, str], list] = {}

    def add(self, gpu_id: int, shares: Iterable[Share], activity: Activity = NO_ACTIVITY,
            min_hour_us: int = 0) -> None:
        for s in shares:
            if s.hour_us < min_hour_us:
                continue
            account = job_account(s.job_id) if s.job_id else (UNATTRIBUTED if s.pid is not None else IDLE)
            slot = self.ledger.setdefault((gpu_id, s.hour_us, account, s.job_id, str(s.method)), [0] * len(SUMMED))
            for i, value in enumerate([s.energy_mj, s.gpu_us, *activity.weights_us(s.gpu_us)]):
                slot[i] += value
            if account == UNATTRIBUTED:
                detail = self.unattributed.setdefault((gpu_id, s.hour_us, s.pid, s.user or "?"), [0, None])
                detail[0] += s.energy_mj
                detail[1] = s.job_key or detail[1]


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


def _insert(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def register_gpus(
    session: Session, uuids: Sequence[str], *, now_us: int, node: str | None = None, described=None
) -> dict[str, int]:
    """Insert-if-absent (race-free) and describe GPUs; returns uuid → id."""
    described = described or {}
    uuids = sorted(set(uuids) | set(described) | {d.parent_uuid for d in described.values() if d.parent_uuid})
    table = Gpu.__table__
    now = to_datetime(now_us)
    rows = [{"uuid": u, "first_seen_at": now} for u in uuids]
    session.execute(_insert(session)(table).values(rows).on_conflict_do_nothing(index_elements=["uuid"]))
    ids = dict(session.execute(sa.select(table.c.uuid, table.c.id).where(table.c.uuid.in_(uuids))).all())
    for uuid, info in sorted(described.items(), key=lambda item: ids[item[0]]):  # id order: no deadlocks
        spec = match_spec(info.name) if info.name and not info.parent_uuid else None
        session.execute(
            sa.update(table).where(table.c.id == ids[uuid]).values(
                name=info.name, index=info.index, node=node, model=spec.model if spec else None, last_seen_at=now,
                parent_id=ids[info.parent_uuid] if info.parent_uuid else None,
                mig_profile=info.mig_profile, mig_slices=info.mig_slices,
            )
        )
    return ids


def add_to_ledger(session: Session, deltas: Deltas) -> None:
    """Add energy and GPU time to ledger rows (the GPUs must be locked by the caller)."""
    _upsert_add(session, LedgerEntry.__table__, ("gpu_id", "hour", "account", "method"), [
        {"gpu_id": gpu_id, "hour": to_datetime(hour_us), "account": account, "job_id": job_id, "method": method,
         **dict(zip(SUMMED, sums, strict=True))}
        for (gpu_id, hour_us, account, job_id, method), sums in deltas.ledger.items()
    ], SUMMED)
    _upsert_add(session, UnattributedUse.__table__, ("gpu_id", "hour", "pid", "user"), [
        {"gpu_id": gpu_id, "hour": to_datetime(hour_us), "pid": pid, "user": user, "energy_mj": energy,
         "job_key": job_key}
        for (gpu_id, hour_us, pid, user), (energy, job_key) in deltas.unattributed.items()
    ], ("energy_mj",))


def _upsert_add(session: Session, table: sa.Table, key: tuple[str, ...], rows: list[dict], sums: tuple[str, ...]):
    """INSERT … ON CONFLICT (key) DO UPDATE SET col = col + excluded.col, on both databases."""
    if not rows:
        return
    statement = _insert(session)(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={c: table.c[c] + statement.excluded[c] for c in sums}
    )
    session.execute(statement, rows)


def ingest_batch(session: Session, raw: dict, *, clock: Clock) -> IngestResult:
    """Take one sampler batch into samples and the ledger, exactly once per (node, seq)."""
    batch = parse_batch(raw)
    now_us = clock.now_us()
    uuids = {i.uuid for i in batch.intervals} | {e.uuid for e in batch.events if e.uuid}
    ids = register_gpus(session, sorted(uuids), now_us=now_us, node=batch.node,
                        described={g.uuid: g for g in batch.gpus})
    lock_gpus(session, list(ids.values()))
    seen = session.execute(
        sa.select(IngestedBatch.id).where(IngestedBatch.node == batch.node, IngestedBatch.seq == batch.seq)
    ).first()
    if seen:
        total_mj = sum(i.energy_mj for i in batch.intervals)
        log.info("batch %s/%s already ingested; ignored", batch.node, batch.seq)
        return IngestResult(batch.node, batch.seq, True, len(batch.intervals), total_mj)
    intervals, dropped = _without_overlaps(session, batch.intervals, ids)
    total_mj = sum(i.energy_mj for i in intervals)
    events = [*batch.events, *dropped]
    if intervals:
        rows = [
            {"gpu_id": ids[i.uuid], "start_at": to_datetime(i.start_us), "end_at": to_datetime(i.end_us),
             "energy_mj": i.energy_mj, "method": i.method, "power_mw": i.power_mw,
             "gpu_util_pct": i.gpu_util_pct, "memory_util_pct": i.memory_util_pct,
             "memory_used_bytes": i.memory_used_bytes, "sm_clock_mhz": i.sm_clock_mhz,
             "sm_active_pct": i.sm_active_pct, "tensor_active_pct": i.tensor_active_pct, "dram_bw_pct": i.dram_bw_pct,
             "processes": [p.model_dump() for p in i.processes] or None,
             "mig": [m.model_dump() for m in i.mig] or None}
            for i in intervals
        ]
        session.execute(sa.insert(Sample.__table__), rows)
        signals = SignalBuilder(
            session, sorted({r["gpu_id"] for r in rows}),
            min(i.start_us for i in intervals), max(i.end_us for i in intervals),
            {p.job_key for i in intervals for p in i.processes if p.job_key},
        )
        deltas = Deltas()
        for interval, row in zip(intervals, rows, strict=True):
            gpu_id = row["gpu_id"]
            deltas.add(gpu_id, attribute_interval(
                interval.start_us, interval.end_us, interval.energy_mj, interval.method,
                signals.tenancies.get(gpu_id, []), signals.for_interval(gpu_id, row["processes"], row["mig"]),
            ), Activity(interval.gpu_util_pct, interval.sm_active_pct, interval.tensor_active_pct,
                        interval.dram_bw_pct))
        add_to_ledger(session, deltas)
    if events:
        session.execute(sa.insert(GpuEvent.__table__), [
            {"gpu_id": ids.get(e.uuid) if e.uuid else None, "node": batch.node,
             "at": to_datetime(e.at_us), "kind": e.kind, "detail": e.detail}
            for e in events
        ])
    session.add(IngestedBatch(node=batch.node, seq=batch.seq, ingested_at=to_datetime(now_us),
                              intervals=len(intervals), energy_mj=total_mj))
    session.flush()
    return IngestResult(batch.node, batch.seq, False, len(intervals), total_mj)


def _without_overlaps(session: Session, intervals: Sequence[BatchInterval], ids: dict[str, int]):
    """Drop intervals that overlap one already stored for the GPU, or an earlier one of the same
    batch: their time is metered already (a sampler re-sent it under a new seq, or two samplers
    read one GPU), and counting it again would double its energy. Each drop becomes an event.
    The GPUs are locked by the caller, so the stored intervals cannot change meanwhile."""
    s = Sample.__table__
    kept, dropped = [], []
    by_gpu: dict[str, list[BatchInterval]] = {}
    for interval in intervals:
        by_gpu.setdefault(interval.uuid, []).append(interval)
    for uuid, mine in by_gpu.items():
        mine.sort(key=lambda i: (i.start_us, i.end_us))
        stored = [(to_us(a), to_us(b)) for a, b in session.execute(
            sa.select(s.c.start_at, s.c.end_at)
            .where(s.c.gpu_id == ids[uuid], s.c.start_at < to_datetime(mine[-1].end_us),
                   s.c.end_at > to_datetime(mine[0].start_us))
            .order_by(s.c.start_at))]
        starts = [a for a, _ in stored]
        last_end = None
        for interval in mine:
            k = bisect.bisect_left(starts, interval.end_us)  # stored intervals never overlap each other
            in_batch = last_end is not None and interval.start_us < last_end
            if in_batch or (k and stored[k - 1][1] > interval.start_us):
                log.warning("interval %s %d..%d overlaps metered time; dropped", uuid, interval.start_us,
                            interval.end_us)
                dropped.append(BatchEvent(uuid=uuid, at_us=interval.end_us, kind="overlap-dropped",
                                          detail=f"{interval.start_us}..{interval.end_us} µs, {interval.energy_mj} mJ: "
                                                 "overlaps an interval already metered"))
                continue
            kept.append(interval)
            last_end = interval.end_us
    return kept, dropped


def metered_gpu_ids(session: Session, gpu_ids: Sequence[int]) -> list[int]:
    """The GPUs whose energy is metered: a MIG instance is metered on its parent."""
    g = Gpu.__table__
    rows = session.execute(sa.select(g.c.id, g.c.parent_id).where(g.c.id.in_(list(gpu_ids)))).all()
    return sorted({parent_id or gpu_id for gpu_id, parent_id in rows})


def reattribute(session: Session, gpu_ids: Sequence[int], from_us: int) -> int:
    """Recompute the ledger of these GPUs from the hour of `from_us` on, from the raw samples.

    Called when a job's allocations change after their samples arrived (a job registered
    late, or finished at a past time). Hours whose samples have expired are left as they are.
    Returns the number of samples re-attributed.
    """
    gpu_ids = metered_gpu_ids(session, gpu_ids)
    lock_gpus(session, gpu_ids)
    t, s, g, u = LedgerEntry.__table__, Sample.__table__, Gpu.__table__, UnattributedUse.__table__
    done = 0
    for gpu_id in gpu_ids:
        expired_before = session.execute(
            sa.select(g.c.samples_expired_before).where(g.c.id == gpu_id)
        ).scalar_one_or_none()
        start_hour = hour_floor_us(from_us)
        if expired_before is not None:
            start_hour = max(start_hour, to_us(expired_before))
        samples = session.execute(
            sa.select(s.c.start_at, s.c.end_at, s.c.energy_mj, s.c.method, s.c.processes, s.c.mig, s.c.gpu_util_pct,
                      s.c.sm_active_pct, s.c.tensor_active_pct, s.c.dram_bw_pct)
            .where(s.c.gpu_id == gpu_id, s.c.end_at > to_datetime(start_hour))
        ).all()
        for table in (t, u):
            session.execute(sa.delete(table).where(table.c.gpu_id == gpu_id, table.c.hour >= to_datetime(start_hour)))
        if not samples:
            continue
        last_us = max(to_us(row.end_at) for row in samples)
        keys = {p.get("job_key") for row in samples for p in row.processes or () if p.get("job_key")}
        signals = SignalBuilder(session, [gpu_id], start_hour, last_us, keys)
        deltas = Deltas()
        for row in samples:
            deltas.add(gpu_id, attribute_interval(
                to_us(row.start_at), to_us(row.end_at), row.energy_mj, row.method,
                signals.tenancies.get(gpu_id, []), signals.for_interval(gpu_id, row.processes, row.mig),
            ), Activity(row.gpu_util_pct, row.sm_active_pct, row.tensor_active_pct, row.dram_bw_pct),
                min_hour_us=start_hour)
        add_to_ledger(session, deltas)
        done += len(samples)
    return done
