"""Ingest load: sampler batches published at a steady rate to the Redis broker, ingested by real
`celery worker` processes into PostgreSQL.

The batches are the real samplers' output (one per simulated node of 8 GPUs, a reading per GPU
every --sample-s, a batch every --batch-s simulated seconds), made before the clock starts. A
producer publishes them on schedule for --duration-s; a poller notes when each batch's
IngestedBatch row becomes visible (committed), every POLL_S. Then it waits for the backlog
(at most --drain-s) and checks that every published batch was ingested exactly once and that the
ledger holds exactly the energy published (mJ).

Figures: readings/s offered and ingested, ingest lag publish → committed (p50/p99, to within
POLL_S) and publish → ingest start (the row's ingested_at), errors. Exits 1 on any error.

    python -m bench ingest-load --rate-readings-s 2000 --duration-s 30 --workers 2
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from accounting.clock import US_PER_S, to_us
from accounting.config import Settings
from accounting.db import make_engine
from accounting.ledger.models import IngestedBatch, LedgerEntry
from workers.celery_app import make_celery
from workers.processes import batch_sender, start_worker, stop_process

from .fleet import (
    BrokerUrlOpt,
    DatabaseUrlOpt,
    ForceOpt,
    GpusOpt,
    RefusedDatabase,
    SeedOpt,
    WorkersOpt,
    broker_url_of,
    check_bench_database,
    clear_broker,
    database_url_of,
    energy_in,
    fail,
    plan_fleet,
    previous_month_start_us,
    readings_in,
    rebuild_schema,
    sampler_batches,
    seed_jobs,
    temp_spool,
)
from .stats import percentile

POLL_S = 0.05


def now_us() -> int:
    return time.time_ns() // 1_000


def make_batches(gpus: int, readings: int, *, sample_s: float, batch_s: float, seed: int,
                 engine: sa.Engine) -> list[dict]:
    """Plan a fleet long enough for `readings`, register its jobs, and return its batches (the
    first `readings` or a few more: whole batches)."""
    sim_s = math.ceil(readings / gpus) * sample_s + batch_s
    fleet = plan_fleet(gpus, start_us=previous_month_start_us(), hours=max(1.0, sim_s / 3_600 + 1), seed=seed)
    with Session(engine) as session:
        seed_jobs(session, fleet)
        session.commit()
    batches, total = [], 0
    with temp_spool() as spool:
        for batch in sampler_batches(fleet, sample_s=sample_s, batch_s=batch_s, spool_root=Path(spool),
                                     until_us=fleet.start_us + round(sim_s * US_PER_S)):
            batches.append(batch)
            total += readings_in(batch)
            if total >= readings:
                break
    return batches


class Poller(threading.Thread):
    """Notes when each (node, seq) becomes visible in IngestedBatch, and its ingested_at.

    Rows commit out of id order (two workers), so it asks by sequence number: each poll reads
    the rows at or above the lowest seq not yet seen on any node."""

    def __init__(self, engine: sa.Engine, nodes: list[str]) -> None:
        super().__init__(name="poller", daemon=True)
        self.engine, self.stop = engine, threading.Event()
        self.seen: dict[tuple[str, int], tuple[int, int]] = {}  # key → (seen_us, ingested_at_us)
        self.next_seq = dict.fromkeys(nodes, 1)  # per node, the lowest seq not seen yet

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(IngestedBatch.node, IngestedBatch.seq, IngestedBatch.ingested_at)
                .where(IngestedBatch.seq >= min(self.next_seq.values(), default=1))
            ).all()
        seen_us = now_us()
        for row in rows:
            self.seen.setdefault((row.node, row.seq), (seen_us, to_us(row.ingested_at)))
        for node, seq in self.next_seq.items():
            while (node, seq) in self.seen:
                seq += 1
            self.next_seq[node] = seq


def publish(batches: list[dict], send, *, rate_readings_s: float, duration_s: float) -> tuple[dict, int, float]:
    """Each batch at its turn on a steady schedule of readings/s, until the batches or the time
    run out; returns ({(node, seq): published_us}, publish errors, seconds spent)."""
    published: dict[tuple[str, int], int] = {}
    errors, readings = 0, 0
    began = time.perf_counter()
    for batch in batches:
        due = began + readings / rate_readings_s
        if due - began >= duration_s:
            break
        time.sleep(max(0.0, due - time.perf_counter()))
        try:
            send(batch)
        except Exception:  # the broker refused it: counted, the run goes on
            errors += 1
            continue
        published[(batch["node"], batch["seq"])] = now_us()
        readings += readings_in(batch)
    return published, errors, time.perf_counter() - began


def worker_logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in log_dir.glob("worker-*.log"))


def worker_log_counts(log_dir: Path) -> tuple[int, int]:
    """(errors, retries of a group's transaction) in the workers' logs."""
    text = worker_logs(log_dir)
    errors = sum(1 for line in text.splitlines() if "ERROR/" in line or "CRITICAL/" in line)
    return errors, text.count("; retry ") + text.count("; trying again")


GROUP_LINE = re.compile(r"ingested (\d+) of (\d+) batches")


def group_sizes(log_dir: Path) -> list[int]:
    """How many batches each ingest transaction took, from the workers' logs."""
    return [int(total) for _, total in GROUP_LINE.findall(worker_logs(log_dir))]


def verify(engine: sa.Engine, published: dict, by_key: dict[tuple[str, int], dict]) -> list[str]:
    """Every published batch ingested exactly once, none other; Σ ledger energy = Σ published."""
    return verify_ingested(engine, set(published), sum(energy_in(by_key[k]) for k in published))


def verify_ingested(engine: sa.Engine, published: set[tuple[str, int]], published_mj: int) -> list[str]:
    """The (node, seq) keys ingested are exactly `published`, each once; Σ ledger = `published_mj`."""
    problems = []
    with engine.connect() as connection:
        keys = [tuple(r) for r in connection.execute(sa.select(IngestedBatch.node, IngestedBatch.seq)).all()]
        ledger_mj = connection.execute(sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.energy_mj), 0))).scalar_one()
    if len(keys) != len(set(keys)):
        problems.append(f"{len(keys) - len(set(keys))} batches ingested more than once")
    if set(keys) != set(published):
        problems.append(f"{len(set(published) - set(keys))} published batches not ingested, "
                        f"{len(set(keys) - set(published))} ingested that were not published")
    if ledger_mj != published_mj:
        problems.append(f"ledger holds {ledger_mj:,} mJ, the published batches {published_mj:,} mJ")
    return problems


