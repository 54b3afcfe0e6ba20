"""The ledger's building blocks, and re-attribution when jobs change.

Deltas sum attributed shares per ledger row; `add_to_ledger` adds them in one upsert per table;
`register_gpus` names and locks GPUs. Ingest (ingest.py) and `reattribute` both attribute every
interval by `attribute_interval`, so they cannot disagree. The caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_S, hour_floor_us, to_datetime, to_us
from accounting.db import lock_gpus, upsert_adding
from accounting.gpu.specs import match_spec
from accounting.jobs.models import Gpu

from .attribution import Share, attribute_interval
from .models import IDLE, UNATTRIBUTED, LedgerEntry, Sample, UnattributedUse, job_account
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

    def merge(self, other: Deltas) -> None:
        """Add another's sums to these (as if its shares had been added here)."""
        for key, sums in other.ledger.items():
            slot = self.ledger.get(key)
            if slot is None:
                self.ledger[key] = list(sums)
            else:
                for k, value in enumerate(sums):
                    slot[k] += value
        for key, (energy_mj, job_key) in other.unattributed.items():
            detail = self.unattributed.setdefault(key, [0, None])
            detail[0] += energy_mj
            detail[1] = job_key or detail[1]

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
    session: Session, uuids: Sequence[str], *, now_us: int, described=None, nodes: Mapping[str, str] | None = None,
    lock: bool = False,
) -> dict[str, int]:
    """Insert-if-absent (race-free) and describe GPUs; returns uuid → id. A described GPU is on
    the node `nodes[uuid]` (the node of the batch that described it). A GPU whose description
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
        wanted = {"name": info.name, "index": info.index, "node": (nodes or {}).get(uuid),
                  "model": spec.model if spec else None,
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
