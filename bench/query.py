"""Query latency at fleet scale: a month's chargeback and a job's energy, over real HTTP.

Seeds a bench database (PostgreSQL) with `gpus` GPUs × `days` days in stored form by COPY
(bench.seed_scale: jobs from the Alibaba trace's mix, the hourly ledger, samples for the retained
window only), starts the real API process on loopback, and measures:

- GET /v1/chargeback?period=<the month>&group_by=team (JSON, default idle policy): the first call
  (cold) reported apart, then `chargeback_calls` more: median, p95, max; target 250 ms median.
- GET /v1/jobs/{id}/energy for `energy_calls` random jobs: median, p95, max; target 20 ms median.

    python -m bench query --gpus 1000 --days 30            # seeds, then measures
    python -m bench query --gpus 1000 --days 30 --reuse    # skips seeding when the counts match
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import httpx
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from accounting.clock import FakeClock, to_datetime, to_us
from accounting.db import make_engine
from accounting.ledger.retention import ensure_partitions
from workers.processes import stop_process

from .api_load import admin_key, start_api, wait_ready
from .fleet import (
    BENCH_DB_URL,
    ForceOpt,
    RefusedDatabase,
    check_bench_database,
    database_url_of,
    fail,
    previous_month_start_us,
    rebuild_schema,
)
from .live_ingest import LiveIngest
from .seed_plan import Plan, plan
from .seed_scale import now_utc, seed_factors, seed_gpus_and_jobs, seed_ledger, seed_work_reports
from .stats import percentile

TARGETS_MS = {"chargeback": 250.0, "chargeback (live ingest)": 250.0, "job-energy": 20.0}
COUNTED = ("gpu", "job", "allocation", "ledger_entry", "sample", "unattributed_use", "work_report")


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t: connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in COUNTED}


def matches(engine: sa.Engine, p: Plan, start) -> bool:
    """--reuse: the stored fleet is this plan's (GPU and job counts, the window's first and last hour)."""
    try:
        with engine.connect() as connection:
            gpus, jobs = (connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ("gpu", "job"))
            first, last = connection.execute(sa.text("SELECT min(hour), max(hour) FROM ledger_entry")).one()
    except sa.exc.DBAPIError:
        return False
    return (gpus, jobs) == (p.gpus, len(p.jobs)) and first == start and last == start + timedelta(hours=p.hours - 1)


def conservation(engine: sa.Engine) -> tuple[int, int]:
    """(GPU-hours with samples, of them those whose Σ ledger ≠ Σ samples)."""
    query = sa.text("""
        WITH s AS (SELECT gpu_id, date_trunc('hour', start_at) AS hour, sum(energy_mj) AS mj FROM sample GROUP BY 1, 2),
             l AS (SELECT gpu_id, hour, sum(energy_mj) AS mj FROM ledger_entry
                   WHERE hour >= (SELECT min(start_at) FROM sample) GROUP BY 1, 2)
        SELECT count(*), count(*) FILTER (WHERE l.mj IS DISTINCT FROM s.mj) FROM s LEFT JOIN l USING (gpu_id, hour)""")
    with engine.connect() as connection:
        checked, wrong = connection.execute(query).one()
    return int(checked), int(wrong)


def seed(engine: sa.Engine, p: Plan, start, *, sample_days: int, sample_s: int, console: Console) -> None:
    began = time.perf_counter()
    rebuild_schema(engine)
    now = now_utc()
    sample_from_min = max(0, p.minutes - sample_days * 1_440)
    samples_from = start + timedelta(minutes=sample_from_min)
    with Session(engine) as session:
        # The sampled days' partitions, as the maintenance task makes them ahead (PostgreSQL).
        ensure_partitions(session, clock=FakeClock(to_us(samples_from)), days_ahead=sample_days)
        site_ids = seed_factors(session, start.year)
        seed_gpus_and_jobs(session, p, start, site_ids, samples_from, now)
        reports = seed_work_reports(session, p, start, now)
        step = max(1, p.gpus // 10)
        rows, samples = seed_ledger(session, p, start, sample_from_min, sample_s,
                                    progress=lambda n: n % step == 0 and console.print(f"  ledger: {n}/{p.gpus} GPUs"))
        session.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE"))
    console.print(f"seeded in {time.perf_counter() - began:.1f} s: {rows:,} ledger rows, {samples:,} samples "
                  f"({sample_days} d at {sample_s} s), {reports:,} work reports")


class Timings:
    """Latencies (ms) per endpoint and the first failures; a failed call ends that endpoint's series."""

    def __init__(self, client: httpx.Client) -> None:
        self.client, self.errors, self.bodies = client, [], {}
        self.ms: dict[str, list[float]] = {"chargeback (cold)": [], "chargeback": [], "chargeback (live ingest)": [],
                                           "job-energy": []}

    def get(self, name: str, path: str, params: dict) -> bool:
        began = time.perf_counter()
        try:
            response = self.client.get(path, params=params)
            error = None if response.is_success else f"{response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__} after {time.perf_counter() - began:.0f} s: {exc}"
        if error:
            self.errors.append(f"{name}: {error}")
            return False
        self.ms[name].append((time.perf_counter() - began) * 1_000)
        self.bodies[name] = response.content
        return True


