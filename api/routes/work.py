"""A job's useful work: report it (idempotent by key), read it back with totals and units.

FLOP counts are JSON integers, exact: they pass 2^63 (and 2^53, where a JavaScript number stops
being exact), which JSON allows; read them with a parser that keeps big integers (Python's
does; in JavaScript, a BigInt-aware parser).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, Field

from accounting.auth.models import Role
from accounting.auth.service import Principal
from accounting.validation import check_not_ahead
from accounting.work import service
from accounting.work.estimates import model_estimate_flops
from accounting.work.models import Provenance, WorkReport, WorkReportCreate, WorkReportPublic

from ..auth import Reader, require, visible_job
from ..deps import ClockDep, JobId, Offset, SessionDep, SettingsDep
from ..errors import documented

router = APIRouter(tags=["work"])

UNITS = {"flops": "FLOP", "tokens": "token", "samples": "sample", "steps": "step"}


class WorkTotalsPublic(BaseModel):
    flops: int = Field(description="Σ reported FLOP (floating-point operations), an exact JSON integer.")
    tokens: int = Field(description="Σ reported tokens.")
    samples: int = Field(description="Σ reported samples.")
    steps: int = Field(description="Σ reported steps.")
    reports: int = Field(description="How many reports (distinct keys) the sums cover.")
    figures_reported: list[str] = Field(description="The figures some report carried; the others are 0 "
                                        "because nothing was reported, not because nothing was done.")
    first_at: datetime | None
    last_at: datetime | None


class FlopEstimate(BaseModel):
    flops: int = Field(description="Estimated FLOP, an exact JSON integer.")
    provenance: Provenance


class JobWorkPublic(BaseModel):
    job_id: int
    units: dict[str, str] = Field(default=UNITS, description="The unit of each figure.")
    totals: WorkTotalsPublic
    model_estimate: FlopEstimate | None = Field(
        None, description="FLOP from the job's model size and the reported tokens (6·N per token training, "
        "2·N inference, plus PaLM's attention term when the job states its shape); null without both.")
    reports: list[WorkReportPublic] = Field(description="The reports, in the order the work was done.")


def _public(report: WorkReport, duplicate: bool = False) -> WorkReportPublic:
    return WorkReportPublic.model_validate(report, update={"duplicate": duplicate})


@router.post(
    "/jobs/{job_id}/work", response_model=WorkReportPublic, status_code=status.HTTP_201_CREATED,
    responses={200: {"model": WorkReportPublic, "description": "A repeat of a stored key: the stored report, "
                     "with `duplicate: true`; nothing changed."}, **documented(404)},
)
def report_work(job_id: JobId, data: WorkReportCreate, session: SessionDep, clock: ClockDep, settings: SettingsDep,
                response: Response,
                principal: Annotated[Principal, Depends(require(Role.admin, Role.team))]):
    """Report work done since the previous report (an increment). Retries with the same key count once."""
    visible_job(session, principal, job_id)
    check_not_ahead("at", data.at, clock=clock, max_ahead_s=settings.api_max_future_s)
    report, duplicate = service.record_work(session, job_id, data, clock=clock)
    if duplicate:
        response.status_code = status.HTTP_200_OK
    else:
        session.commit()
    return _public(report, duplicate)


@router.get("/jobs/{job_id}/work", response_model=JobWorkPublic, responses=documented(404))
def read_work(job_id: JobId, session: SessionDep, principal: Reader, limit: int = Query(1000, ge=1, le=10_000),
              offset: Offset = 0):
    """A job's work reports and their totals (over all reports, whatever page is shown)."""
    job = visible_job(session, principal, job_id)
    totals = service.work_totals(session, [job_id])[job_id]
    tokens = totals.tokens if "tokens" in totals.figures else None
    estimate = model_estimate_flops(job, tokens)
    return JobWorkPublic(
        job_id=job_id,
        totals=WorkTotalsPublic(
            flops=totals.flops, tokens=totals.tokens, samples=totals.samples, steps=totals.steps,
            reports=totals.reports, figures_reported=sorted(totals.figures),
            first_at=totals.first_at, last_at=totals.last_at,
        ),
        model_estimate=None if estimate is None else FlopEstimate(flops=estimate, provenance=Provenance.model_estimate),
        reports=[_public(r) for r in service.list_work(session, job_id, limit=limit, offset=offset)],
    )
