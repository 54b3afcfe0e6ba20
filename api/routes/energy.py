"""Energy per group over a period, with the idle policy stated; unattributed processes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlmodel import Session

from accounting.jobs.models import Gpu, Job
from accounting.ledger.grouping import TREATMENT, EnergyReport, GroupBy, IdlePolicy, energy_by_group
from accounting.ledger.models import UnattributedUse
from accounting.units import EnergyUnit, energy_from_mj
from accounting.validation import ApiTime

from ..auth import FleetReader, Reader, forbid_team
from ..deps import SessionDep, check_period

router = APIRouter(tags=["energy"])


class Group(BaseModel):
    group: str
    energy_j: float = Field(description="The group's energy including any idle re-allocated to it, J.")
    attributed_j: float = Field(description="Energy attributed to the group's jobs before idle re-allocation, J.")
    idle_j: float = Field(description="Idle energy re-allocated to the group by the idle policy, J.")
    energy: float = Field(description="energy_j in `unit`.")
    gpu_hours: float
    jobs: int


class EnergyAnswer(BaseModel):
    group_by: GroupBy
    idle_policy: IdlePolicy
    idle_treatment: str
    unit: EnergyUnit
    start: datetime
    end: datetime
    groups: list[Group]
    total_j: float = Field(description="Metered energy of the period; the same under every idle policy.")
    total: float = Field(description="total_j in `unit`.")
    idle_j: float = Field(description="All idle energy of the period, wherever the policy put it.")
    unallocated_idle_j: float = Field(description="Idle energy that no group carries under this policy.")
    unattributed_j: float
    total_mj: int


def _own_groups(session: Session, report: EnergyReport, team: str) -> None:
    """Keep the groups made only of `team`'s jobs: a project or job of another team, or one shared
    with another team, is left out; the period's totals stay the fleet's."""
    ids = {i for g in report.groups for i in g.jobs}
    j = Job.__table__
    teams = dict(session.execute(sa.select(j.c.id, j.c.team).where(j.c.id.in_(ids))).all()) if ids else {}
    report.groups = [g for g in report.groups if g.jobs and all(teams.get(i) == team for i in g.jobs)]


@router.get("/energy", response_model=EnergyAnswer)
def get_energy(
    session: SessionDep,
    principal: Reader,
    from_: Annotated[ApiTime, Query(alias="from", description="Start of the period (whole UTC hours are counted).")],
    to: Annotated[ApiTime, Query(description="End of the period, exclusive.")],
    group_by: GroupBy = GroupBy.team,
    idle_policy: IdlePolicy = IdlePolicy.separate,
    unit: EnergyUnit = EnergyUnit.kWh,
):
    check_period(from_, to)
    if group_by == GroupBy.gpu_model:
        forbid_team(principal, "a GPU model's energy mixes teams; group by team, project or job")
    report = energy_by_group(session, group_by=group_by, idle_policy=idle_policy, start=from_, end=to)
    if principal.is_team:
        _own_groups(session, report, principal.team)
    return EnergyAnswer(
        group_by=group_by, idle_policy=idle_policy, idle_treatment=TREATMENT[idle_policy], unit=unit,
        start=from_, end=to,
        groups=[
            Group(group=g.key, energy_j=g.energy_mj / 1000, attributed_j=g.own_mj / 1000, idle_j=g.idle_mj / 1000,
                  energy=energy_from_mj(g.energy_mj, unit), gpu_hours=g.gpu_us / 3.6e9, jobs=len(g.jobs))
            for g in report.groups
        ],
        total_j=report.total_mj / 1000, total=energy_from_mj(report.total_mj, unit),
        idle_j=report.idle_mj / 1000, unallocated_idle_j=report.unallocated_idle_mj / 1000,
        unattributed_j=report.unattributed_mj / 1000, total_mj=report.total_mj,
    )


class UnattributedProcess(BaseModel):
    gpu_uuid: str
    hour: datetime
    pid: int
    user: str
    job_key: str | None = Field(description="The job the node named, when no registered job has that key.")
    energy_j: float


@router.get("/unattributed", response_model=list[UnattributedProcess])
def get_unattributed(
    session: SessionDep,
    _: FleetReader,  # other people's pids and user names: not for team keys
    from_: Annotated[ApiTime, Query(alias="from")],
    to: Annotated[ApiTime, Query()],
    limit: int = Query(1000, ge=1, le=10_000),
):
    check_period(from_, to)
    u, g = UnattributedUse.__table__, Gpu.__table__
    rows = session.execute(
        sa.select(g.c.uuid, u.c.hour, u.c.pid, u.c.user, u.c.job_key, u.c.energy_mj)
        .join(g, g.c.id == u.c.gpu_id)
        .where(u.c.hour >= from_, u.c.hour < to)
        .order_by(u.c.energy_mj.desc(), u.c.hour)
        .limit(limit)
    ).all()
    return [UnattributedProcess(gpu_uuid=r.uuid, hour=r.hour, pid=r.pid, user=r.user, job_key=r.job_key,
                                energy_j=r.energy_mj / 1000) for r in rows]
