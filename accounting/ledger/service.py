"""Ingest sampler batches into samples and the hourly ledger; re-attribute when jobs change.

Both paths attribute every interval by `attribute_interval` (ingest books its common case, one
piece with at most one holder, straight to the ledger row that function would give), so ingest
and re-attribution cannot disagree. Ingest is made for throughput: a hand-checked batch, one COPY
for the samples, one upsert for the ledger, a fixed dozen statements a batch. The caller owns
the transaction (and commits once).
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, US_PER_S, Clock, hour_floor_us, to_datetime, to_us
from accounting.db import copy_rows, lock_gpus, upsert_adding
from accounting.errors import InvalidInput
from accounting.gpu.specs import match_spec
from accounting.jobs.models import Gpu

from .attribution import EXCLUSIVE, Share, attribute_interval, whole_piece_holders
from .batch import BatchEvent, ParsedBatch, Reading, checked_batch
from .models import IDLE, UNATTRIBUTED, GpuEvent, IngestedBatch, LedgerEntry, Sample, UnattributedUse, job_account
from .signals import SignalBuilder

log = logging.getLogger(__name__)


# Ledger columns summed on upsert, in the order Deltas keeps them.
SUMMED = ("energy_mj", "gpu_us", "util_known_us", "busy_us", "gpm_known_us", "sm_active_us", "tensor_active_us",
          "dram_active_us")


class Activity(NamedTuple):
    """An interval's utilization readings, in percent; None where not read."""

    gpu_util_pct: float | None = None
    sm_active_pct: float | None = None
    tensor_active_pct: float | None = None
    dram_bw_pct: float | None = None


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
            self.put(gpu_id, s.hour_us, s.job_id, str(s.method), s.energy_mj, s.gpu_us, activity, s.pid)
            if not s.job_id and s.pid is not None:  # UNATTRIBUTED: keep who it was
                detail = self.unattributed.setdefault((gpu_id, s.hour_us, s.pid, s.user or "?"), [0, None])
                detail[0] += s.energy_mj
                detail[1] = s.job_key or detail[1]

    def put(self, gpu_id: int, hour_us: int, job_id: int | None, method: str, energy_mj: int, gpu_us: int,
            activity: Activity, pid: int | None = None) -> None:
        """Add one share to its ledger row."""
        account = job_account(job_id) if job_id else (UNATTRIBUTED if pid is not None else IDLE)
        key = (gpu_id, hour_us, account, job_id, method)
        slot = self.ledger.get(key)
        if slot is None:
            slot = self.ledger[key] = [0] * len(SUMMED)
        slot[0] += energy_mj
        slot[1] += gpu_us
        util, sm, tensor, dram = activity  # activity-µs: time with a reading, and time × its percentage
        if util is not None:
            slot[2] += gpu_us
            slot[3] += round(gpu_us * util / 100)
        if sm is not None or tensor is not None or dram is not None:
            slot[4] += gpu_us
            slot[5] += round(gpu_us * (sm or 0) / 100)
            slot[6] += round(gpu_us * (tensor or 0) / 100)
            slot[7] += round(gpu_us * (dram or 0) / 100)


@dataclass(frozen=True)
class IngestResult:
    node: str
    seq: int
    duplicate: bool
    intervals: int
    energy_mj: int


def parse_batch(raw: dict) -> ParsedBatch:
    try:
        return checked_batch(raw)
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


# last_seen_at is kept to within this: rewriting it on every batch cost an UPDATE per GPU per batch.
LAST_SEEN_STEP_US = 60 * US_PER_S
DESCRIBED = ("name", "index", "node", "model", "parent_id", "mig_profile", "mig_slices")


def register_gpus(
    session: Session, uuids: Sequence[str], *, now_us: int, node: str | None = None, described=None,
    lock: bool = False,
) -> dict[str, int]:
    """Insert-if-absent (race-free) and describe GPUs; returns uuid → id. A GPU whose description
    is unchanged and whose last_seen_at is recent is only read, not written. `lock`: the GPUs are
    locked as by `lock_gpus` (on PostgreSQL by the same statement that reads them)."""
    described = described or {}
    uuids = sorted(set(uuids) | set(described) | {d.parent_uuid for d in described.values() if d.parent_uuid})
    table = Gpu.__table__
    now = to_datetime(now_us)
    postgres = session.get_bind().dialect.name == "postgresql"

    def known_rows() -> dict:
        columns = [table.c[c] for c in ("uuid", "id", "last_seen_at", *DESCRIBED)]
        query = sa.select(*columns).where(table.c.uuid.in_(uuids))
        if lock and postgres:  # row locks in id order, as lock_gpus takes them
            query = query.order_by(table.c.id).with_for_update()
        return {row.uuid: row for row in session.execute(query)}

    known = known_rows()
    if len(known) < len(uuids):
        rows = [{"uuid": u, "first_seen_at": now} for u in uuids if u not in known]
        session.execute(_insert(session)(table).values(rows).on_conflict_do_nothing(index_elements=["uuid"]))
        known = known_rows()
    ids = {uuid: row.id for uuid, row in known.items()}
    changes = []
    for uuid, info in described.items():
        spec = match_spec(info.name) if info.name and not info.parent_uuid else None
        wanted = {"name": info.name, "index": info.index, "node": node, "model": spec.model if spec else None,
                  "parent_id": ids[info.parent_uuid] if info.parent_uuid else None,
                  "mig_profile": info.mig_profile, "mig_slices": info.mig_slices}
        row = known[uuid]
        stale = row.last_seen_at is None or to_us(row.last_seen_at) <= now_us - LAST_SEEN_STEP_US
        if stale or any(getattr(row, column) != value for column, value in wanted.items()):
            changes.append({"gpu": ids[uuid], **wanted, "last_seen_at": now})
    if changes:  # one executemany, in id order: no deadlocks
        session.execute(sa.update(table).where(table.c.id == sa.bindparam("gpu")),
                        sorted(changes, key=lambda c: c["gpu"]))
    if lock and not postgres:
        lock_gpus(session, list(ids.values()))
    return ids


