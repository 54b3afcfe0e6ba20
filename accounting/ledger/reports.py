"""Read-side answers from the ledger: a job's energy, fleet totals, the conservation check."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import to_us
from accounting.jobs.models import Gpu

from .attribution import attribute_interval
from .models import IDLE, UNATTRIBUTED, LedgerEntry, Method, Sample


@dataclass
class EstimatedPiece:
    gpu_uuid: str
    hour: datetime
    energy_mj: int


@dataclass
class JobEnergy:
    job_id: int
    energy_mj: int = 0
    gpu_us: int = 0
    per_gpu_mj: dict[str, int] = field(default_factory=dict)
    by_method_mj: dict[str, int] = field(default_factory=dict)
    estimated: list[EstimatedPiece] = field(default_factory=list)


def job_energy(session: Session, job_id: int) -> JobEnergy:
    t, g = LedgerEntry.__table__, Gpu.__table__
    rows = session.execute(
        sa.select(g.c.uuid, t.c.hour, t.c.method, t.c.energy_mj, t.c.gpu_us)
        .join(g, g.c.id == t.c.gpu_id)
        .where(t.c.job_id == job_id)
        .order_by(t.c.hour, g.c.uuid)
    ).all()
    result = JobEnergy(job_id)
    per_gpu: dict[str, int] = defaultdict(int)
    by_method: dict[str, int] = defaultdict(int)
    for uuid, hour, method, energy_mj, gpu_us in rows:
        result.energy_mj += energy_mj
        result.gpu_us += gpu_us
        per_gpu[uuid] += energy_mj
        by_method[method] += energy_mj
        if method == Method.power_integral:
            result.estimated.append(EstimatedPiece(uuid, hour, energy_mj))
    result.per_gpu_mj = dict(per_gpu)
    result.by_method_mj = dict(by_method)
    return result


@dataclass(frozen=True)
class FleetTotals:
    measured_mj: int  # Σ metered interval energy (the counters)
    jobs_mj: int
    idle_mj: int
    unattributed_mj: int

    @property
    def attributed_mj(self) -> int:
        return self.jobs_mj

    @property
    def balanced(self) -> bool:
        return self.jobs_mj + self.idle_mj + self.unattributed_mj == self.measured_mj


def fleet_totals(session: Session) -> FleetTotals:
    measured = session.execute(sa.select(sa.func.coalesce(sa.func.sum(Sample.energy_mj), 0))).scalar_one()
    t = LedgerEntry.__table__
    kind = sa.case(
        (t.c.account == IDLE, IDLE), (t.c.account == UNATTRIBUTED, UNATTRIBUTED), else_="job"
    ).label("kind")
    by_account = dict(session.execute(sa.select(kind, sa.func.sum(t.c.energy_mj)).group_by(kind)).all())
    return FleetTotals(
        measured_mj=int(measured),
        jobs_mj=int(by_account.get("job", 0)),
        idle_mj=int(by_account.get(IDLE, 0)),
        unattributed_mj=int(by_account.get(UNATTRIBUTED, 0)),
    )


def conservation_errors(session: Session) -> list[str]:
    """Every (GPU, hour) where Σ ledger ≠ the metered energy of that hour; [] when exact.

    The metered energy of an hour is recomputed from the raw samples with the same exact
    split the ledger uses, so the check is to the millijoule.
    """
    s, t = Sample.__table__, LedgerEntry.__table__
    expected: dict[tuple[int, int], int] = defaultdict(int)
    for gpu_id, start_at, end_at, energy_mj, method in session.execute(
        sa.select(s.c.gpu_id, s.c.start_at, s.c.end_at, s.c.energy_mj, s.c.method)
    ):
        for share in attribute_interval(to_us(start_at), to_us(end_at), energy_mj, method, []):
            expected[(gpu_id, share.hour_us)] += share.energy_mj
    booked: dict[tuple[int, int], int] = defaultdict(int)
    for gpu_id, hour, energy_mj in session.execute(
        sa.select(t.c.gpu_id, t.c.hour, sa.func.sum(t.c.energy_mj)).group_by(t.c.gpu_id, t.c.hour)
    ):
        booked[(gpu_id, to_us(hour))] += int(energy_mj)
    return [
        f"gpu {gpu_id} hour {hour_us}: ledger {booked.get((gpu_id, hour_us), 0)} mJ, "
        f"metered {expected.get((gpu_id, hour_us), 0)} mJ"
        for gpu_id, hour_us in sorted(set(expected) | set(booked))
        if booked.get((gpu_id, hour_us), 0) != expected.get((gpu_id, hour_us), 0)
    ]