def start_workers(count: int, env: dict[str, str], log_dir: Path, timeout_s: float = 60, pool: str = "solo") -> list:
    procs = [start_worker(env, log_dir / f"worker-{i}.log", queues="ingest", pool=pool) for i in range(count)]
    deadline = time.monotonic() + timeout_s
    for i, proc in enumerate(procs):
        log = log_dir / f"worker-{i}.log"
        while not (log.exists() and b"ready." in log.read_bytes()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"worker {i} did not start; see {log}")
            time.sleep(0.1)
    return procs


def ingest_load(
    rate_readings_s: Annotated[float, typer.Option(min=1, help="Readings published per second.")] = 2_000.0,
    duration_s: Annotated[float, typer.Option(min=0.1, help="Seconds of publishing.")] = 30.0,
    workers: WorkersOpt = 2,
    gpus: GpusOpt = 64,
    sample_s: Annotated[float, typer.Option(min=0.1, help="Simulated seconds between readings.")] = 1.0,
    batch_s: Annotated[float, typer.Option(min=1, help="Simulated seconds between a node's batches.")] = 10.0,
    drain_s: Annotated[float, typer.Option(min=0, help="At most this long to wait for the backlog.")] = 30.0,
    seed_value: SeedOpt = 7,
    database_url: DatabaseUrlOpt = None,
    broker_url: BrokerUrlOpt = None,
    force: ForceOpt = False,
) -> None:
    """Publish sampler batches at a steady rate to Redis; real Celery workers ingest them into
    PostgreSQL. Prints readings/s ingested, lag p50/p99 and errors; checks exactly-once."""
    console = Console(width=max(Console().width, 110))
    url = database_url_of(database_url)
    broker = broker_url_of(broker_url)
    try:
        check_bench_database(url, force=force)
    except RefusedDatabase as exc:
        raise typer.Exit(fail(console, str(exc))) from None
    engine = make_engine(url)
    began = time.perf_counter()
    rebuild_schema(engine)
    batches = make_batches(gpus, math.ceil(rate_readings_s * duration_s), sample_s=sample_s, batch_s=batch_s,
                           seed=seed_value, engine=engine)
    console.print(f"prepared in {time.perf_counter() - began:.1f} s: {len(batches)} batches, "
                  f"{sum(map(readings_in, batches)):,} readings of {gpus} GPUs on {gpus // 8} nodes "
                  f"(~{sum(map(readings_in, batches)) / len(batches):.0f} readings a batch)")
    with tempfile.TemporaryDirectory(prefix="wl-bench-ingest-") as home:
        settings = Settings(home=Path(home), database_url=url, broker_url=broker)
        celery = make_celery(settings, results=False)  # a publisher keeps no results (see batch_sender)
        clear_broker(celery)  # leftovers of an aborted run would be ingested twice over the count
        env = {"WATTLEDGER_HOME": home, "WATTLEDGER_DATABASE_URL": url, "WATTLEDGER_BROKER_URL": broker,
               # configured as the fleet is (the workers' group size follows from it)
               "WATTLEDGER_FLUSH_INTERVAL_S": f"{batch_s:g}", "WATTLEDGER_SAMPLE_INTERVAL_S": f"{sample_s:g}"}
        procs = start_workers(workers, env, Path(home))
        poller = Poller(engine, sorted({b['node'] for b in batches}))
        poller.start()
        try:
            published, publish_errors, publish_s = publish(batches, batch_sender(celery),
                                                           rate_readings_s=rate_readings_s, duration_s=duration_s)
            backlog = len(published) - len(poller.seen)
            deadline = time.monotonic() + drain_s
            while len(poller.seen) < len(published) and time.monotonic() < deadline:
                time.sleep(POLL_S)
        finally:
            poller.stop.set()
            poller.join(5)
            for proc in procs:
                stop_process(proc)
        poller.poll()
        worker_errors, retries = worker_log_counts(Path(home))
    by_key = {(b["node"], b["seq"]): b for b in batches}
    problems = verify(engine, published, by_key)
    engine.dispose()
    report(console, by_key, published, poller.seen, publish_s=publish_s, backlog=backlog, workers=workers,
           errors=publish_errors + worker_errors, retries=retries, problems=problems, rate=rate_readings_s)
    raise typer.Exit(1 if publish_errors or worker_errors or problems else 0)