def measure(base_url: str, key: str, period: str, job_ids: list[int], *, chargeback_calls: int, energy_calls: int,
            budget_s: float, timeout_s: float, seed_value: int, live: LiveIngest | None = None) -> Timings:
    rng, deadline = random.Random(seed_value), time.monotonic() + budget_s
    params = {"period": period, "group_by": "team"}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s) as client:
        client.get(f"/v1/jobs/{job_ids[0]}/energy").raise_for_status()  # connection, imports
        t = Timings(client)
        if t.get("chargeback (cold)", "/v1/chargeback", params):
            for _ in range(chargeback_calls):
                if time.monotonic() > deadline or not t.get("chargeback", "/v1/chargeback", params):
                    break
            if live is not None:  # the same calls while ingest commits every 20 ms at the current hour
                with live:
                    time.sleep(0.5)
                    for _ in range(chargeback_calls):
                        if time.monotonic() > deadline or not t.get("chargeback (live ingest)", "/v1/chargeback",
                                                                    params):
                            break
                if live.error is not None:
                    t.errors.append(f"live ingest: {live.error!r}")
                elif _figures(t.bodies.get("chargeback (live ingest)")) != _figures(t.bodies.get("chargeback")):
                    t.errors.append("chargeback under live ingest differs from the quiescent answer")
        for _ in range(energy_calls):
            if time.monotonic() > deadline or not t.get("job-energy", f"/v1/jobs/{rng.choice(job_ids)}/energy",
                                                        {"unit": "kWh"}):
                break
    return t


def _figures(body: bytes | None) -> dict | None:
    """A chargeback answer less the time it was served at (`generated_at`)."""
    if body is None:
        return None
    answer = json.loads(body)
    answer["statement"].pop("generated_at", None)
    return answer


