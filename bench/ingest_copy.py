"""Ingest vs COPY: end-to-end ingest throughput against the raw limit of the same database.

One run, one bench database, the same rows:

1. the real samplers' batches for --readings readings (bench/fleet.py: nodes of 8 simulated GPUs,
   a reading per GPU per simulated second, a batch of --batch-readings readings per node), made
   once before any clock starts; their GPUs and jobs registered;
2. the raw limit: the `sample` rows those batches produce, prepared as Python tuples, written by
   one PostgreSQL COPY (psycopg `cursor.copy`) into the emptied `sample` table (the table itself:
   same columns, indexes and partitions), COPY start → commit; in binary and in text format, and
   the faster counts. Then `sample` is emptied again;
3. end to end: every batch published to the Redis broker first (a backlog: workers never
   starve), --workers real `celery worker` processes started; they take their first batch and
   wait on a lock the bench holds on the `gpu` table until all are up, so no worker's start-up
   is timed. From that release to the commit of the last batch (its IngestedBatch row seen,
   polled every POLL_S): readings/s, and its ratio to the COPY limit.

Then it checks that every batch was ingested exactly once, Σ ledger mJ = Σ published mJ, the
ledger balances every GPU-hour to the mJ, and `sample` holds exactly the rows COPY wrote. Exits 1
on any failure. Bounded: the ingest gets at most --timeout-s.

    python -m bench ingest-vs-copy --readings 48000 --batch-readings 80 --workers 2
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated

import psycopg
import sqlalchemy as sa
import typer
from psycopg.types.json import Json
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from accounting.clock import to_datetime
from accounting.config import Settings
from accounting.db import make_engine
from accounting.ledger.reports import conservation_errors
from accounting.ledger.service import register_gpus
from workers.celery_app import make_celery
from workers.processes import batch_sender, stop_process

from .fleet import (
    GPUS_PER_NODE,
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
    readings_in,
    rebuild_schema,
)
from .ingest_load import group_sizes, make_batches, start_workers, verify_ingested, worker_log_counts

POLL_S = 0.02
COLUMNS = ("gpu_id", "start_at", "end_at", "energy_mj", "method", "power_mw", "gpu_util_pct", "memory_util_pct",
           "memory_used_bytes", "sm_clock_mhz", "sm_active_pct", "tensor_active_pct", "dram_bw_pct", "processes",
           "mig")
TYPES = ("int4", "timestamptz", "timestamptz", "int8", "varchar", "int8", "int4", "int4", "int8", "int4", "float8",
         "float8", "float8", "json", "json")
PROCESS_KEYS, MIG_KEYS = ("pid", "sm_pct", "job_key", "user"), ("uuid", "activity_pct")


def with_children(pids) -> list[int]:
    """The processes and their children (a prefork worker's pool processes)."""
    out = []
    for pid in pids:
        out.append(pid)
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_s(pids) -> float:
    """CPU seconds (user + system) the processes have used so far; 0 for one that is gone."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def libpq_url(engine: sa.Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def sample_rows(batches: list[dict], ids: dict[str, int]) -> list[tuple]:
    """The `sample` rows the batches produce, in COLUMNS order, as ingest stores them (processes
    and MIG detail as JSON with every field, null when there is none)."""
    def detail(items: list[dict], keys: tuple[str, ...]):
        return Json([{k: item.get(k) for k in keys} for item in items]) if items else None

    return [
        (ids[i["uuid"]], to_datetime(i["start_us"]), to_datetime(i["end_us"]), i["energy_mj"], i["method"],
         i.get("power_mw"), i.get("gpu_util_pct"), i.get("memory_util_pct"), i.get("memory_used_bytes"),
         i.get("sm_clock_mhz"), i.get("sm_active_pct"), i.get("tensor_active_pct"), i.get("dram_bw_pct"),
         detail(i.get("processes") or [], PROCESS_KEYS), detail(i.get("mig") or [], MIG_KEYS))
        for batch in batches for i in batch["intervals"]
    ]


def copy_seconds(url: str, rows: list[tuple], binary: bool) -> tuple[float, float]:
    """One COPY of `rows` into the emptied `sample` table, COPY start → commit; emptied again after.
    Returns (seconds, CPU seconds of this process and its PostgreSQL backend meanwhile)."""
    statement = f"COPY sample ({', '.join(COLUMNS)}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")
    with psycopg.connect(url) as connection:
        connection.execute("TRUNCATE sample")
        connection.commit()
        backend = connection.info.backend_pid
        began, cpu_began = time.perf_counter(), time.process_time() + cpu_s([backend])
        with connection.cursor() as cursor, cursor.copy(statement) as copy:
            if binary:
                copy.set_types(TYPES)
            for row in rows:
                copy.write_row(row)
        connection.commit()
        seconds, cpu = time.perf_counter() - began, time.process_time() + cpu_s([backend]) - cpu_began
        stored = connection.execute("SELECT count(*) FROM sample").fetchone()[0]
        connection.execute("TRUNCATE sample")
        connection.commit()
    if stored != len(rows):
        raise RuntimeError(f"COPY stored {stored} rows of {len(rows)}")
    return seconds, cpu


def gate_and_time(url: str, procs: list, total: int, timeout_s: float) -> tuple[float, int, float, float]:
    """Hold the `gpu` table until every worker waits on it with its first batch, release, and
    time until `total` batches are committed; returns (seconds, batches committed, CPU seconds
    of the workers, CPU seconds of their PostgreSQL backends)."""
    with psycopg.connect(url) as gate, psycopg.connect(url, autocommit=True) as poll:
        gate.execute("LOCK TABLE gpu IN ACCESS EXCLUSIVE MODE")
        deadline = time.monotonic() + 60
        waiting = 0
        while waiting < len(procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"only {waiting} of {len(procs)} workers reached the gate")
            time.sleep(0.05)
            waiting = poll.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> %s", (gate.info.backend_pid,)).fetchone()[0]
        def others() -> list[int]:
            return [pid for pid, in poll.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid NOT IN (%s, %s)",
                (gate.info.backend_pid, poll.info.backend_pid))]

        backends = others()
        workers = with_children(p.pid for p in procs)
        cpu_began = (cpu_s(workers), cpu_s(backends))
        gate.rollback()  # the release: every worker starts ingesting now
        began = time.perf_counter()
        done, deadline = 0, began + timeout_s
        while done < total and time.perf_counter() < deadline:
            time.sleep(POLL_S)
            done = poll.execute("SELECT count(*) FROM ingestedbatch").fetchone()[0]
        seconds = time.perf_counter() - began
        late = [pid for pid in others() if pid not in backends]  # a pool process's, connected after the gate
        return seconds, done, cpu_s(workers) - cpu_began[0], cpu_s(backends) - cpu_began[1] + cpu_s(late)


def stored_rows_match(url: str, rows: list[tuple]) -> bool:
    """`sample` holds exactly `rows` (compared as values, JSON parsed)."""
    def plain(row: tuple) -> tuple:
        return tuple(v.obj if isinstance(v, Json) else v for v in row)

    with psycopg.connect(url) as connection:
        stored = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM sample ORDER BY gpu_id, start_at").fetchall()
    return stored == sorted(map(plain, rows), key=lambda r: (r[0], r[1]))


def ingest_vs_copy(
    readings: Annotated[int, typer.Option(min=1_000, help="GPU readings (whole batches: a few more).")] = 48_000,
    batch_readings: Annotated[int, typer.Option(min=8, help="Readings per batch: 8 GPUs × readings per GPU "
                                                "(80 = the sampler's default 10 s flush at 1 Hz).")] = 80,
    workers: WorkersOpt = 2,
    pool: Annotated[str, typer.Option(help="The workers' pool: solo (one process each) or prefork (a "
                                      "main process and one pool process per core, as `wattledger worker`).")]
    = "solo",
    gpus: GpusOpt = 64,
    timeout_s: Annotated[float, typer.Option(min=1, help="At most this long for the ingest.")] = 90.0,
    seed_value: SeedOpt = 7,
    database_url: DatabaseUrlOpt = None,
    broker_url: BrokerUrlOpt = None,
    force: ForceOpt = False,
) -> None:
    """End-to-end ingest (Redis → real Celery workers → PostgreSQL ledger) vs PostgreSQL COPY of the
    same sample rows, in one run: readings/s of each, the ratio; checks exactly-once and the ledger."""
    console = Console(width=max(Console().width, 110))
    url = database_url_of(database_url)
    broker = broker_url_of(broker_url)
    if batch_readings % GPUS_PER_NODE:
        raise typer.Exit(fail(console, f"--batch-readings must be a multiple of {GPUS_PER_NODE}"))
    if pool not in ("solo", "prefork"):
        raise typer.Exit(fail(console, f"--pool must be solo or prefork, not {pool!r}"))
    try:
        check_bench_database(url, force=force)
    except RefusedDatabase as exc:
        raise typer.Exit(fail(console, str(exc))) from None
    load = os.getloadavg()
    engine = make_engine(url)
    began = time.perf_counter()
    rebuild_schema(engine)
    batches = make_batches(gpus, readings, sample_s=1.0, batch_s=batch_readings / GPUS_PER_NODE, seed=seed_value,
                           engine=engine)
    with Session(engine) as session:  # the GPUs' ids, for the COPY rows (ingest describes them)
        ids = register_gpus(session, [i["uuid"] for b in batches for i in b["intervals"]],
                            now_us=batches[0]["created_us"])
        session.commit()
    rows = sample_rows(batches, ids)
    total_readings = sum(map(readings_in, batches))
    console.print(f"prepared in {time.perf_counter() - began:.1f} s: {len(batches)} batches, {total_readings:,} "
                  f"readings of {gpus} GPUs on {gpus // GPUS_PER_NODE} nodes (~{total_readings / len(batches):.0f} "
                  f"a batch); load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    pq_url = libpq_url(engine)
    copy_s = {fmt: copy_seconds(pq_url, rows, fmt == "binary") for fmt in ("binary", "text")}
    with tempfile.TemporaryDirectory(prefix="wl-bench-copy-") as home:
        # The workers are configured as the fleet is (their group size follows from it).
        flush = {"WATTLEDGER_FLUSH_INTERVAL_S": f"{batch_readings / GPUS_PER_NODE:g}",
                 "WATTLEDGER_SAMPLE_INTERVAL_S": "1"}
        settings = Settings(home=Path(home), database_url=url, broker_url=broker,
                            flush_interval_s=batch_readings / GPUS_PER_NODE, sample_interval_s=1.0)
        celery = make_celery(settings, results=False)
        clear_broker(celery)  # leftovers of an aborted run would be ingested twice over the count
        send = batch_sender(celery)
        publish_began = time.perf_counter()
        for batch in batches:
            send(batch)
        publish_s = time.perf_counter() - publish_began
        env = {"WATTLEDGER_HOME": home, "WATTLEDGER_DATABASE_URL": url, "WATTLEDGER_BROKER_URL": broker, **flush}
        procs = start_workers(workers, env, Path(home), pool=pool)
        try:
            ingest_s, done, worker_cpu_s, backend_cpu_s = gate_and_time(pq_url, procs, len(batches), timeout_s)
        finally:
            for proc in procs:
                stop_process(proc)
        worker_errors, retries = worker_log_counts(Path(home))
        groups = group_sizes(Path(home))
    problems = verify_ingested(engine, {(b["node"], b["seq"]) for b in batches}, sum(map(energy_in, batches)))
    with Session(engine) as session:
        problems += [f"conservation: {e}" for e in conservation_errors(session)[:5]]
    if not stored_rows_match(pq_url, rows):
        problems.append("the sample table does not hold exactly the rows COPY wrote")
    engine.dispose()
    copy_rate = {fmt: len(rows) / s for fmt, (s, _) in copy_s.items()}
    best = max(copy_rate, key=copy_rate.get)
    ingest_rate = total_readings / ingest_s if done == len(batches) else math.nan
    per_batch = total_readings / len(batches)
    table = Table(title=f"Ingest vs COPY: {total_readings:,} readings in batches of ~{per_batch:.0f}, "
                        f"{workers} worker{'s' if workers > 1 else ''} ({pool} pool)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for fmt in ("binary", "text"):
        table.add_row(f"COPY {fmt}, one transaction (readings/s)", f"{copy_rate[fmt]:,.0f}")
        table.add_row(f"  CPU of COPY {fmt}: client + backend (µs/reading)", f"{copy_s[fmt][1] / len(rows) * 1e6:.1f}")
    table.add_row("publish to Redis, before the clock (s)", f"{publish_s:.1f}")
    table.add_row("batches ingested / published", f"{done:,} / {len(batches):,}")
    table.add_row("end to end: release → last commit (s)", f"{ingest_s:.2f}")
    table.add_row("end to end (readings/s)", f"{ingest_rate:,.0f}")
    table.add_row("  CPU of the workers / their backends (µs/reading)",
                  f"{worker_cpu_s / total_readings * 1e6:.1f} / {backend_cpu_s / total_readings * 1e6:.1f}")
    table.add_row(f"ratio end to end / COPY {best}", f"[bold]{ingest_rate / copy_rate[best]:.2f}[/]")
    table.add_row("ingest group setting: most batches / longest wait (s)",
                  f"{settings.resolved_ingest_group_batches} / {settings.ingest_group_wait_s:g}")
    table.add_row("ingest transactions / mean batches each (worker log)",
                  f"{len(groups):,} / {sum(groups) / len(groups):.1f}" if groups else "—")
    table.add_row("errors / retries (worker log)", f"{worker_errors} / {retries}")
    table.add_row("exactly once, Σ ledger = Σ published, balanced, samples = COPY rows",
                  "[red]NO[/]" if problems else "yes")
    console.print(table)
    for problem in problems:
        console.print(f"[red]problem[/] {problem}")
    raise typer.Exit(1 if problems or worker_errors or done != len(batches) else 0)
