"""Scale-out: S sampler processes (one node identity each) keep the Redis ingest queue full;
W real `celery worker` processes drain it into PostgreSQL. For each W, in turn: readings/s
ingested in a steady window, the speed-up over the first W, and where the CPU went.

Each producer is its own process (`python -m bench.scale_out producer <json>`) running the real
`Sampler` over one simulated node of 8 GPUs on a fake clock, publishing through `batch_sender`
with a results-less app, as a node's sampler does. It samples and ships as fast as the queue
takes: whenever the queue holds fewer than --backlog-readings it makes the next batch, so the
workers never wait for work (the lowest queue depth seen in the window is printed to prove it).
The sampler's confirmation round is left out: at this speed it would ask about every queued
batch after each flush, where a real node asks about one batch every 10 s. The workers still
store each task's result in Redis, as in production.

For each W: the bench database is rebuilt (migrations) and the fleet's jobs registered; the
queue is purged; producers and workers start; after --warmup-s the window of --duration-s
begins. Readings/s come from the IngestedBatch rows committed in the window. CPU comes from
/proc (utime + stime) over the window: the workers, this database's PostgreSQL backends, the
PostgreSQL server's shared processes, the producers, and the rest of the machine (other
tenants, this script). Then the producers stop, the backlog drains, and every published
(node, seq) must be ingested exactly once with Σ ledger energy = Σ published energy (mJ).

    python -m bench scale-out --workers 1,2,3,4 --samplers 4 --duration-s 20 --batch-readings 80
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import redis
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlmodel import Session

from accounting.clock import US_PER_S
from accounting.config import Settings
from accounting.db import make_engine
from accounting.ledger.models import IngestedBatch
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from workers.celery_app import make_celery
from workers.processes import batch_sender, stop_process
from workers.queues import QueueName

from .fleet import (
    GPUS_PER_NODE,
    BrokerUrlOpt,
    DatabaseUrlOpt,
    ForceOpt,
    RefusedDatabase,
    SeedOpt,
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
    seed_jobs,
)
from .ingest_load import start_workers, verify_ingested, worker_log_counts

QUEUE = QueueName.ingest.value
TICK_S = os.sysconf("SC_CLK_TCK")
CAP_READINGS_S = 40_000  # the most any W is expected to ingest: sizes the simulated hours


# ---- the producer: one node's sampler, in its own process ----------------------------------

def produce(cfg: dict) -> None:
    """Sample one simulated node and publish its batches while the queue is short, until SIGTERM;
    then write what was published (seq, readings, mJ) and this process's CPU to cfg['out']."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fleet = plan_fleet(cfg["nodes"] * GPUS_PER_NODE, start_us=cfg["start_us"], hours=cfg["hours"], seed=cfg["seed"])
    node = sorted(fleet.nodes)[cfg["index"]]
    home = Path(cfg["home"])
    sampler = Sampler(backend=fleet.nodes[node], spool=Spool(home / "spool" / node), clock=fleet.clock, node=node)
    send = batch_sender(make_celery(Settings(home=home, broker_url=cfg["broker_url"]), results=False))
    queue = redis.Redis.from_url(cfg["broker_url"])
    published: list[list[int]] = []

    def tracked(batch: dict) -> str:
        receipt = send(batch)
        published.append([batch["seq"], readings_in(batch), energy_in(batch)])
        return receipt

    t_us, step_us = fleet.start_us, round(cfg["sample_s"] * US_PER_S)
    ready, ran_out = Path(cfg["ready"]), False
    while not stop.is_set():
        if queue.llen(QUEUE) >= cfg["backlog_batches"]:
            ready.touch()
            stop.wait(0.01)
            continue
        for _ in range(cfg["steps_per_batch"]):
            fleet.clock.set(t_us)
            sampler.sample()
            t_us += step_us
        sampler.flush()
        sampler.ship(tracked)
        if t_us > fleet.end_us:
            ran_out = True
            break
    times = os.times()
    Path(cfg["out"]).write_text(json.dumps({"node": node, "published": published, "ran_out": ran_out,
                                            "cpu_s": times.user + times.system}))


# ---- CPU from /proc -------------------------------------------------------------------------

def process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # gone
    return (int(fields[11]) + int(fields[12])) / TICK_S  # utime + stime


