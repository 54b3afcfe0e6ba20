"""The rebound analysis's inputs from the ledger: per cohort and period, the energy, the useful
work and the peak-FLOP capacity of the jobs that ran.

A cohort is a GPU model by default, or any combination of team, project and GPU model. A job's
energy is what the ledger attributed to it (idle energy is not any cohort's); its work is its
FLOPs (reported, else estimated, with the provenance counted) or its tokens; its capacity is
peak FLOP/s × allocated seconds. Jobs whose work or capacity is unknown (no reports and no
estimate; a GPU model without a catalogued peak) cannot be placed in the identity
E = W·S·(1/U)·e: their energy is reported as excluded, never silently folded in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session

from accounting.clock import to_us
from accounting.errors import InvalidInput
from accounting.ledger.grouping import GroupBy
from accounting.work.efficiency import collect, evaluate, group_key

from .rebound import Cohort


class WorkMeasure(StrEnum):
    flops = "flops"
    tokens = "tokens"


COHORT_PARTS = {"gpu_model": GroupBy.gpu_model, "team": GroupBy.team, "project": GroupBy.project}


def parse_cohort(spec: str) -> tuple[GroupBy, ...]:
    """"gpu_model", "team", "team,gpu_model", "team×gpu_model" … → the grouping parts."""
    parts = [p.strip() for p in spec.replace("×", ",").split(",") if p.strip()]
    if not parts or any(p not in COHORT_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise InvalidInput("cohort", f"one or more of {', '.join(COHORT_PARTS)}, comma-separated")
    return tuple(COHORT_PARTS[p] for p in parts)


@dataclass
class PeriodCohorts:
    cohorts: list[Cohort]
    jobs: int
    excluded_jobs: int = 0
    excluded_energy_j: float = 0.0
    provenance: dict[str, int] = field(default_factory=dict)  # FLOPs by provenance (flops measure)


def cohorts_for(session: Session, *, start: datetime, end: datetime, cohort: Sequence[GroupBy],
                work: WorkMeasure = WorkMeasure.flops) -> PeriodCohorts:
    if end <= start:
        raise InvalidInput("to", "a period must end after it starts")
    energy: dict[str, float] = defaultdict(float)
    done: dict[str, float] = defaultdict(float)
    capacity: dict[str, float] = defaultdict(float)
    result = PeriodCohorts([], 0)
    provenance: dict[str, int] = defaultdict(int)
    for e in evaluate(session, collect(session, to_us(start), to_us(end))):
        f = e.figures
        amount = f.flops if work == WorkMeasure.flops else f.tokens
        if amount is None or not f.capacity_flop:
            result.excluded_jobs += 1
            result.excluded_energy_j += f.energy_j
            continue
        key = " × ".join(group_key(part, e) for part in cohort)
        energy[key] += f.energy_j
        done[key] += amount
        capacity[key] += f.capacity_flop
        result.jobs += 1
        if work == WorkMeasure.flops and e.flops_provenance:
            provenance[e.flops_provenance] += f.flops or 0
    result.cohorts = [Cohort(key, energy[key], done[key], capacity[key]) for key in sorted(energy)]
    result.provenance = dict(provenance)
    return result
