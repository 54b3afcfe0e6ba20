"""API load: the real API server, as its own process on loopback, under a fixed-concurrency mix
of reads (jobs, job energy, the jobs list, energy, efficiency, a month's chargeback, health)
and work-report writes, bounded by a request count and a time limit.

The database (PostgreSQL, rebuilt by the migrations) is first seeded with a realistic fleet:
64 simulated GPUs on 8 nodes, a few hundred jobs of four teams, a day of hourly ledger built by
the real sampler and ingest, hourly work reports. Prints requests, requests/s, p50/p99 latency
and errors per endpoint and overall; exits 1 when any request failed (non-2xx or exception).

    python -m bench api-load --requests 5000 --concurrency 16 --duration-s 30
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import sqlalchemy as sa
import typer
from rich.console import Console
from sqlmodel import Session

from accounting.auth.models import Role
from accounting.auth.service import create_key
from accounting.clock import SystemClock, to_datetime
from accounting.db import make_engine
from accounting.jobs.models import Job
from accounting.ledger.models import LedgerEntry
from workers.processes import free_port, stop_process

from .fleet import (
    SOURCE,
    DatabaseUrlOpt,
    Fleet,
    ForceOpt,
    RefusedDatabase,
    check_bench_database,
    database_url_of,
    fail,
    ingest_all,
    plan_fleet,
    previous_month_start_us,
    rebuild_schema,
    sampler_batches,
    seed_jobs,
    seed_work,
    temp_spool,
)
from .stats import Latencies, render_latencies

Request = tuple[str, str, str, dict | None, dict | None]  # endpoint, method, path, params, json body


def admin_key(engine: sa.Engine) -> str:
    """An admin API key, made the way an operator would (`wattledger keys create --role admin`)."""
    with Session(engine) as session:
        _, plaintext = create_key(session, role=Role.admin, name="bench api-load", clock=SystemClock())
        session.commit()
    return plaintext


def seed(engine: sa.Engine, fleet: Fleet, *, sample_s: float, batch_s: float, console: Console) -> None:
    began = time.perf_counter()
    rebuild_schema(engine)
    with Session(engine) as session:
        seed_jobs(session, fleet)
        reports = seed_work(session, fleet)
        session.commit()
    with temp_spool() as spool:
        batches, readings, _ = ingest_all(engine, sampler_batches(fleet, sample_s=sample_s, batch_s=batch_s,
                                                                  spool_root=Path(spool)))
    with engine.connect() as connection:
        rows = connection.execute(sa.select(sa.func.count()).select_from(LedgerEntry)).scalar_one()
    console.print(f"seeded in {time.perf_counter() - began:.1f} s: {fleet.gpu_count} GPUs on {len(fleet.nodes)} nodes, "
                  f"{len(fleet.jobs)} jobs, {reports} work reports, {readings:,} readings in {batches} batches "
                  f"→ {rows:,} ledger rows")


def attach_job_ids(engine: sa.Engine, fleet: Fleet) -> None:
    """--skip-seed: the planned jobs are already in the database; find their ids."""
    with engine.connect() as connection:
        ids = dict(connection.execute(sa.select(Job.external_id, Job.id).where(Job.source == SOURCE)).all())
    missing = [j.external_id for j in fleet.jobs if j.external_id not in ids]
    if missing:
        raise RuntimeError(f"{len(missing)} planned jobs are not in the database (first: {missing[0]}); seed it first")
    for job in fleet.jobs:
        job.job_id = ids[job.external_id]


# Share of each endpoint in the mix (relative weights): per-job reads dominate, as from a
# dashboard or a scheduler's epilogue; the month's chargeback is rare and the heaviest.
MIX = {"healthz": 1, "job": 3, "job-energy": 3, "jobs": 2, "energy": 1, "efficiency": 1, "chargeback": 0.25,
       "work": 2}


def request_mix(fleet: Fleet, rng: random.Random, only: list[str] | None = None) -> Mix:
    """The mix's requests; `only`: just these keys of MIX."""
    day = {"from": to_datetime(fleet.start_us).isoformat(), "to": to_datetime(fleet.end_us).isoformat()}
    training = [j for j in fleet.jobs if j.mfu is not None]
    teams = sorted({j.team for j in fleet.jobs})
    makers: dict[str, Callable[[int], Request]] = {
        "healthz": lambda i: ("GET /healthz", "GET", "/healthz", None, None),
        "job": lambda i: ("GET /v1/jobs/{id}", "GET", f"/v1/jobs/{rng.choice(fleet.jobs).job_id}", None, None),
        "job-energy": lambda i: ("GET /v1/jobs/{id}/energy", "GET",
                                 f"/v1/jobs/{rng.choice(fleet.jobs).job_id}/energy", {"unit": "kWh"}, None),
        "jobs": lambda i: ("GET /v1/jobs", "GET", "/v1/jobs", {"team": rng.choice(teams), "limit": 100}, None),
        "energy": lambda i: ("GET /v1/energy", "GET", "/v1/energy", {**day, "group_by": "team"}, None),
        "efficiency": lambda i: ("GET /v1/efficiency", "GET", "/v1/efficiency", {**day, "group_by": "team"}, None),
        "chargeback": lambda i: ("GET /v1/chargeback", "GET", "/v1/chargeback", {"period": fleet.period}, None),
        "work": lambda i: _work_report(rng.choice(training), i),
    }
    keys = only or list(MIX)
    unknown = set(keys) - set(MIX)
    if unknown:
        raise ValueError(f"unknown endpoints {sorted(unknown)}; the mix has {', '.join(MIX)}")
    if not training:  # a tiny fleet may have no training job to report work for
        keys = [k for k in keys if k != "work"] or ["healthz"]
    return Mix([makers[k] for k in keys], [MIX[k] for k in keys], rng)