def render(results: dict[str, list[float]], console: Console, title: str) -> bool:
    table = Table(title=title)
    for column in ("endpoint", "calls", "median (ms)", "p95 (ms)", "max (ms)", "target (median)", "verdict"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    passed = True
    for name, values in results.items():
        ordered = sorted(values)
        median = statistics.median(ordered) if ordered else float("nan")
        target = TARGETS_MS.get(name)
        ok = target is None or (bool(ordered) and median <= target)
        passed &= ok
        table.add_row(name, str(len(ordered)), f"{median:.1f}", f"{percentile(ordered, 95):.1f}",
                      f"{ordered[-1] if ordered else float('nan'):.1f}", f"≤ {target:g} ms" if target else "—",
                      "—" if target is None else "[green]pass[/]" if ok else "[red]FAIL[/]")
    console.print(table)
    return passed


def query(
    gpus: Annotated[int, typer.Option(min=8, help="GPUs (a multiple of 8).")] = 1_000,
    days: Annotated[int, typer.Option(min=1, max=31, help="Days of ledger, from the 1st of last month.")] = 30,
    sample_days: Annotated[int, typer.Option(min=0, help="Days of raw samples kept, at the window's end.")] = 1,
    sample_s: Annotated[int, typer.Option(min=60, help="Seconds per seeded sample (a multiple of 60).")] = 60,
    chargeback_calls: Annotated[int, typer.Option(min=1, help="Chargeback calls after the cold one.")] = 20,
    energy_calls: Annotated[int, typer.Option(min=1, help="Job-energy calls, random jobs.")] = 200,
    live_ingest: Annotated[bool, typer.Option(help="Repeat the chargeback calls while ingest commits every 20 ms "
                                              "at the current hour.")] = True,
    budget_s: Annotated[float, typer.Option(min=1, help="Stop measuring after this many seconds.")] = 300.0,
    timeout_s: Annotated[float, typer.Option(min=1, help="Give up on one request after this many seconds.")] = 300.0,
    reuse: Annotated[bool, typer.Option(help="Skip seeding when the database holds this plan's fleet.")] = False,
    seed_value: Annotated[int, typer.Option("--seed", help="Seed of the plan and the job draws.")] = 7,
    database_url: Annotated[str | None, typer.Option(help="Default: $WATTLEDGER_DATABASE_URL or "
                                                          f"{BENCH_DB_URL}.")] = None,
    force: ForceOpt = False,
) -> None:
    """Seed a month of a large fleet by COPY, then time the chargeback and job-energy endpoints."""
    console = Console(width=max(Console().width, 110))
    url = database_url_of(database_url)
    try:
        check_bench_database(url, force=force)
        began = time.perf_counter()
        p = plan(gpus, days, seed=seed_value)
    except (RefusedDatabase, ValueError) as exc:
        raise typer.Exit(fail(console, str(exc))) from None
    start = to_datetime(previous_month_start_us())
    busy = sum((j.end_min - j.start_min) * len(j.gpus) for j in p.jobs) / (p.gpus * p.minutes)
    console.print(f"plan: {gpus} GPUs × {days} d from {start:%Y-%m-%d}, {len(p.jobs):,} jobs from the Alibaba "
                  f"trace's mix, {busy:.1%} of GPU-time in jobs ({time.perf_counter() - began:.1f} s)")
    engine = make_engine(url)
    if reuse and matches(engine, p, start):
        console.print("--reuse: the database holds this fleet; not seeding")
    else:
        seed(engine, p, start, sample_days=sample_days, sample_s=sample_s, console=console)
    stored = counts(engine)
    console.print("rows: " + ", ".join(f"{t} {n:,}" for t, n in stored.items()))
    checked, wrong = conservation(engine)
    console.print(f"conservation over the sampled GPU-hours: {checked:,} checked, {wrong} where Σ ledger ≠ Σ samples")
    key = admin_key(engine)
    with engine.connect() as connection:
        uuids = list(connection.execute(sa.text("SELECT uuid FROM gpu ORDER BY id LIMIT 4")).scalars())
    engine.dispose()
    job_ids = list(range(1, len(p.jobs) + 1))
    live = LiveIngest(url, uuids) if live_ingest else None
    with tempfile.TemporaryDirectory(prefix="wl-bench-query-") as home:
        proc, base_url = start_api(url, Path(home))
        try:
            wait_ready(proc, base_url)
            timings = measure(base_url, key, start.strftime("%Y-%m"), job_ids, chargeback_calls=chargeback_calls,
                              energy_calls=energy_calls, budget_s=budget_s, timeout_s=timeout_s, seed_value=seed_value,
                              live=live)
        finally:
            stop_process(proc)
    passed = render(timings.ms, console, f"Query latency over HTTP: {gpus} GPUs × {days} d, period "
                    f"{start:%Y-%m}, {stored['ledger_entry']:,} ledger rows")
    if live is not None:
        console.print(f"live ingest: {live.commits:,} batches committed at the current hour during those calls; "
                      "the answers equal the quiescent one" if not timings.errors else "")
    for error in timings.errors:
        console.print(f"[red]error[/] {error}")
    raise typer.Exit(0 if passed and not wrong and not timings.errors else 1)