def report(console: Console, by_key: dict, published: dict, seen: dict, *, publish_s: float, backlog: int,
           workers: int, errors: int, retries: int, problems: list[str], rate: float) -> None:
    done = [k for k in published if k in seen]
    readings_published = sum(readings_in(by_key[k]) for k in published)
    readings_done = sum(readings_in(by_key[k]) for k in done)
    first_us = min(published.values(), default=0)
    last_us = max((seen[k][0] for k in done), default=first_us)
    commit_ms = sorted((seen[k][0] - published[k]) / 1e3 for k in done)
    start_ms = sorted(max(0, seen[k][1] - published[k]) / 1e3 for k in done)
    table = Table(title=f"Ingest load: {workers} worker processes, {rate:,.0f} readings/s offered for "
                        f"{publish_s:.1f} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("batches published / ingested", f"{len(published):,} / {len(done):,}")
    table.add_row("readings published / ingested", f"{readings_published:,} / {readings_done:,}")
    table.add_row("readings/s offered (achieved by the producer)", f"{readings_published / publish_s:,.0f}")
    table.add_row("readings/s ingested (first publish → last commit)",
                  f"{readings_done / max((last_us - first_us) / 1e6, 1e-9):,.0f}")
    table.add_row("backlog when publishing stopped (batches)", f"{backlog:,}")
    table.add_row(f"lag publish → committed p50 / p99 / max (ms, ±{POLL_S * 1e3:.0f})",
                  f"{percentile(commit_ms, 50):,.0f} / {percentile(commit_ms, 99):,.0f} / "
                  f"{commit_ms[-1] if commit_ms else math.nan:,.0f}")
    table.add_row("lag publish → ingest start p50 / p99 (ms)",
                  f"{percentile(start_ms, 50):,.0f} / {percentile(start_ms, 99):,.0f}")
    table.add_row("errors (publish + worker log)", f"[red]{errors}[/]" if errors else "0")
    table.add_row("task retries (worker log)", f"{retries}")
    table.add_row("exactly once, Σ ledger = Σ published (mJ)", "[red]NO[/]" if problems else "yes")
    console.print(table)
    for problem in problems:
        console.print(f"[red]problem[/] {problem}")
