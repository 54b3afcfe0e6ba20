"""What the load benchmarks share: the bench database (guarded, rebuilt by the migrations), a
realistic simulated fleet (nodes of 8 GPUs, jobs of several teams on them), the real sampler
batches that fleet produces, and seeding the database through the real services.

Reusable by later benchmarks (issue 9's COPY comparison): `plan_fleet`, `sampler_batches`,
`seed_jobs`, `ingest_all`.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlmodel import Session

from accounting import migrations
from accounting.clock import US_PER_S, FakeClock, to_datetime
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.specs import get_spec
from accounting.gpu.workloads import FakeBusy, IdleAllocated, Inference, Training, Workload
from accounting.jobs.models import JobCreate, JobKind
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from accounting.work.models import WorkReportCreate
from accounting.work.service import record_work

BENCH_DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
BENCH_BROKER_URL = "redis://127.0.0.1:6379/14"



def database_url_of(option: str | None) -> str:
    """--database-url, else $WATTLEDGER_DATABASE_URL, else the local `bench` database."""
    return option or os.environ.get("WATTLEDGER_DATABASE_URL") or BENCH_DB_URL


def broker_url_of(option: str | None) -> str:
    """--broker-url, else $WATTLEDGER_BROKER_URL, else the bench's own Redis database."""
    return option or os.environ.get("WATTLEDGER_BROKER_URL") or BENCH_BROKER_URL


def clear_broker(app) -> None:
    """Empty the bench broker's queues, and on Redis also the messages an aborted earlier run's
    workers held unacknowledged (kombu's `unacked` hash): the transport would put those back on
    the queue one visibility timeout later, in the middle of this run, and they would be counted."""
    app.control.purge()
    url = app.conf.broker_url
    if url.startswith(("redis://", "rediss://")):
        import redis

        redis.Redis.from_url(url).delete("unacked", "unacked_index", "unacked_mutex")


# Options the benchmarks share (typer reads them from the Annotated aliases).
SeedOpt = Annotated[int, typer.Option("--seed")]
WorkersOpt = Annotated[int, typer.Option(min=1, max=32, help="`celery worker` processes (solo pool each).")]
GpusOpt = Annotated[int, typer.Option(min=8, help="Simulated GPUs (a multiple of 8; 8 per node).")]
DatabaseUrlOpt = Annotated[str | None, typer.Option(help=f"Default: $WATTLEDGER_DATABASE_URL or {BENCH_DB_URL}.")]
BrokerUrlOpt = Annotated[str | None, typer.Option(help=f"Default: $WATTLEDGER_BROKER_URL or {BENCH_BROKER_URL} "
                                                  "(its ingest queue is purged).")]
ForceOpt = Annotated[bool, typer.Option(help="Use a database whose name lacks 'bench' (ITS TABLES ARE DROPPED).")]
GPUS_PER_NODE = 8
MODELS = ("H100 SXM", "A100 SXM", "H200 SXM")  # one model per node, cycling
TEAMS = ("vision", "language", "speech", "recsys")
# How a node's 8 GPUs are split into lanes; each lane runs one job after another.
LANES = ((8,), (4, 4), (4, 2, 1, 1), (2, 2, 2, 2), (2, 2, 1, 1, 1, 1))
SOURCE = "bench"
US_PER_MIN = 60 * US_PER_S


class RefusedDatabase(Exception):
    """The database is not a bench database: the benchmark would drop every table in it."""


def check_bench_database(url: str, *, force: bool) -> None:
    name = make_url(url).database or ""
    if "bench" not in name and not force:
        raise RefusedDatabase(
            f"refusing to use database {name!r}: the benchmark DROPS EVERY TABLE in it. Use a database "
            f"whose name contains 'bench' (default {BENCH_DB_URL}), or pass --force."
        )