def postgres_groups(database: str) -> dict[str, set[int]]:
    """PostgreSQL's processes by their title: backends of `database`, the server's shared
    processes (postmaster, WAL writer, checkpointer …), and backends of other databases."""
    groups: dict[str, set[int]] = {"pg_bench": set(), "pg_server": set(), "pg_other": set()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        # "postgres: 15/main: <user> <database> <host(port)> <state>" for a backend
        if database in title[2:]:
            groups["pg_bench"].add(int(entry.name))
        elif len(title) >= 5 and "(" in title[4]:
            groups["pg_other"].add(int(entry.name))
        else:
            groups["pg_server"].add(int(entry.name))
    return groups


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK_S  # less idle and iowait


@dataclass
class CpuSnapshot:
    at_s: float
    busy_s: float
    per_pid: dict[int, float]
    groups: dict[str, set[int]]


def cpu_snapshot(groups: dict[str, set[int]]) -> CpuSnapshot:
    per_pid = {pid: cpu for pids in groups.values() for pid in pids if (cpu := process_cpu_s(pid)) is not None}
    return CpuSnapshot(time.monotonic(), machine_busy_s(), per_pid, groups)


def cores_used(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """Cores each group kept busy between two snapshots (a process born in between counts whole)."""
    window_s = end.at_s - start.at_s
    used = {}
    for name, pids in end.groups.items():
        used[name] = sum(end.per_pid.get(p, 0.0) - start.per_pid.get(p, 0.0) for p in pids | start.groups[name]
                         if p in end.per_pid) / window_s
    used["machine"] = (end.busy_s - start.busy_s) / window_s
    used["rest"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
    return used


# ---- one round: W workers ---------------------------------------------------------------------

@dataclass
class Round:
    workers: int
    readings_s: float = 0.0
    batches_s: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)
    min_queue: int = 0
    published: int = 0
    problems: list[str] = field(default_factory=list)


def committed(engine: sa.Engine) -> tuple[int, int]:
    """(batches, readings) in IngestedBatch: what the workers have committed so far."""
    with engine.connect() as connection:
        row = connection.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(IngestedBatch.intervals), 0))
                                 ).one()
    return int(row[0]), int(row[1])