def add_to_ledger(session: Session, deltas: Deltas) -> None:
    """Add energy and GPU time to ledger rows (the GPUs must be locked by the caller)."""
    upsert_adding(session, LedgerEntry.__table__, ("gpu_id", "hour", "account", "method"), [
        {"gpu_id": gpu_id, "hour": to_datetime(hour_us), "account": account, "job_id": job_id, "method": method,
         **dict(zip(SUMMED, sums, strict=True))}
        for (gpu_id, hour_us, account, job_id, method), sums in deltas.ledger.items()
    ], SUMMED)
    upsert_adding(session, UnattributedUse.__table__, ("gpu_id", "hour", "pid", "user"), [
        {"gpu_id": gpu_id, "hour": to_datetime(hour_us), "pid": pid, "user": user, "energy_mj": energy,
         "job_key": job_key}
        for (gpu_id, hour_us, pid, user), (energy, job_key) in deltas.unattributed.items()
    ], ("energy_mj",))


def ingest_batch(session: Session, raw: dict, *, clock: Clock) -> IngestResult:
    """Take one sampler batch into samples and the ledger, exactly once per (node, seq).

    A batch costs a fixed dozen statements whatever its size: samples go in by one COPY (one
    INSERT on SQLite), ledger rows by one upsert."""
    batch = parse_batch(raw)
    now_us = clock.now_us()
    uuids = {r.uuid for r in batch.readings} | {e.uuid for e in batch.events if e.uuid}
    ids = register_gpus(session, sorted(uuids), now_us=now_us, node=batch.node,
                        described={g.uuid: g for g in batch.gpus}, lock=True)
    seen = session.execute(
        sa.select(IngestedBatch.id).where(IngestedBatch.node == batch.node, IngestedBatch.seq == batch.seq)
    ).first()
    if seen:
        total_mj = sum(r.energy_mj for r in batch.readings)
        log.info("batch %s/%s already ingested; ignored", batch.node, batch.seq)
        return IngestResult(batch.node, batch.seq, True, len(batch.readings), total_mj)
    readings, dropped = _without_overlaps(session, batch.readings, ids) if batch.readings else ([], [])
    total_mj = sum(r.energy_mj for r in readings)
    events = [*batch.events, *dropped]
    if readings:
        gpu_ids = [ids[r.uuid] for r in readings]
        store_samples(session, readings, gpu_ids)
        add_to_ledger(session, _deltas(session, readings, gpu_ids))
    if events:
        session.execute(sa.insert(GpuEvent.__table__), [
            {"gpu_id": ids.get(e.uuid) if e.uuid else None, "node": batch.node,
             "at": to_datetime(e.at_us), "kind": e.kind, "detail": e.detail}
            for e in events
        ])
    session.execute(sa.insert(IngestedBatch.__table__).values(
        node=batch.node, seq=batch.seq, ingested_at=to_datetime(now_us), intervals=len(readings), energy_mj=total_mj))
    return IngestResult(batch.node, batch.seq, False, len(readings), total_mj)


def _deltas(session: Session, readings: list[Reading], gpu_ids: list[int]) -> Deltas:
    """Every reading attributed, summed per ledger row. Most readings are one piece with one
    holder (or none) and no process or MIG detail: `attribute_interval` would give them one
    share of all their energy and time, so they go straight to their ledger row."""
    signals = SignalBuilder(
        session, sorted(set(gpu_ids)), min(r.start_us for r in readings), max(r.end_us for r in readings),
        {p["job_key"] for r in readings if r.processes for p in r.processes if p["job_key"]},
    )
    tenancies, layouts, deltas = signals.tenancies, signals.layouts, Deltas()
    for r, gpu_id in zip(readings, gpu_ids, strict=True):
        activity = Activity(r.gpu_util_pct, r.sm_active_pct, r.tensor_active_pct, r.dram_bw_pct)
        held = tenancies.get(gpu_id, ())
        if r.processes is None and not (r.mig and layouts[gpu_id].instances) and r.method == "counter":
            holders = whole_piece_holders(r.start_us, r.end_us, held)
            if holders is not None and len(holders) <= 1:
                deltas.put(gpu_id, r.start_us - r.start_us % US_PER_HOUR, holders[0] if holders else None, EXCLUSIVE,
                           r.energy_mj, r.end_us - r.start_us, activity)
                continue
        deltas.add(gpu_id, attribute_interval(r.start_us, r.end_us, r.energy_mj, r.method, held,
                                              signals.for_interval(gpu_id, r.processes, r.mig)), activity)
    return deltas


