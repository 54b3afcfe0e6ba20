"""Ingest sampler batches into samples and the hourly ledger.

Every interval is attributed as `attribute_interval` would (ingest books its common case, one
piece with at most one holder, straight to the ledger row that function would give), so ingest
and re-attribution (service.py) cannot disagree. Ingest is made for throughput: a hand-checked
batch, one COPY for the samples, one upsert for the ledger, a fixed dozen statements for any
number of batches. The caller owns the transaction (and commits once).
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, Clock, to_datetime, to_us
from accounting.db import copy_rows
from accounting.errors import InvalidInput
from accounting.jobs.models import Gpu

from . import columnar
from .attribution import EXCLUSIVE, attribute_interval, whole_piece_holders
from .batch import BatchEvent, ParsedBatch, Reading, checked_batch
from .models import GpuEvent, IngestedBatch, Sample
from .service import Activity, Deltas, add_to_ledger, register_gpus
from .signals import SignalBuilder

log = logging.getLogger(__name__)

START_END = operator.itemgetter(1, 2)  # a Reading's start_us, end_us
# A Reading's Activity (gpu_util_pct, sm_active_pct, tensor_active_pct, dram_bw_pct), as a plain tuple.
ACTIVITY = operator.itemgetter(*(Reading._fields.index(f) for f in Activity._fields))
SAMPLE_COLUMNS = ("gpu_id", "start_at", "end_at", *Reading._fields[3:])



@dataclass(frozen=True)
class IngestResult:
    node: str
    seq: int
    duplicate: bool
    intervals: int
    energy_mj: int


def parse_batch(raw: dict) -> ParsedBatch:
    """A batch in either version (1 as spooled, 2 as sent through the broker), checked;
    InvalidInput naming the first bad field."""
    try:
        if type(raw) is dict and raw.get("version") == columnar.VERSION:
            return columnar.parse_wire(raw)
        return checked_batch(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "batch"
        raise InvalidInput(field, first["msg"]) from exc


def ingest_batch(session: Session, raw: dict, *, clock: Clock) -> IngestResult:
    """Take one sampler batch into samples and the ledger, exactly once per (node, seq)."""
    return ingest_batches(session, [parse_batch(raw)], clock=clock)[0]


def ingest_batches(session: Session, batches: Sequence[ParsedBatch], *, clock: Clock) -> list[IngestResult]:
    """Take validated sampler batches, of any nodes, into samples and the ledger: each exactly once
    per (node, seq), with the same outcome as ingesting them one after another in this order.

    However many batches and readings, it costs a fixed dozen statements: samples go in by one
    COPY (one INSERT on SQLite), ledger rows by one upsert. An ingest worker gives it the batches
    it has buffered, so a node's small batch does not pay a transaction of its own."""
    now_us = clock.now_us()
    return [result for run in _same_descriptions(batches) for result in _ingest_run(session, run, now_us)]


def _same_descriptions(batches: Sequence[ParsedBatch]) -> Iterator[list[ParsedBatch]]:
    """The batches in runs within which no GPU is described two ways (a changed name is a changed
    model, so a changed idle baseline): each run is attributed with the GPUs as its batches
    describe them, as one batch after another would be."""
    run: list[ParsedBatch] = []
    described: dict[str, tuple] = {}
    for batch in batches:
        mine = {gpu.uuid: (gpu, batch.node) for gpu in batch.gpus}
        if any(described.get(uuid, seen) != seen for uuid, seen in mine.items()):
            yield run
            run, described = [], {}
        run.append(batch)
        described.update(mine)
    if run:
        yield run