def rebuild_schema(engine: sa.Engine) -> None:
    """Drop everything, then build the schema the way production does: alembic upgrade head."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    metadata.drop_all(engine)
    migrations.upgrade(engine.url.render_as_string(hide_password=False))


def previous_month_start_us(now: datetime | None = None) -> int:
    """00:00 UTC on the 1st of last month: a whole past day and month, whatever today is (work
    reports and jobs may not lie in the future of the API's real clock)."""
    now = now or datetime.now(UTC)
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * US_PER_S


@dataclass
class PlannedJob:
    external_id: str
    team: str
    kind: JobKind
    gpu_uuids: list[str]
    model: str
    start_us: int
    end_us: int  # end of its GPU assignment
    finished: bool  # False: still running when the window ends
    workload: Workload
    mfu: float | None = None  # training jobs: for their work reports
    job_id: int | None = None  # once registered


@dataclass
class Fleet:
    """Simulated nodes (one SimulatedFleet each, so one sampler each) and the jobs planned on them."""

    clock: FakeClock
    start_us: int
    end_us: int
    nodes: dict[str, SimulatedFleet]
    jobs: list[PlannedJob] = field(default_factory=list)

    @property
    def gpu_count(self) -> int:
        return sum(len(f.gpus()) for f in self.nodes.values())

    @property
    def period(self) -> str:
        return to_datetime(self.start_us).strftime("%Y-%m")


def _workload(rng: random.Random) -> tuple[JobKind, Workload, float | None]:
    draw = rng.random()
    if draw < 0.65:
        mfu = round(rng.uniform(0.15, 0.5), 3)
        return JobKind.training, Training(power_fraction=rng.uniform(0.6, 0.95), mfu=mfu), mfu
    if draw < 0.92:
        return JobKind.inference, Inference(mean_load=rng.uniform(0.2, 0.7)), None
    return JobKind.other, (FakeBusy() if rng.random() < 0.5 else IdleAllocated()), None


def plan_fleet(gpus: int, *, start_us: int, hours: float, seed: int = 7) -> Fleet:
    """`gpus` (a multiple of 8) simulated GPUs on nodes of 8, busy with jobs of several teams over
    `hours` from `start_us`: each node's GPUs are split into lanes of 1–8 GPUs, and each lane runs
    jobs of 30 min to 5 h with gaps of 5 to 60 min. Jobs still running at the end stay open."""
    if gpus < GPUS_PER_NODE or gpus % GPUS_PER_NODE:
        raise ValueError(f"gpus must be a positive multiple of {GPUS_PER_NODE}")
    rng = random.Random(seed)
    clock = FakeClock(start_us)
    end_us = start_us + round(hours * 3_600) * US_PER_S
    fleet = Fleet(clock, start_us, end_us, {})
    for n in range(gpus // GPUS_PER_NODE):
        node, model = f"bench-node-{n:03d}", MODELS[n % len(MODELS)]
        sim = SimulatedFleet.build([model] * GPUS_PER_NODE, clock=clock, seed=seed + n, node=node)
        fleet.nodes[node] = sim
        uuids = [g.uuid for g in sim.gpus()]
        first = 0
        for lane, width in enumerate(rng.choice(LANES)):
            lane_uuids, first = uuids[first:first + width], first + width
            t_us = start_us + rng.randrange(0, 46) * US_PER_MIN
            while t_us < end_us:
                job_end_us = t_us + rng.randrange(30, 301) * US_PER_MIN
                kind, workload, mfu = _workload(rng)
                job = PlannedJob(f"{node}-l{lane}-{len(fleet.jobs)}", rng.choice(TEAMS), kind, lane_uuids, model,
                                 t_us, min(job_end_us, end_us), job_end_us <= end_us, workload, mfu)
                for uuid in lane_uuids:
                    sim.assign(uuid, job.start_us, job.end_us, workload)
                fleet.jobs.append(job)
                t_us = job_end_us + rng.randrange(5, 61) * US_PER_MIN
    return fleet


def sampler_batches(fleet: Fleet, *, sample_s: float, batch_s: float, spool_root: Path,
                    until_us: int | None = None) -> Iterator[dict]:
    """The real samplers' batches (one sampler per node), in time order: every GPU read each
    `sample_s` simulated seconds from the fleet's start, each node's batch flushed every `batch_s`."""
    until_us = until_us or fleet.end_us
    samplers = [Sampler(backend=sim, spool=Spool(spool_root / node), clock=fleet.clock, node=node)
                for node, sim in fleet.nodes.items()]
    step_us, flush_every = round(sample_s * US_PER_S), max(1, round(batch_s / sample_s))
    shipped: list[dict] = []
    t_us, n = fleet.start_us, 0
    while t_us <= until_us:
        fleet.clock.set(t_us)
        last = t_us + step_us > until_us
        for sampler in samplers:
            sampler.sample()
            if (n and n % flush_every == 0) or last:
                sampler.flush()
                sampler.ship(shipped.append)
        yield from shipped
        shipped.clear()
        t_us, n = t_us + step_us, n + 1


def readings_in(batch: dict) -> int:
    return len(batch["intervals"])


def energy_in(batch: dict) -> int:
    return sum(i["energy_mj"] for i in batch["intervals"])


def seed_jobs(session: Session, fleet: Fleet) -> None:
    """Register every planned job, and finish those that ended, through the jobs service (the
    clock stands at the end of the window, so nothing lies in its future)."""
    clock = FakeClock(fleet.end_us)
    for job in fleet.jobs:
        created = create_job(session, JobCreate(
            external_id=job.external_id, source=SOURCE, team=job.team, project=f"{job.team}-{job.kind.value}",
            kind=job.kind, gpu_uuids=job.gpu_uuids, started_at=to_datetime(job.start_us),
            model_parameters=7_000_000_000 if job.kind == JobKind.training else None,
        ), clock=clock)
        job.job_id = created.id
        if job.finished:
            finish_job(session, created.id, to_datetime(job.end_us), clock=clock)


def seed_work(session: Session, fleet: Fleet, *, every_s: int = 3_600) -> int:
    """Hourly work reports (FLOPs at the job's MFU) of every training job; returns how many."""
    clock, count = FakeClock(fleet.end_us), 0
    step_us = every_s * US_PER_S
    for job in fleet.jobs:
        if job.mfu is None or job.job_id is None:
            continue
        peak_flops = get_spec(job.model).peak_bf16_flops * len(job.gpu_uuids)
        at_us = job.start_us
        while at_us < job.end_us:
            to_us = min(at_us + step_us, job.end_us)
            flops = round(job.mfu * peak_flops * (to_us - at_us) / US_PER_S)
            record_work(session, job.job_id, WorkReportCreate(key=f"seed-{to_us}", at=to_datetime(to_us),
                                                              flops=flops), clock=clock)
            at_us, count = to_us, count + 1
    return count


def ingest_all(engine: sa.Engine, batches: Iterator[dict], *,
               on_batch: Callable[[dict], None] | None = None) -> tuple[int, int, int]:
    """Ingest batches in this process, one transaction each, as the worker task does; returns
    (batches, readings, energy_mj)."""
    count = readings = energy_mj = 0
    clock = FakeClock(0)
    with Session(engine) as session:
        for batch in batches:
            clock.set(batch["created_us"])
            ingest_batch(session, batch, clock=clock)
            session.commit()
            count, readings, energy_mj = count + 1, readings + readings_in(batch), energy_mj + energy_in(batch)
            if on_batch:
                on_batch(batch)
    return count, readings, energy_mj


def temp_spool() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="wl-bench-spool-")


def fail(console: Console, message: str) -> int:
    console.print(f"[bold red]{message}[/]")
    return 2
