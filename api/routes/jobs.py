"""Jobs: register, finish, read, list; a job's energy with its unit stated."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import select

from accounting.auth.models import Role
from accounting.auth.service import Principal
from accounting.errors import Conflict
from accounting.jobs import service
from accounting.jobs.models import Job, JobCreate, JobFinish, JobPublic
from accounting.ledger.reports import job_energy
from accounting.units import EnergyUnit, energy_from_mj
from accounting.validation import NO_NUL, ApiTime, check_not_ahead

from ..auth import Reader, require, visible_job
from ..deps import ClockDep, JobId, Offset, SessionDep, SettingsDep
from ..errors import documented
from .efficiency import JobEfficiencyPublic, job_efficiency_public

router = APIRouter(tags=["jobs"])

# The Slurm prolog and epilog (agent keys) register and finish jobs of every team; after a 409
# the prolog reads the job back to see whether its node's GPUs are in it (multi-node jobs).
Writer = Annotated[Principal, Depends(require(Role.admin, Role.team, Role.agent))]
JobReader = Annotated[Principal, Depends(require(Role.admin, Role.finance, Role.team, Role.agent))]


def _check_own_team(session, principal: Principal, data: JobCreate, *, now_us: int, max_backdate_s: int) -> None:
    if not principal.is_team:
        return
    if data.team != principal.team:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"team keys register jobs of their own team only: `team` must be {principal.team!r}")
    clash = session.exec(select(Job).where(Job.source == data.source, Job.external_id == data.external_id)).first()
    if clash is not None and clash.team != principal.team:  # say it exists (it must be unique), not its id
        raise Conflict(f"job {data.source}/{data.external_id} exists")
    refusal = service.team_registration_refusal(session, data, now_us=now_us, max_backdate_s=max_backdate_s)
    if refusal is not None:
        field, reason = refusal
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"`{field}`: {reason}")


@router.post("/jobs", response_model=JobPublic, status_code=status.HTTP_201_CREATED, responses=documented(409))
def create_job(data: JobCreate, session: SessionDep, clock: ClockDep, settings: SettingsDep, principal: Writer):
    check_not_ahead("started_at", data.started_at, clock=clock, max_ahead_s=settings.api_max_future_s)
    _check_own_team(session, principal, data, now_us=clock.now_us(), max_backdate_s=settings.api_team_max_backdate_s)
    job = service.create_job(session, data, clock=clock)
    session.commit()
    return service.to_public(job, data.gpu_uuids)


@router.post("/jobs/{job_id}/finish", response_model=JobPublic, responses=documented(404, 409))
def finish_job(job_id: JobId, session: SessionDep, clock: ClockDep, settings: SettingsDep, principal: Writer,
               data: JobFinish | None = None):
    visible_job(session, principal, job_id)
    if data is not None and data.ended_at is not None:
        check_not_ahead("ended_at", data.ended_at, clock=clock, max_ahead_s=settings.api_max_future_s)
    job = service.finish_job(session, job_id, data.ended_at if data else None, clock=clock)
    session.commit()
    return service.to_public(job, service.gpu_uuids_of(session, [job_id])[job_id])


class JobDetail(JobPublic):
    efficiency: JobEfficiencyPublic = Field(description="The job's efficiency over its life (to now while it runs).")


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=documented(404))
def get_job(job_id: JobId, session: SessionDep, clock: ClockDep, principal: JobReader):
    job = visible_job(session, principal, job_id)
    public = service.to_public(job, service.gpu_uuids_of(session, [job_id])[job_id])
    return JobDetail(**public.model_dump(), efficiency=job_efficiency_public(session, job, clock=clock))


@router.get("/jobs", response_model=list[JobPublic])
def list_jobs(
    session: SessionDep,
    principal: Reader,
    team: str | None = Query(None, max_length=200, pattern=NO_NUL,
                             description="A team key sees its own team's jobs only."),
    from_: Annotated[ApiTime | None, Query(alias="from", description="Jobs running at or after this time.")] = None,
    to: Annotated[ApiTime | None, Query(description="Jobs started before this time.")] = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: Offset = 0,
):
    if principal.is_team:
        if team is not None and team != principal.team:
            return []
        team = principal.team
    jobs = service.list_jobs(session, team=team, active_from=from_, active_to=to, limit=limit, offset=offset)
    uuids = service.gpu_uuids_of(session, [j.id for j in jobs])
    return [service.to_public(j, uuids[j.id]) for j in jobs]


class GpuEnergy(BaseModel):
    gpu_uuid: str
    energy: float


class EstimatedInterval(BaseModel):
    gpu_uuid: str
    hour: datetime
    energy: float = Field(description="Energy in `unit` estimated by power integration.")


class JobEnergyPublic(BaseModel):
    job_id: int
    unit: EnergyUnit
    energy: float = Field(description="Total energy attributed to the job, in `unit`.")
    energy_mj: int = Field(description="The same total in integer millijoules, as stored.")
    gpu_hours: float
    per_gpu: list[GpuEnergy]
    by_method: dict[str, float]
    estimated: list[EstimatedInterval] = Field(
        description="Hours where a counter reset or a lost GPU made us integrate power instead."
    )


@router.get("/jobs/{job_id}/energy", response_model=JobEnergyPublic, responses=documented(404))
def get_job_energy(job_id: JobId, session: SessionDep, principal: Reader, unit: EnergyUnit = EnergyUnit.J):
    job = visible_job(session, principal, job_id)
    uuids = service.gpu_uuids_of(session, [job_id])[job_id]
    energy = job_energy(session, job.id)
    return JobEnergyPublic(
        job_id=job.id,
        unit=unit,
        energy=energy_from_mj(energy.energy_mj, unit),
        energy_mj=energy.energy_mj,
        gpu_hours=energy.gpu_us / 3.6e9,
        per_gpu=[GpuEnergy(gpu_uuid=u, energy=energy_from_mj(energy.per_gpu_mj.get(u, 0), unit))
                 for u in service.metered_uuids(session, uuids, energy.per_gpu_mj)],
        by_method={m: energy_from_mj(v, unit) for m, v in energy.by_method_mj.items()},
        estimated=[
            EstimatedInterval(gpu_uuid=p.gpu_uuid, hour=p.hour, energy=energy_from_mj(p.energy_mj, unit))
            for p in energy.estimated
        ],
    )