def _ingest_run(session: Session, batches: Sequence[ParsedBatch], now_us: int) -> list[IngestResult]:
    uuids: set[str] = set()
    described, nodes = {}, {}
    for batch in batches:
        uuids.update(r.uuid for r in batch.readings)
        uuids.update(e.uuid for e in batch.events if e.uuid)
        for gpu in batch.gpus:
            described[gpu.uuid], nodes[gpu.uuid] = gpu, batch.node
    early = _attributed_early(session, batches, uuids)
    ids = register_gpus(session, sorted(uuids), now_us=now_us, described=described, nodes=nodes, lock=True)
    ib = IngestedBatch.__table__
    keys = {(b.node, b.seq) for b in batches}
    seen = set(session.execute(
        sa.select(ib.c.node, ib.c.seq).where(sa.tuple_(ib.c.node, ib.c.seq).in_(sorted(keys)))).all())
    results: list[IngestResult | None] = [None] * len(batches)
    fresh: list[int] = []
    for i, batch in enumerate(batches):
        if (batch.node, batch.seq) in seen:
            log.info("batch %s/%s already ingested; ignored", batch.node, batch.seq)
            results[i] = IngestResult(batch.node, batch.seq, True, len(batch.readings),
                                      sum(r.energy_mj for r in batch.readings))
        else:
            seen.add((batch.node, batch.seq))  # the same batch twice in one call: the second is a duplicate
            fresh.append(i)
    kept, dropped = _without_overlaps(session, [batches[i].readings for i in fresh], ids)
    if any(kept):
        signals = _signals(session, batches, ids)  # now that the GPUs are locked
        reuse = early is not None and early.signals.same_as(signals)
        deltas, rows = Deltas(), []
        for i, mine in zip(fresh, kept, strict=True):
            if reuse and len(mine) == len(batches[i].readings):  # attributed early, and rightly
                deltas.merge(early.deltas[i])
                rows += early.rows[i]
            elif mine:
                gpu_ids = [ids[r.uuid] for r in mine]
                deltas.merge(_deltas(signals, mine, gpu_ids))
                rows += sample_rows(mine, gpu_ids)
        store_samples(session, rows)
        add_to_ledger(session, deltas)
    events = [(batches[i].node, e) for i, extra in zip(fresh, dropped, strict=True)
              for e in (*batches[i].events, *extra)]
    if events:
        session.execute(sa.insert(GpuEvent.__table__), [
            {"gpu_id": ids.get(e.uuid) if e.uuid else None, "node": node, "at": to_datetime(e.at_us),
             "kind": e.kind, "detail": e.detail}
            for node, e in events
        ])
    if fresh:
        ingested_at = to_datetime(now_us)
        rows = []
        for i, mine in zip(fresh, kept, strict=True):
            batch, energy_mj = batches[i], sum(r.energy_mj for r in mine)
            rows.append({"node": batch.node, "seq": batch.seq, "ingested_at": ingested_at, "intervals": len(mine),
                         "energy_mj": energy_mj})
            results[i] = IngestResult(batch.node, batch.seq, False, len(mine), energy_mj)
        session.execute(sa.insert(ib), rows)
    return results  # type: ignore[return-value]  # every slot is filled


@dataclass(frozen=True)
class _Early:
    """A run's batches attributed before their GPUs were locked: the signals it read, and per
    batch its ledger deltas and sample rows."""

    signals: SignalBuilder
    deltas: list[Deltas]
    rows: list[list[tuple]]


def _attributed_early(session: Session, batches: Sequence[ParsedBatch], uuids: set[str]) -> _Early | None:
    """Every batch attributed before any GPU is locked, so that workers whose batches share GPUs
    wait on each other for the writes only, not for attribution. Under the lock the signals are
    read again; a batch is attributed again if they changed meanwhile (a job registered or
    finished, a GPU described anew) or if it lost readings (a duplicate or an overlap). None
    when there is nothing to attribute or a GPU is new (it has no id until it is registered)."""
    g = Gpu.__table__
    ids = dict(session.execute(sa.select(g.c.uuid, g.c.id).where(g.c.uuid.in_(sorted(uuids)))).all())
    if len(ids) < len(uuids) or not any(b.readings for b in batches):
        return None
    signals = _signals(session, batches, ids)
    deltas, rows = [], []
    for batch in batches:
        gpu_ids = [ids[r.uuid] for r in batch.readings]
        deltas.append(_deltas(signals, batch.readings, gpu_ids))
        rows.append(sample_rows(batch.readings, gpu_ids))
    return _Early(signals, deltas, rows)


def _signals(session: Session, batches: Sequence[ParsedBatch], ids: dict[str, int]) -> SignalBuilder:
    """What attribution needs for every reading of the batches (the same reads early and under
    the lock, so that the two can be compared)."""
    readings = [r for b in batches for r in b.readings]
    return SignalBuilder(
        session, sorted({ids[r.uuid] for r in readings}), min(r.start_us for r in readings),
        max(r.end_us for r in readings),
        {p["job_key"] for r in readings if r.processes for p in r.processes if p["job_key"]},
    )