class Mix:
    def __init__(self, makers: list[Callable[[int], Request]], weights: list[float], rng: random.Random) -> None:
        self.makers, self.weights, self.rng = makers, weights, rng

    def request(self, i: int) -> Request:
        """The i-th request: an endpoint drawn by weight."""
        return self.rng.choices(self.makers, self.weights)[0](i)

    def one_of_each(self) -> list[Request]:
        return [make(-1 - n) for n, make in enumerate(self.makers)]


RUN = f"{time.time_ns():x}"  # keeps work-report keys new when a run reuses the database (--skip-seed)


def _work_report(job, i: int) -> Request:
    body = {"key": f"load-{RUN}-{i}", "at": to_datetime(job.end_us).isoformat(), "flops": 10**15, "tokens": 1_000}
    return "POST /v1/jobs/{id}/work", "POST", f"/v1/jobs/{job.job_id}/work", None, body


async def drive(base_url: str, headers: dict[str, str], mix: Mix, *, requests: int,
                concurrency: int, duration_s: float) -> tuple[Latencies, float]:
    """`concurrency` clients in a loop until `requests` have been sent or `duration_s` has passed;
    returns the latencies and the wall time. One request of each endpoint warms the server first
    (connections, imports, caches), outside the figures."""
    stats = Latencies()
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30, limits=limits) as client:
        for endpoint, method, path, params, body in mix.one_of_each():
            response = await client.request(method, path, params=params, json=body)
            if not response.is_success:  # shown and counted, as every request of the run is
                stats.add(f"{endpoint} (warm-up)", 0.0, f"{response.status_code}: {response.text[:200]}")
        began = time.perf_counter()
        deadline = began + duration_s

        async def client_loop() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                endpoint, method, path, params, body = mix.request(issued)
                issued += 1
                start = time.perf_counter()
                try:
                    response = await client.request(method, path, params=params, json=body)
                    error = None if response.is_success else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                stats.add(endpoint, time.perf_counter() - start, error)

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return stats, time.perf_counter() - began


def start_api(url: str, home: Path) -> tuple[subprocess.Popen, str]:
    """`wattledger api` (the production command) on a free loopback port; output to home/api.log."""
    port = free_port()
    exe = shutil.which("wattledger", path=str(Path(sys.executable).parent)) or shutil.which("wattledger")
    command = [exe] if exe else [sys.executable, "-m", "workers.cli"]
    env = {**os.environ, "WATTLEDGER_DATABASE_URL": url, "WATTLEDGER_HOME": str(home)}
    log = open(home / "api.log", "ab")  # noqa: SIM115 — the child process owns it
    proc = subprocess.Popen([*command, "api", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, base_url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the API at {base_url} was not ready within {timeout_s:g} s")


def api_load(
    requests: Annotated[int, typer.Option(min=1, help="Stop after this many requests.")] = 5_000,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight at once.")] = 16,
    duration_s: Annotated[float, typer.Option(min=0.1, help="Stop after this many seconds of load.")] = 30.0,
    gpus: Annotated[int, typer.Option(min=8, help="Simulated GPUs (a multiple of 8).")] = 64,
    hours: Annotated[float, typer.Option(min=1, help="Simulated hours of ledger to seed.")] = 24.0,
    sample_s: Annotated[float, typer.Option(min=1, help="Simulated seconds between readings.")] = 300.0,
    batch_s: Annotated[float, typer.Option(min=1, help="Simulated seconds between batches.")] = 3_600.0,
    seed_value: Annotated[int, typer.Option("--seed", help="Seed of the fleet and of the request mix.")] = 7,
    only: Annotated[str | None, typer.Option(help=f"Only these endpoints, comma-separated: {', '.join(MIX)}.")]
    = None,
    skip_seed: Annotated[bool, typer.Option(help="Reuse the database seeded by an earlier run (same sizes).")] = False,
    database_url: DatabaseUrlOpt = None,
    force: ForceOpt = False,
) -> None:
    """Drive the real API server on loopback with a mix of reads and writes; print requests/s and
    p50/p99 latency per endpoint."""
    console = Console(width=max(Console().width, 110))
    url = database_url_of(database_url)
    try:
        check_bench_database(url, force=force)
    except RefusedDatabase as exc:
        raise typer.Exit(fail(console, str(exc))) from None
    try:
        mix_keys = [k.strip() for k in only.split(",")] if only else None
        fleet = plan_fleet(gpus, start_us=previous_month_start_us(), hours=hours, seed=seed_value)
        mix = request_mix(fleet, random.Random(seed_value), mix_keys)
    except ValueError as exc:
        raise typer.Exit(fail(console, str(exc))) from None
    engine = make_engine(url)
    if skip_seed:
        attach_job_ids(engine, fleet)
    else:
        seed(engine, fleet, sample_s=sample_s, batch_s=batch_s, console=console)
    key = admin_key(engine)
    headers = {"Authorization": f"Bearer {key}"}
    console.print("API key: an admin key, created for this run")
    engine.dispose()
    with tempfile.TemporaryDirectory(prefix="wl-bench-api-") as home:
        proc, base_url = start_api(url, Path(home))
        try:
            wait_ready(proc, base_url)
            stats, wall_s = asyncio.run(drive(base_url, headers, mix,
                                              requests=requests, concurrency=concurrency, duration_s=duration_s))
        finally:
            stop_process(proc)
    render_latencies(stats, wall_s, console, title=f"API load: {concurrency} concurrent clients, "
                     f"{stats.total:,} requests in {wall_s:.1f} s (limits: {requests:,} requests, {duration_s:g} s)")
    raise typer.Exit(1 if stats.errors else 0)
