"""What attribution needs to know about each GPU besides its energy: the idle baseline of its
model, its MIG layout and who holds each instance, and which job each process belongs to."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import to_datetime, to_us
from accounting.gpu.specs import get_spec
from accounting.jobs.models import Allocation, Gpu, Job

from .attribution import GpuSignals, MigSlot, ProcessUse, Tenancy


@dataclass(frozen=True)
class GpuLayout:
    gpu_id: int
    baseline_mw: int
    instances: tuple[tuple[int, str, int], ...]  # (instance gpu id, uuid, slices) of a MIG parent


def layouts(session: Session, gpu_ids: Iterable[int]) -> dict[int, GpuLayout]:
    """The GPUs' idle baselines and MIG instances, in one query."""
    g = Gpu.__table__
    ids = list(gpu_ids)
    wanted = set(ids)
    models: dict[int, str | None] = {}
    instances: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for row in session.execute(
        sa.select(g.c.id, g.c.uuid, g.c.model, g.c.mig_slices, g.c.parent_id)
        .where(sa.or_(g.c.id.in_(ids), g.c.parent_id.in_(ids))).order_by(g.c.id)
    ):
        if row.id in wanted:
            models[row.id] = row.model
        if row.parent_id in wanted:
            instances[row.parent_id].append((row.id, row.uuid, row.mig_slices or 1))
    result = {}
    for gpu_id in ids:
        model = models.get(gpu_id)
        baseline_mw = round(get_spec(model).idle_w * 1000) if model else 0
        result[gpu_id] = GpuLayout(gpu_id, baseline_mw, tuple(instances.get(gpu_id, ())))
    return result


def tenancies_for(session: Session, gpu_ids: Iterable[int], from_us: int, to_us_: int) -> dict[int, list[Tenancy]]:
    a = Allocation.__table__
    rows = session.execute(
        sa.select(a.c.gpu_id, a.c.job_id, a.c.start_at, a.c.end_at).where(
            a.c.gpu_id.in_(list(gpu_ids)),
            a.c.start_at < to_datetime(to_us_),
            sa.or_(a.c.end_at.is_(None), a.c.end_at > to_datetime(from_us)),
        ).order_by(a.c.gpu_id, a.c.start_at, a.c.job_id)  # one order, so SignalBuilder.same_as can compare
    ).all()
    result: dict[int, list[Tenancy]] = defaultdict(list)
    for gpu_id, job_id, start_at, end_at in rows:
        result[gpu_id].append(Tenancy(job_id, to_us(start_at), to_us(end_at) if end_at else None))
    return result


def job_ids_by_key(session: Session, keys: Iterable[str]) -> dict[str, int]:
    pairs = {tuple(k.split(":", 1)) for k in keys if k and ":" in k}
    if not pairs:
        return {}
    j = Job.__table__
    rows = session.execute(
        sa.select(j.c.source, j.c.external_id, j.c.id).where(sa.tuple_(j.c.source, j.c.external_id).in_(pairs))
    )
    return {f"{source}:{external_id}": job_id for source, external_id, job_id in rows}


class SignalBuilder:
    """Builds GpuSignals for the intervals of some GPUs over a time range."""

    def __init__(self, session: Session, gpu_ids: Sequence[int], from_us: int, to_us_: int,
                 job_keys: Iterable[str]) -> None:
        self.layouts = layouts(session, gpu_ids)
        instance_ids = [i for layout in self.layouts.values() for i, _, _ in layout.instances]
        self.tenancies = tenancies_for(session, [*gpu_ids, *instance_ids], from_us, to_us_)
        self.jobs = job_ids_by_key(session, job_keys)
        # The signals of an interval with neither process nor MIG detail, one per GPU: most are.
        self.plain = {gpu_id: GpuSignals(baseline_mw=layout.baseline_mw) for gpu_id, layout in self.layouts.items()}

    def same_as(self, other: SignalBuilder | None) -> bool:
        """Whether the other read the same layouts, tenancies and jobs (so attributes alike)."""
        return other is not None and (self.layouts, self.tenancies, self.jobs) == (
            other.layouts, other.tenancies, other.jobs)

    def for_interval(self, gpu_id: int, processes: Sequence[dict] | None, mig: Sequence[dict] | None) -> GpuSignals:
        layout = self.layouts[gpu_id]
        if not processes and not (layout.instances and mig):
            return self.plain[gpu_id]
        uses = tuple(
            ProcessUse(self.jobs.get(p.get("job_key") or ""), p["pid"], p.get("user"), float(p.get("sm_pct") or 0),
                       p.get("job_key"))
            for p in processes or ()
            if p.get("job_key") is not None or p.get("user") is not None  # unresolved: no evidence
        )
        slots: tuple[MigSlot, ...] = ()
        if layout.instances and mig:  # MIG on now: the parent reports its instances' activity
            activity = {m["uuid"]: m["activity_pct"] for m in mig or ()}
            slots = tuple(
                MigSlot(slices, tuple(self.tenancies.get(instance_id, ())), activity.get(uuid))
                for instance_id, uuid, slices in layout.instances
            )
        return GpuSignals(baseline_mw=layout.baseline_mw, processes=uses, mig=slots)
