"""Energy per group (team, project, job, GPU model) over a period, with the idle policy applied.

Idle energy is re-allocated only here, at report time (DESIGN.md): `separate` shows it as its
own line, `proportional` spreads each GPU-hour's idle energy over the groups that used that GPU
in that hour (in proportion to their energy on it; the chargeback statement's rule, so both
give a group the same energy), `none` leaves it out of the groups. Under
every policy `total_mj` is the metered energy of the period: what no group takes is reported
as `unallocated_idle_mj`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Session

from accounting.jobs.models import Gpu, Job

from .attribution import split_weighted
from .models import IDLE, UNATTRIBUTED, LedgerEntry

IDLE_GROUP = "(idle)"
UNATTRIBUTED_GROUP = "(unattributed)"
UNKNOWN = "(unknown)"


class GroupBy(StrEnum):
    team = "team"
    project = "project"
    job = "job"
    gpu_model = "gpu_model"


class IdlePolicy(StrEnum):
    separate = "separate"
    proportional = "proportional"
    none = "none"


TREATMENT = {
    IdlePolicy.separate: "idle energy is its own line, '(idle)'",
    IdlePolicy.proportional: "each GPU-hour's idle energy is spread over the groups that used that GPU in that "
    "hour, in proportion to their energy on it (as chargeback statements do); idle of GPU-hours nobody used stays "
    "unallocated",
    IdlePolicy.none: "idle energy is not charged to any group; it is reported as unallocated",
}


@dataclass
class GroupEnergy:
    key: str
    energy_mj: int = 0
    own_mj: int = 0  # before idle re-allocation
    idle_mj: int = 0  # idle energy re-allocated to it
    gpu_us: int = 0
    jobs: set[int] = field(default_factory=set)


@dataclass
class EnergyReport:
    group_by: GroupBy
    idle_policy: IdlePolicy
    groups: list[GroupEnergy]
    idle_mj: int  # all idle energy of the period
    unallocated_idle_mj: int  # idle energy no group carries under this policy
    unattributed_mj: int
    total_mj: int


def _group_key(group_by: GroupBy, job: tuple | None, gpu_model: str | None) -> str:
    if group_by == GroupBy.gpu_model:
        return gpu_model or UNKNOWN
    job_id, external_id, source, team, project = job
    if group_by == GroupBy.job:
        return f"{source}:{external_id}"
    if group_by == GroupBy.team:
        return team
    return project or UNKNOWN


def energy_by_group(
    session: Session, *, group_by: GroupBy, idle_policy: IdlePolicy, start: datetime, end: datetime
) -> EnergyReport:
    t, j, g = LedgerEntry.__table__, Job.__table__, Gpu.__table__
    rows = session.execute(
        sa.select(t.c.gpu_id, t.c.hour, t.c.account, t.c.energy_mj, t.c.gpu_us, g.c.model,
                  j.c.id, j.c.external_id, j.c.source, j.c.team, j.c.project)
        .join(g, g.c.id == t.c.gpu_id)
        .outerjoin(j, j.c.id == t.c.job_id)
        .where(t.c.hour >= start, t.c.hour < end)
    ).all()
    groups: dict[str, GroupEnergy] = {}
    # Idle is spread per GPU-hour, as chargeback statements spread it (with that hour's price and
    # carbon), so /v1/energy and the statement give a group the same energy.
    idle_by_gpu: dict[tuple, int] = defaultdict(int)
    use_by_gpu: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    unattributed = total = 0
    for gpu_id, hour, account, energy_mj, gpu_us, model, *job in rows:
        total += energy_mj
        if account == IDLE:
            idle_by_gpu[(gpu_id, hour)] += energy_mj
            continue
        if account == UNATTRIBUTED:
            unattributed += energy_mj
            key = UNATTRIBUTED_GROUP
        else:
            key = _group_key(group_by, tuple(job), model)
        group = groups.setdefault(key, GroupEnergy(key))
        group.own_mj += energy_mj
        group.gpu_us += gpu_us
        if job[0] is not None:
            group.jobs.add(job[0])
        if account != UNATTRIBUTED:
            use_by_gpu[(gpu_id, hour)][key] += energy_mj
    idle_total = sum(idle_by_gpu.values())
    unallocated = idle_total
    if idle_policy == IdlePolicy.separate and idle_total:
        groups[IDLE_GROUP] = GroupEnergy(IDLE_GROUP, idle_mj=idle_total)
        unallocated = 0
    elif idle_policy == IdlePolicy.proportional:
        for gpu_hour, idle_mj in idle_by_gpu.items():
            users = {k: v for k, v in use_by_gpu[gpu_hour].items() if v > 0}
            if not users:
                continue
            keys = sorted(users)
            for key, part in zip(keys, split_weighted(idle_mj, [users[k] for k in keys]), strict=True):
                groups[key].idle_mj += part
            unallocated -= idle_mj
    for group in groups.values():
        group.energy_mj = group.own_mj + group.idle_mj
    ordered = sorted(groups.values(), key=lambda grp: (-grp.energy_mj, grp.key))
    return EnergyReport(group_by, idle_policy, ordered, idle_total, unallocated, unattributed, total)
