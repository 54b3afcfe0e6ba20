"""Jobs: register, finish, read, list; a job's energy with its unit stated."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from accounting.jobs import service
from accounting.jobs.models import JobCreate, JobFinish, JobPublic
from accounting.ledger.reports import job_energy
from accounting.units import EnergyUnit, energy_from_mj

from ..deps import ClockDep, JobId, SessionDep
from .efficiency import JobEfficiencyPublic, job_efficiency_public

router = APIRouter(tags=["jobs"])


@router.post("/jobs", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
def create_job(data: JobCreate, session: SessionDep, clock: ClockDep):
    job = service.create_job(session, data, clock=clock)
    session.commit()
    return service.to_public(job, data.gpu_uuids)


@router.post("/jobs/{job_id}/finish", response_model=JobPublic)
def finish_job(job_id: JobId, session: SessionDep, clock: ClockDep, data: JobFinish | None = None):
    job = service.finish_job(session, job_id, data.ended_at if data else None, clock=clock)
    session.commit()
    return service.to_public(job, service.gpu_uuids_of(session, [job_id])[job_id])


class JobDetail(JobPublic):
    efficiency: JobEfficiencyPublic = Field(description="The job's efficiency over its life (to now while it runs).")


@router.get("/jobs/{job_id}", response_model=JobDetail)
def get_job(job_id: JobId, session: SessionDep, clock: ClockDep):
    job = service.get_job(session, job_id)
    public = service.to_public(job, service.gpu_uuids_of(session, [job_id])[job_id])
    return JobDetail(**public.model_dump(), efficiency=job_efficiency_public(session, job, clock=clock))


@router.get("/jobs", response_model=list[JobPublic])
def list_jobs(
    session: SessionDep,
    team: str | None = Query(None, max_length=200),
    from_: datetime | None = Query(None, alias="from", description="Jobs running at or after this time."),
    to: datetime | None = Query(None, description="Jobs started before this time."),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
):
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


@router.get("/jobs/{job_id}/energy", response_model=JobEnergyPublic)
def get_job_energy(job_id: JobId, session: SessionDep, unit: EnergyUnit = EnergyUnit.J):
    job = service.get_job(session, job_id)
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
