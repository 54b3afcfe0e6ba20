"""Efficiency per group over a period (FLOP/J, tokens/J, MFU …), waste findings, and the
`efficiency` object of a job. Units are in the field names and spelled out in `units`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlmodel import Session

from accounting.clock import Clock, to_datetime, to_us
from accounting.jobs.models import Job
from accounting.ledger.grouping import GroupBy
from accounting.validation import ApiTime
from accounting.work.efficiency import efficiency_by, job_efficiency, whole_hours
from accounting.work.waste import Thresholds, find_waste

from ..auth import Reader
from ..deps import ClockDep, SessionDep, check_period

router = APIRouter(tags=["efficiency"])

UNITS = {
    "_j": "joules", "_w": "watts", "_s": "seconds (GPU-seconds for *_gpu_s; a MIG instance counts slices/7)",
    "_pct": "percent (0–100), a mean over the GPU time the signal was read",
    "flops": "floating-point operations (an exact integer; may exceed 2^53)",
    "_flop": "floating-point operations", "_per_s": "per second", "_per_j": "per joule", "j_per_": "joules per",
    "mfu": "model-FLOPs utilization: FLOPs ÷ (peak FLOP/s × allocated s), a fraction 0–1",
    "realized_vs_spec": "flop_per_j ÷ spec_flop_per_j, a fraction",
    "period": "the ledger is hourly: a period is widened to whole UTC hours (start, end)",
}
PERIOD = {"description": "A time with its zone, e.g. 2026-01-01T00:00:00Z; widened to whole UTC hours."}


class EfficiencyFigures(BaseModel):
    energy_j: float = Field(description="Energy attributed to the job(s) in the period.")
    metered_gpu_s: float = Field(description="GPU time the ledger has energy for.")
    allocated_gpu_s: float = Field(description="GPU time allocated in the period (MIG: slices/7).")
    capacity_flop: float | None = Field(description="MFU's denominator: Σ peak FLOP/s × allocated s.")
    flops: int | None = Field(description="Useful FLOPs (exact integer).")
    tokens: int | None
    samples: int | None
    mfu: float | None = Field(description="FLOPs ÷ capacity_flop; null when a GPU's model or peak is unknown.")
    flop_per_j: float | None
    tokens_per_j: float | None
    j_per_token: float | None
    samples_per_j: float | None
    spec_flop_per_j: float | None = Field(description="The chips' peak FLOP/s ÷ TDP at the job's precision.")
    realized_vs_spec: float | None = Field(description="flop_per_j ÷ spec_flop_per_j.")
    duty_cycle_pct: float | None = Field(description="NVML utilization: time any kernel ran.")
    sm_active_pct: float | None
    tensor_active_pct: float | None
    dram_bw_pct: float | None
    mean_power_w: float | None = Field(description="energy_j ÷ metered_gpu_s: per GPU.")


class GroupEfficiencyPublic(EfficiencyFigures):
    group: str
    jobs: int
    mfu_jobs: int = Field(description="Jobs with FLOPs and a known peak: mfu and realized_vs_spec cover these.")
    flops_by_provenance: dict[str, int] = Field(description="FLOPs by provenance: reported, model-estimate, "
                                                "hardware-estimate.")


class EfficiencyAnswer(BaseModel):
    group_by: GroupBy
    start: datetime
    end: datetime
    units: dict[str, str]
    groups: list[GroupEfficiencyPublic]


class JobEfficiencyPublic(EfficiencyFigures):
    start: datetime = Field(description="The period: the job's life unless asked, in whole UTC hours.")
    end: datetime
    gpu_models: list[str | None]
    peak_flop_per_s: float | None = Field(description="Σ over the job's GPUs of the peak at its precision.")
    flops_provenance: str | None = Field(description="reported | model-estimate | hardware-estimate")
    work_share: float = Field(description="The part of the job's reported work counted in the period.")
    units: dict[str, str]


def job_efficiency_public(session: Session, job: Job, *, clock: Clock) -> JobEfficiencyPublic:
    """The `efficiency` object of GET /v1/jobs/{id}: the job over its life."""
    e = job_efficiency(session, job, clock=clock)
    return JobEfficiencyPublic(
        **asdict(e.figures), start=to_datetime(e.usage.start_us), end=to_datetime(e.usage.end_us),
        gpu_models=e.gpu_models, peak_flop_per_s=e.usage.peak_flop_per_s, flops_provenance=e.flops_provenance,
        work_share=float(e.usage.work_share), units=UNITS,
    )


def _whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    lo, hi = whole_hours(to_us(start), to_us(end))
    return to_datetime(lo), to_datetime(hi)


@router.get("/efficiency", response_model=EfficiencyAnswer)
def get_efficiency(
    session: SessionDep,
    clock: ClockDep,
    principal: Reader,
    from_: Annotated[ApiTime, Query(alias="from", **PERIOD)],
    to: Annotated[ApiTime, Query(description="End of the period, exclusive.")],
    group_by: GroupBy = GroupBy.team,
):
    check_period(from_, to)
    # A team key's groups are made of its own jobs, whatever the grouping.
    groups = efficiency_by(session, group_by=group_by, start=from_, end=to, clock=clock, team=principal.team)
    start, end = _whole_hours(from_, to)
    return EfficiencyAnswer(
        group_by=group_by, start=start, end=end, units=UNITS,
        groups=[GroupEfficiencyPublic(**asdict(g.figures), group=g.group, jobs=g.jobs, mfu_jobs=g.mfu_jobs,
                                      flops_by_provenance=g.flops_by_provenance) for g in groups],
    )


class FindingPublic(BaseModel):
    kind: str = Field(description="idle-allocated | busy-but-useless | low-mfu | memory-bound")
    severity: str = Field(description="waste | efficiency | info (an insight, not a fault)")
    job_id: int
    external_id: str
    source: str
    team: str
    start: datetime = Field(description="The span the finding covers.")
    end: datetime
    rule: str
    evidence: dict[str, float | int | str | None] = Field(description="Signal → value; the unit in the key.")
    energy_at_stake_j: float = Field(description="Energy spent for nothing (waste), or above the peers' "
                                     "(low-mfu); 0 for an insight.")
    cost: float | None = Field(description="Money at stake; not computed yet (chargeback).")


class WasteAnswer(BaseModel):
    start: datetime
    end: datetime
    energy_at_stake_j: float = Field(description="Σ over the findings.")
    thresholds: dict[str, float]
    units: dict[str, str]
    findings: list[FindingPublic]


@router.get("/waste", response_model=WasteAnswer)
def get_waste(
    session: SessionDep,
    clock: ClockDep,
    principal: Reader,
    from_: Annotated[ApiTime, Query(alias="from", **PERIOD)],
    to: Annotated[ApiTime, Query(description="End of the period, exclusive.")],
):
    check_period(from_, to)
    findings = [f for f in find_waste(session, from_, to, clock=clock) if principal.sees_team(f.team)]
    start, end = _whole_hours(from_, to)
    return WasteAnswer(
        start=start, end=end, energy_at_stake_j=sum(f.energy_at_stake_j for f in findings),
        thresholds=asdict(Thresholds()), units=UNITS,
        findings=[FindingPublic(**{**asdict(f), "kind": f.kind.value, "severity": f.severity.value,
                                   "evidence": _evidence_for(principal, f.evidence)})
                  for f in findings],
    )


def _evidence_for(principal, evidence: dict) -> dict:
    # The peers of a low-MFU finding are every team's jobs of its kind on its GPU model: with a
    # few peers of its own at known MFU, a team could solve the median for another team's job.
    return {k: v for k, v in evidence.items() if k != "peer_median_mfu"} if principal.is_team else evidence