def start_producers(count: int, cfg: dict, home: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(count):
        mine = {**cfg, "index": i, "out": str(home / f"producer-{i}.json"), "ready": str(home / f"producer-{i}.ready")}
        log = open(home / f"producer-{i}.log", "ab")  # noqa: SIM115 — the child process owns it
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.scale_out", "producer", json.dumps(mine)],
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait_until(predicate, timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def run_round(w: int, *, engine: sa.Engine, url: str, broker: str, cfg: dict, samplers: int, warmup_s: float,
              duration_s: float, drain_s: float, console: Console) -> Round:
    result = Round(w)
    rebuild_schema(engine)
    with Session(engine) as session:
        seed_jobs(session, plan_fleet(samplers * GPUS_PER_NODE, start_us=cfg["start_us"], hours=cfg["hours"],
                                      seed=cfg["seed"]))
        session.commit()
    queue = redis.Redis.from_url(broker)
    with tempfile.TemporaryDirectory(prefix="wl-bench-scale-") as tmp:
        home = Path(tmp)
        clear_broker(make_celery(Settings(home=home, broker_url=broker), results=False))
        env = {"WATTLEDGER_HOME": tmp, "WATTLEDGER_DATABASE_URL": url, "WATTLEDGER_BROKER_URL": broker,
               # configured as the fleet is (the workers' group size follows from it)
               "WATTLEDGER_FLUSH_INTERVAL_S": str(cfg["steps_per_batch"] * cfg["sample_s"]),
               "WATTLEDGER_SAMPLE_INTERVAL_S": str(cfg["sample_s"])}
        producers = start_producers(samplers, {**cfg, "home": tmp, "broker_url": broker}, home)
        workers: list[subprocess.Popen] = []
        try:
            workers = start_workers(w, env, home)
            if not wait_until(lambda: all((home / f"producer-{i}.ready").exists() for i in range(samplers)), 60):
                result.problems.append("the producers never filled the queue to the backlog")
            time.sleep(warmup_s)
            database = make_url(url).database or ""
            groups = postgres_groups(database)
            groups |= {"workers": {p.pid for p in workers}, "producers": {p.pid for p in producers}}
            start, (batches0, readings0) = cpu_snapshot(groups), committed(engine)
            depths = [queue.llen(QUEUE)]
            while time.monotonic() - start.at_s < duration_s:
                time.sleep(min(0.5, max(0.0, duration_s - (time.monotonic() - start.at_s))))
                depths.append(queue.llen(QUEUE))
            (batches1, readings1) = committed(engine)
            groups |= postgres_groups(database)  # backends connected during the window
            end = cpu_snapshot(groups)
            window_s = end.at_s - start.at_s
            result.readings_s, result.batches_s = (readings1 - readings0) / window_s, (batches1 - batches0) / window_s
            result.cores, result.min_queue = cores_used(start, end), min(depths)
            for proc in producers:
                proc.send_signal(signal.SIGTERM)
            for proc in producers:
                proc.wait(30)
            outs = [json.loads((home / f"producer-{i}.json").read_text()) for i in range(samplers)]
            keys = {(o["node"], seq) for o in outs for seq, _, _ in o["published"]}
            published_mj = sum(mj for o in outs for _, _, mj in o["published"])
            result.published = sum(readings for o in outs for _, readings, _ in o["published"])
            if any(o["ran_out"] for o in outs):
                result.problems.append("a producer ran out of simulated time (raise --hours)")
            if not wait_until(lambda: committed(engine)[0] >= len(keys), drain_s, 0.2):
                result.problems.append(f"the backlog did not drain in {drain_s:.0f} s")
        finally:
            for proc in producers + workers:
                stop_process(proc)
        errors, retries = worker_log_counts(home)
    wrong = verify_ingested(engine, keys, published_mj)
    result.problems += wrong
    if errors:
        result.problems.append(f"{errors} errors in the worker logs ({retries} retries)")
    console.print(f"W={w}: {result.readings_s:,.0f} readings/s ({result.batches_s:,.1f} batches/s) over "
                  f"{window_s:.1f} s; {result.published:,} readings published, queue ≥ {result.min_queue} batches; "
                  f"load {os.getloadavg()[0]:.1f}; exactly once, Σ ledger = Σ published (mJ): "
                  f"{'NO' if wrong else 'yes'}")
    for problem in result.problems:
        console.print(f"[red]problem[/] {problem}")
    return result


# ---- the command --------------------------------------------------------------------------------

def storage(engine: sa.Engine) -> dict[str, float]:
    """On-disk bytes per raw sample row and per hourly ledger row (tables, indexes and TOAST)."""
    with engine.connect() as connection:
        figures = {}
        for table in ("sample", "ledger_entry"):
            # A partitioned table keeps its rows in its partitions (samples by day, migration 0007).
            size, rows = connection.execute(sa.text(
                f"SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('{table}')), "
                f"pg_total_relation_size('{table}')), (SELECT count(*) FROM {table})")).one()
            figures[f"{table}_rows"], figures[f"{table}_bytes"] = rows, size
        figures["ledger_rows_per_gpu_hour"] = connection.execute(sa.text(
            "SELECT count(*)::float / greatest(count(DISTINCT (gpu_id, hour)), 1) FROM ledger_entry")).scalar_one()
    return figures


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter("comma-separated worker counts, e.g. 1,2,3,4", param_hint="--workers") from None
    if not counts or min(counts) < 1 or max(counts) > 32:
        raise typer.BadParameter("worker counts from 1 to 32", param_hint="--workers")
    return counts


def scale_out(
    workers: Annotated[str, typer.Option(help="Worker counts to run in turn, comma-separated.")] = "1,2,3,4",
    samplers: Annotated[int, typer.Option(min=1, max=64, help="Producer processes: one node of 8 GPUs each.")] = 4,
    duration_s: Annotated[float, typer.Option(min=1, help="Seconds of the measured window, per worker count.")] = 20.0,
    warmup_s: Annotated[float, typer.Option(min=0, help="Seconds after start-up before the window opens.")] = 3.0,
    batch_readings: Annotated[int, typer.Option(min=8, help="Readings a batch (a multiple of 8: 80 = a 10 s "
                                                "flush at 1 Hz, 480 = 60 s).")] = 80,
    backlog_readings: Annotated[int, typer.Option(min=1, help="The producers keep at least this many readings "
                                                  "queued.")] = 4_000,
    drain_s: Annotated[float, typer.Option(min=1, help="At most this long for the backlog after the window.")] = 30.0,
    seed_value: SeedOpt = 7,
    database_url: DatabaseUrlOpt = None,
    broker_url: BrokerUrlOpt = None,
    force: ForceOpt = False,
) -> None:
    """S sampler processes keep Redis full; W Celery workers ingest into PostgreSQL, for each W in
    turn. Prints readings/s, the speed-up, CPU of workers and PostgreSQL; checks exactly-once."""
    console = Console(width=max(Console().width, 150))
    counts = parse_counts(workers)
    if batch_readings % GPUS_PER_NODE:
        raise typer.BadParameter(f"a multiple of {GPUS_PER_NODE} (one reading per GPU per step)",
                                 param_hint="--batch-readings")
    url = database_url_of(database_url)
    broker = broker_url_of(broker_url)
    try:
        check_bench_database(url, force=force)
    except RefusedDatabase as exc:
        raise typer.Exit(fail(console, str(exc))) from None
    # Enough simulated time for the fastest plausible round (start-up and drain included).
    sim_s = CAP_READINGS_S * (warmup_s + duration_s + 20) / (samplers * GPUS_PER_NODE)
    cfg = {"nodes": samplers, "start_us": previous_month_start_us(), "hours": math.ceil(sim_s / 3_600) + 1,
           "seed": seed_value, "sample_s": 1.0, "steps_per_batch": batch_readings // GPUS_PER_NODE,
           "backlog_batches": math.ceil(backlog_readings / batch_readings)}
    load = os.getloadavg()
    console.print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {samplers} "
                  f"samplers × {GPUS_PER_NODE} GPUs, {batch_readings} readings a batch, backlog ≥ "
                  f"{cfg['backlog_batches']} batches, window {duration_s:.0f} s per worker count")
    engine = make_engine(url)
    rounds = [run_round(w, engine=engine, url=url, broker=broker, cfg=cfg, samplers=samplers, warmup_s=warmup_s,
                        duration_s=duration_s, drain_s=drain_s, console=console) for w in counts]
    sizes = storage(engine)
    engine.dispose()
    report(console, rounds, sizes, batch_readings=batch_readings, samplers=samplers, load=os.getloadavg())
    raise typer.Exit(1 if any(r.problems for r in rounds) else 0)


def report(console: Console, rounds: list[Round], sizes: dict, *, batch_readings: int, samplers: int,
           load: tuple[float, float, float]) -> None:
    base = rounds[0]
    table = Table(title=f"Scale-out: {samplers} samplers, {batch_readings} readings a batch. CPU: cores kept busy "
                        f"over the window, of {os.cpu_count()}")
    for column in ("workers", "readings/s", "speed-up", "batches/s", "CPU workers", "CPU PG bench", "CPU PG server",
                   "CPU samplers", "CPU rest", "CPU all", "readings/ worker CPU-s", "min queue", "exactly once"):
        table.add_column(column, justify="right", overflow="fold")
    for r in rounds:
        c = r.cores
        table.add_row(str(r.workers), f"{r.readings_s:,.0f}",
                      f"{r.readings_s / base.readings_s:.2f}×" if base.readings_s else "–", f"{r.batches_s:,.1f}",
                      f"{c['workers']:.2f}", f"{c['pg_bench']:.2f}", f"{c['pg_server']:.2f}", f"{c['producers']:.2f}",
                      f"{c['rest'] + c['pg_other']:.2f}", f"{c['machine']:.2f}",
                      f"{r.readings_s / c['workers']:,.0f}" if c["workers"] else "–", str(r.min_queue),
                      "[red]NO[/]" if r.problems else "yes")
    console.print(table)
    console.print(f"speed-up: over the first row. PG bench: this database's backends; PG server: its shared "
                  f"processes (WAL writer, checkpointer …); rest: other databases' backends, other tenants, this "
                  f"script. min queue: fewest batches queued in the window (0: the workers may have waited). "
                  f"Load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.")
    for table_name in ("sample", "ledger_entry"):
        rows, size = sizes[f"{table_name}_rows"], sizes[f"{table_name}_bytes"]
        console.print(f"on disk after the last round: {table_name} {rows:,} rows, {size / 2**20:,.1f} MiB "
                      f"(tables + indexes + TOAST), {size / max(rows, 1):,.0f} bytes a row")
    console.print(f"ledger rows per GPU-hour: {sizes['ledger_rows_per_gpu_hour']:.2f} (a small table's bytes a row "
                  f"are mostly its first index pages)")


if __name__ == "__main__" and sys.argv[1:2] == ["producer"]:
    produce(json.loads(sys.argv[2]))
