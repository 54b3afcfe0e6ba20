"""Fleet totals: metered energy and where it went (jobs, idle, unattributed)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from accounting.ledger.reports import fleet_totals
from accounting.units import EnergyUnit, energy_from_mj

from ..auth import Reader
from ..deps import SessionDep

router = APIRouter(tags=["ledger"])


class LedgerTotals(BaseModel):
    unit: EnergyUnit
    measured: float = Field(description="Σ metered energy of every GPU (the counters).")
    jobs: float
    idle: float
    unattributed: float
    balanced: bool = Field(description="jobs + idle + unattributed == measured, to the millijoule.")
    measured_mj: int
    jobs_mj: int
    idle_mj: int
    unattributed_mj: int


@router.get("/ledger/totals", response_model=LedgerTotals)
def get_totals(session: SessionDep, _: Reader, unit: EnergyUnit = EnergyUnit.J):
    totals = fleet_totals(session)
    return LedgerTotals(
        unit=unit,
        measured=energy_from_mj(totals.measured_mj, unit),
        jobs=energy_from_mj(totals.jobs_mj, unit),
        idle=energy_from_mj(totals.idle_mj, unit),
        unattributed=energy_from_mj(totals.unattributed_mj, unit),
        balanced=totals.balanced,
        measured_mj=totals.measured_mj,
        jobs_mj=totals.jobs_mj,
        idle_mj=totals.idle_mj,
        unattributed_mj=totals.unattributed_mj,
    )