SAMPLE_COLUMNS = ("gpu_id", "start_at", "end_at", *Reading._fields[3:])


def store_samples(session: Session, readings: Sequence[Reading], gpu_ids: Sequence[int]) -> None:
    """The readings as `sample` rows: one binary COPY on PostgreSQL, one INSERT elsewhere."""
    times: dict[int, object] = {}  # the GPUs of a node share their reading times: convert each once

    def at(t_us: int):
        value = times.get(t_us)
        if value is None:
            value = times[t_us] = to_datetime(t_us)
        return value

    rows = [(gpu_id, at(r.start_us), at(r.end_us), *r[3:]) for r, gpu_id in zip(readings, gpu_ids, strict=True)]
    if session.get_bind().dialect.name == "postgresql":
        copy_rows(session, Sample.__table__, SAMPLE_COLUMNS, rows)
    else:
        session.execute(sa.insert(Sample.__table__), [dict(zip(SAMPLE_COLUMNS, row, strict=True)) for row in rows])


def _without_overlaps(session: Session, readings: Sequence[Reading], ids: dict[str, int]):
    """Drop readings that overlap one already stored for the GPU, or an earlier one of the same
    batch: their time is metered already (a sampler re-sent it under a new seq, or two samplers
    read one GPU), and counting it again would double its energy. Each drop becomes an event.
    The GPUs are locked by the caller, so the stored intervals cannot change meanwhile. One query
    for all the batch's GPUs."""
    by_gpu: dict[str, list[Reading]] = {}
    for reading in readings:
        by_gpu.setdefault(reading.uuid, []).append(reading)
    stored: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for gpu_id, a, b in _stored_between(session, sorted({ids[u] for u in by_gpu}),
                                        min(r.start_us for r in readings), max(r.end_us for r in readings)):
        stored[gpu_id].append((to_us(a), to_us(b)))
    kept, dropped = [], []
    for uuid, mine in by_gpu.items():
        mine.sort(key=lambda r: (r.start_us, r.end_us))
        theirs = stored.get(ids[uuid], [])
        starts = [a for a, _ in theirs]
        last_end = None
        for r in mine:
            k = bisect.bisect_left(starts, r.end_us)  # stored intervals never overlap each other
            in_batch = last_end is not None and r.start_us < last_end
            if in_batch or (k and theirs[k - 1][1] > r.start_us):
                log.warning("interval %s %d..%d overlaps metered time; dropped", uuid, r.start_us, r.end_us)
                dropped.append(BatchEvent(uuid=uuid, at_us=r.end_us, kind="overlap-dropped",
                                          detail=f"{r.start_us}..{r.end_us} µs, {r.energy_mj} mJ: "
                                                 "overlaps an interval already metered"))
                continue
            kept.append(r)
            last_end = r.end_us
    return kept, dropped


# The stored intervals that overlap [lo, hi): those starting inside it, and per GPU the last one
# starting before it (stored intervals never overlap, so no earlier one can reach it). Both
# parts are bounded index ranges: "start_at < hi AND end_at > lo" would read the GPUs' history.
_OVERLAPPING = sa.text("""
SELECT p.gpu_id, p.start_at, p.end_at
FROM unnest(CAST(:gpu_ids AS integer[])) AS g(id)
CROSS JOIN LATERAL (SELECT gpu_id, start_at, end_at FROM sample WHERE gpu_id = g.id AND start_at < :lo
                    ORDER BY start_at DESC LIMIT 1) AS p
WHERE p.end_at > :lo
UNION ALL
SELECT gpu_id, start_at, end_at FROM sample
WHERE gpu_id = ANY(CAST(:gpu_ids AS integer[])) AND start_at >= :lo AND start_at < :hi
ORDER BY 1, 2""")


def _stored_between(session: Session, gpu_ids: list[int], lo_us: int, hi_us: int):
    """(gpu_id, start_at, end_at) of the stored intervals of these GPUs that overlap [lo, hi)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(_OVERLAPPING, {"gpu_ids": gpu_ids, "lo": to_datetime(lo_us), "hi": to_datetime(hi_us)})
    s = Sample.__table__
    return session.execute(
        sa.select(s.c.gpu_id, s.c.start_at, s.c.end_at)
        .where(s.c.gpu_id.in_(gpu_ids), s.c.start_at < to_datetime(hi_us), s.c.end_at > to_datetime(lo_us))
        .order_by(s.c.gpu_id, s.c.start_at))


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
