"""Operational figures for the Prometheus endpoint, read from the database at scrape time.

Plain data only (no prometheus_client, no web code): the API turns these into metric families.
Every figure is keyed by something bounded by the size of the fleet (GPU, node) or by a fixed
set (account kind); nothing is keyed per job, team or user.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session

from accounting.chargeback.models import Site
from accounting.clock import to_datetime, to_us
from accounting.jobs.models import Gpu, Job
from accounting.ledger.models import IDLE, UNATTRIBUTED, IngestedBatch, LedgerEntry, Sample

ACCOUNT_KINDS = ("job", "idle", "unattributed")
# Redis hash: Celery task name → failures, written by the workers (workers/metrics.py), read by /metrics.
TASK_FAILURES_KEY = "wattledger:task_failures"


@dataclass(frozen=True)
class GpuPower:
    gpu_uuid: str
    gpu_model: str
    node: str
    site: str
    watts: float  # the newest sample's power reading; its mean power when it has none


@dataclass(frozen=True)
class GpuEnergy:
    gpu_uuid: str
    gpu_model: str
    node: str
    joules: float  # Σ of the ledger (kept forever; raw samples expire)


@dataclass(frozen=True)
class NodeIngest:
    node: str
    batches: int  # batches taken into the ledger, ever
    lag_s: float | None  # now − end of the newest sample still held; None when none is held


@dataclass(frozen=True)
class Snapshot:
    gpu_power: list[GpuPower]
    gpu_energy: list[GpuEnergy]
    account_energy_j: dict[str, float]  # "job" | "idle" | "unattributed" → J, all three always present
    jobs_running: int
    nodes: list[NodeIngest]


def _model(gpu) -> str:
    return gpu.model or gpu.name or ""


def _gpu_power(session: Session) -> list[GpuPower]:
    g, s, site = Gpu.__table__, Sample.__table__, Site.__table__
    newest = (  # the newest sample's start, through the (gpu_id, start_at) key
        sa.select(s.c.start_at).where(s.c.gpu_id == g.c.id).order_by(s.c.start_at.desc()).limit(1)
        .correlate(g).scalar_subquery()
    )
    rows = session.execute(
        sa.select(g.c.uuid, g.c.model, g.c.name, g.c.node, site.c.name.label("site"),
                  s.c.power_mw, s.c.energy_mj, s.c.start_at, s.c.end_at)
        .select_from(g.join(s, sa.and_(s.c.gpu_id == g.c.id, s.c.start_at == newest))
                     .outerjoin(site, site.c.id == g.c.site_id))
        .order_by(g.c.uuid)
    ).all()
    result = []
    for r in rows:
        if r.power_mw is not None:
            watts = r.power_mw / 1000
        else:
            duration_us = to_us(r.end_at) - to_us(r.start_at)
            watts = r.energy_mj * 1000 / duration_us  # mJ/µs = kW; × 1000 → W
        result.append(GpuPower(r.uuid, _model(r), r.node or "", r.site or "", watts))
    return result


def _gpu_energy(session: Session) -> list[GpuEnergy]:
    g, t = Gpu.__table__, LedgerEntry.__table__
    rows = session.execute(
        sa.select(g.c.uuid, g.c.model, g.c.name, g.c.node, sa.func.sum(t.c.energy_mj).label("mj"))
        .select_from(t.join(g, g.c.id == t.c.gpu_id))
        .group_by(g.c.id, g.c.uuid, g.c.model, g.c.name, g.c.node)
        .order_by(g.c.uuid)
    ).all()
    return [GpuEnergy(r.uuid, _model(r), r.node or "", int(r.mj) / 1000) for r in rows]


def _account_energy(session: Session) -> dict[str, float]:
    t = LedgerEntry.__table__
    kind = sa.case((t.c.account == IDLE, "idle"), (t.c.account == UNATTRIBUTED, "unattributed"), else_="job")
    rows = session.execute(sa.select(kind.label("kind"), sa.func.sum(t.c.energy_mj)).group_by(kind)).all()
    sums = {k: 0.0 for k in ACCOUNT_KINDS}
    for k, mj in rows:
        sums[k] = int(mj) / 1000
    return sums


def _jobs_running(session: Session, now_us: int) -> int:
    j = Job.__table__
    now = to_datetime(now_us)
    return session.execute(
        sa.select(sa.func.count()).select_from(j)
        .where(j.c.started_at <= now, sa.or_(j.c.ended_at.is_(None), j.c.ended_at > now))
    ).scalar_one()


def _nodes(session: Session, now_us: int) -> list[NodeIngest]:
    b, g, s = IngestedBatch.__table__, Gpu.__table__, Sample.__table__
    batches = dict(session.execute(sa.select(b.c.node, sa.func.count()).group_by(b.c.node)).all())
    # The newest sample per GPU through the (gpu_id, start_at) unique index, then the newest per node.
    newest_end = (
        sa.select(s.c.end_at).where(s.c.gpu_id == g.c.id).order_by(s.c.start_at.desc()).limit(1)
        .correlate(g).scalar_subquery()
    )
    per_gpu = sa.select(g.c.node, newest_end.label("end_at")).where(g.c.node.is_not(None)).subquery()
    newest = dict(session.execute(
        sa.select(per_gpu.c.node, sa.func.max(per_gpu.c.end_at)).group_by(per_gpu.c.node)
    ).all())
    return [
        NodeIngest(node, batches.get(node, 0),
                   (now_us - to_us(newest[node])) / 1e6 if newest.get(node) is not None else None)
        for node in sorted(set(batches) | set(newest))
    ]


def snapshot(session: Session, *, now_us: int) -> Snapshot:
    """Everything /metrics shows, read in one session."""
    return Snapshot(
        gpu_power=_gpu_power(session),
        gpu_energy=_gpu_energy(session),
        account_energy_j=_account_energy(session),
        jobs_running=_jobs_running(session, now_us),
        nodes=_nodes(session, now_us),
    )