def _deltas(signals: SignalBuilder, readings: Sequence[Reading], gpu_ids: list[int]) -> Deltas:
    """Every reading attributed, summed per ledger row. Most readings are one piece with one
    holder (or none) and no process or MIG detail: `attribute_interval` would give them one
    share of all their energy and time, so they go straight to their ledger row."""
    tenancies, layouts, deltas = signals.tenancies, signals.layouts, Deltas()
    for r, gpu_id in zip(readings, gpu_ids, strict=True):
        activity = ACTIVITY(r)
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


def sample_rows(readings: Sequence[Reading], gpu_ids: Sequence[int]) -> list[tuple]:
    """The readings as `sample` rows, in SAMPLE_COLUMNS order."""
    times: dict[int, object] = {}  # the GPUs of a node share their reading times: convert each once

    def at(t_us: int):
        value = times.get(t_us)
        if value is None:
            value = times[t_us] = to_datetime(t_us)
        return value

    return [(gpu_id, at(r.start_us), at(r.end_us), *r[3:]) for r, gpu_id in zip(readings, gpu_ids, strict=True)]


def store_samples(session: Session, rows: list[tuple]) -> None:
    """`sample` rows: one binary COPY on PostgreSQL, one INSERT elsewhere."""
    if session.get_bind().dialect.name == "postgresql":
        copy_rows(session, Sample.__table__, SAMPLE_COLUMNS, rows)
    else:
        session.execute(sa.insert(Sample.__table__), [dict(zip(SAMPLE_COLUMNS, row, strict=True)) for row in rows])


def _without_overlaps(session: Session, batches: Sequence[Sequence[Reading]], ids: dict[str, int]):
    """Each batch's readings less those that overlap one already stored for the GPU, or one kept
    before them (of this batch or an earlier one): their time is metered already (a sampler
    re-sent it under a new seq, or two samplers read one GPU), and counting it again would
    double its energy. Each drop becomes an event. Batches are judged in order, as one after
    another would be. The GPUs are locked by the caller, so the stored intervals cannot change
    meanwhile. One query for all the GPUs. Returns (kept, dropped events), a list per batch."""
    everything = [r for mine in batches for r in mine]
    metered: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))  # per GPU: starts, ends
    if everything:
        for gpu_id, a, b in _stored_between(session, sorted({ids[r.uuid] for r in everything}),
                                            min(r.start_us for r in everything), max(r.end_us for r in everything)):
            starts, ends = metered[gpu_id]
            starts.append(to_us(a))
            ends.append(to_us(b))
    kept_all, dropped_all = [], []
    for mine in batches:
        by_gpu: dict[str, list[Reading]] = {}
        for reading in mine:
            by_gpu.setdefault(reading.uuid, []).append(reading)
        kept, dropped = [], []
        for uuid, theirs in by_gpu.items():
            theirs.sort(key=START_END)
            starts, ends = metered[ids[uuid]]  # never overlapping, so ordered by end as by start
            mine_starts, mine_ends = [r.start_us for r in theirs], [r.end_us for r in theirs]
            if (not ends or mine_starts[0] >= ends[-1]) and all(map(operator.le, mine_ends, mine_starts[1:])):
                kept += theirs  # the common case: one after another, after everything metered
                starts += mine_starts
                ends += mine_ends
                continue
            for r in theirs:
                k = bisect.bisect_left(starts, r.end_us)  # the last one starting before r ends …
                if k and ends[k - 1] > r.start_us:  # … is the only one that can overlap it
                    log.warning("interval %s %d..%d overlaps metered time; dropped", uuid, r.start_us, r.end_us)
                    dropped.append(BatchEvent(uuid=uuid, at_us=r.end_us, kind="overlap-dropped",
                                              detail=f"{r.start_us}..{r.end_us} µs, {r.energy_mj} mJ: "
                                                     "overlaps an interval already metered"))
                    continue
                kept.append(r)
                if k == len(starts):  # the common case: after everything metered
                    starts.append(r.start_us)
                    ends.append(r.end_us)
                else:
                    starts.insert(k, r.start_us)
                    ends.insert(k, r.end_us)
        kept_all.append(kept)
        dropped_all.append(dropped)
    return kept_all, dropped_all


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
