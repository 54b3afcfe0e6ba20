"""GET /v1/rebound: where newer chips' efficiency went, between two periods (LMDI)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from accounting.analytics.service import parse_period, rebound_report

from ..auth import FleetReader
from ..deps import SessionDep

router = APIRouter(tags=["rebound"])


@router.get("/rebound")
def get_rebound(
    session: SessionDep,
    _: FleetReader,  # a fleet analysis whose cohorts name every team: not for team keys
    baseline: str = Query(description="FROM/TO, e.g. 2025-01-01/2025-04-01 (dates are UTC)."),
    current: str = Query(description="FROM/TO of the period to compare with the baseline."),
    cohort: str = Query("gpu_model", max_length=100,
                        description="gpu_model, team, project, or a comma-separated combination (team,gpu_model)."),
    work: str = Query("flops", description="flops (training fleets) or tokens (inference fleets)."),
) -> dict:
    """The energy change split into scale (more useful work), mix (work moving between cohorts),
    utilization (1/MFU), chip intensity (energy per peak FLOP) and no-work energy, in kWh and in
    percent of the baseline; they add up to the total change exactly. Note: with GPU-model
    cohorts, moving all work to a new model shows as mix; group by team to see the chip effect
    within a workload."""
    return rebound_report(session, baseline=parse_period(baseline, "baseline"),
                          current=parse_period(current, "current"), cohort=cohort, work=work)
