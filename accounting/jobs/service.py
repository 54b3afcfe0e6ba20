"""Registering, finishing and finding jobs. Changes to allocations re-attribute the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from accounting.clock import US_PER_S, Clock, to_datetime, to_us
from accounting.db import lock_gpus
from accounting.errors import Conflict, InvalidInput, NotFound
from accounting.ledger.service import metered_gpu_ids, reattribute, register_gpus

from .models import Allocation, Gpu, GpuPublic, Job, JobCreate, JobPublic

# Clocks drift and batch jobs are submitted slightly ahead; a day ahead is a mistake.
MAX_FUTURE_S = 24 * 3600


def _not_future(field: str, when: datetime, now_us: int) -> None:
    if to_us(when) > now_us + MAX_FUTURE_S * US_PER_S:
        raise InvalidInput(field, "more than 24 hours in the future")


def create_job(session: Session, data: JobCreate, *, clock: Clock) -> Job:
    now_us = clock.now_us()
    _not_future("started_at", data.started_at, now_us)
    clash = session.exec(
        select(Job).where(Job.source == data.source, Job.external_id == data.external_id)
    ).first()
    if clash:
        raise Conflict(f"job {data.source}/{data.external_id} exists (id {clash.id})")
    job = Job.model_validate(data, update={"created_at": to_datetime(now_us)})
    try:
        with session.begin_nested():  # a concurrent twin registration loses cleanly
            session.add(job)
            session.flush()
    except sa.exc.IntegrityError as exc:
        raise Conflict(f"job {data.source}/{data.external_id} exists") from exc
    gpu_ids = register_gpus(session, data.gpu_uuids, now_us=now_us)
    # Lock the GPUs (and the parents that meter MIG instances) in id order before the allocations'
    # foreign keys take KEY SHARE locks on them in the request's order: otherwise an ingest holding
    # one GPU and waiting for another deadlocks with us (seen under load in the pipeline test).
    ids = list(gpu_ids.values())
    lock_gpus(session, sorted(set(ids) | set(metered_gpu_ids(session, ids))))
    for uuid in data.gpu_uuids:
        session.add(Allocation(job_id=job.id, gpu_id=gpu_ids[uuid], start_at=data.started_at))
    session.flush()
    reattribute(session, list(gpu_ids.values()), to_us(data.started_at))
    return job


def team_registration_refusal(session: Session, data: JobCreate, *, now_us: int,
                              max_backdate_s: int) -> tuple[str, str] | None:
    """Why a team may not register this job of its own, as (field, reason); None when it may.

    A team key writes its own team's jobs only, so the job must not reach into what others hold:
    its GPUs must be known to the fleet and not held by another team's job from its start on (an
    allocation would split their energy and show it to us), its project and cost centre must not
    be another team's (its energy would be billed to them), and it may start at most
    `max_backdate_s` before now (a backdated job re-attributes history, finalized months too).
    Agent and admin keys, which the Slurm prolog and operators use, are not limited so.
    """
    if to_us(data.started_at) < now_us - max_backdate_s * US_PER_S:
        return "started_at", f"team keys register jobs at most {max_backdate_s} s after they started"
    g, a, j = Gpu.__table__, Allocation.__table__, Job.__table__
    known = set(session.execute(sa.select(g.c.uuid).where(g.c.uuid.in_(data.gpu_uuids))).scalars())
    if unknown := sorted(set(data.gpu_uuids) - known):
        return "gpu_uuids", f"unknown to the fleet (no sampler has reported them): {', '.join(unknown)}"
    held = session.execute(
        sa.select(g.c.uuid).distinct().select_from(a.join(g, g.c.id == a.c.gpu_id).join(j, j.c.id == a.c.job_id))
        .where(g.c.uuid.in_(data.gpu_uuids), j.c.team != data.team,
               sa.or_(a.c.end_at.is_(None), a.c.end_at > data.started_at))
    ).scalars().all()
    if held:
        return "gpu_uuids", f"held by another team's job from `started_at` on: {', '.join(sorted(held))}"
    for field in ("project", "cost_center"):
        value = getattr(data, field)
        if value is not None and session.execute(
            sa.select(j.c.id).where(j.c[field] == value, j.c.team != data.team).limit(1)
        ).first():
            return field, f"{value!r} belongs to another team's jobs"
    return None


def get_job(session: Session, job_id: int, *, for_update: bool = False) -> Job:
    # FOR NO KEY UPDATE: concurrent finishes still queue on the row, but ingest, which takes the
    # GPU locks first and then a foreign-key share lock on the job, is not blocked — with FOR
    # UPDATE the two took their locks in opposite orders and deadlocked.
    job = session.get(Job, job_id, with_for_update={"key_share": True} if for_update else None)
    if job is None:
        raise NotFound("job", job_id)
    return job


def finish_job(session: Session, job_id: int, ended_at: datetime | None, *, clock: Clock) -> Job:
    job = get_job(session, job_id, for_update=True)  # concurrent finishes: one wins, others 409
    now_us = clock.now_us()
    end = ended_at or to_datetime(now_us)
    _not_future("ended_at", end, now_us)
    if to_us(end) < to_us(job.started_at):
        raise InvalidInput("ended_at", "before the job's started_at")
    if job.ended_at is not None:
        if to_us(job.ended_at) == to_us(end) or ended_at is None:
            return job  # a retried finish changes nothing
        raise Conflict(f"job {job_id} already finished at {job.ended_at.isoformat()}")
    job.ended_at = end
    allocations = session.exec(select(Allocation).where(Allocation.job_id == job_id)).all()
    for allocation in allocations:
        allocation.end_at = end
    session.flush()
    reattribute(session, [a.gpu_id for a in allocations], to_us(end))
    return job


def gpu_uuids_of(session: Session, job_ids: Sequence[int]) -> dict[int, list[str]]:
    rows = session.execute(
        sa.select(Allocation.job_id, Gpu.uuid)
        .join(Gpu, Gpu.id == Allocation.gpu_id)
        .where(Allocation.job_id.in_(list(job_ids)))
        .order_by(Allocation.id)
    ).all()
    result: dict[int, list[str]] = {job_id: [] for job_id in job_ids}
    for job_id, uuid in rows:
        result[job_id].append(uuid)
    return result


def to_public(job: Job, gpu_uuids: list[str]) -> JobPublic:
    return JobPublic.model_validate(job, update={"gpu_uuids": gpu_uuids})


def list_jobs(
    session: Session,
    *,
    team: str | None = None,
    active_from: datetime | None = None,
    active_to: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Job]:
    """Jobs of a team (or all) that ran at some time in [active_from, active_to)."""
    query = select(Job)
    if team is not None:
        query = query.where(Job.team == team)
    if active_to is not None:
        query = query.where(Job.started_at < active_to)
    if active_from is not None:
        query = query.where(sa.or_(Job.ended_at.is_(None), Job.ended_at > active_from))
    return list(session.exec(query.order_by(Job.started_at, Job.id).offset(offset).limit(limit)).all())


def list_gpus(session: Session) -> list[GpuPublic]:
    gpus = list(session.exec(select(Gpu).order_by(Gpu.node, Gpu.parent_id.nulls_first(), Gpu.index, Gpu.uuid)).all())
    uuid_of = {g.id: g.uuid for g in gpus}
    return [GpuPublic.model_validate(g, update={"parent_uuid": uuid_of.get(g.parent_id)}) for g in gpus]


def metered_uuids(session: Session, uuids: Sequence[str], metered_mj: dict[str, int]) -> list[str]:
    """The GPUs a job's energy is reported on: those metered for it, then its other whole GPUs
    (a MIG instance is metered on its parent, so it is not listed itself)."""
    instances = set(session.exec(select(Gpu.uuid).where(Gpu.uuid.in_(list(uuids)), Gpu.parent_id.is_not(None))).all())
    return [*metered_mj, *(u for u in uuids if u not in metered_mj and u not in instances)]
