"""Real services for the integration tests: PostgreSQL, Redis, `celery worker` processes.

`services` uses the machine's shared PostgreSQL and Redis (never stopped). The fault tests that
stop a server get one of their own: `redis_server` and `pg_cluster` (see services.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from accounting.config import Settings
from accounting.db import make_engine
from accounting.ledger.models import IngestedBatch
from tests.conftest import PG_URL, REDIS_URL, reset_database, truncate_all
from tests.integration.services import PgCluster, RedisServer
from workers.processes import start_worker, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture
def services(pg_engine, tmp_path) -> Iterator[dict[str, str]]:
    """Empty ledger tables and an empty Redis database; the environment a worker needs."""
    truncate_all(pg_engine)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield service_env(tmp_path, database_url=PG_URL, broker_url=REDIS_URL)
    client.flushdb()
    truncate_all(pg_engine)


def service_env(home: Path, *, database_url: str, broker_url: str, visibility_timeout_s: int = 5) -> dict[str, str]:
    """The environment a worker needs to talk to these services."""
    return {
        "WATTLEDGER_HOME": str(home),
        "WATTLEDGER_DATABASE_URL": database_url,
        "WATTLEDGER_BROKER_URL": broker_url,
        "WATTLEDGER_BROKER_VISIBILITY_TIMEOUT_S": str(visibility_timeout_s),
    }


def settings_of(env: dict[str, str]) -> Settings:
    """The same configuration as Settings, for the test process (sender, confirmer)."""
    return Settings(home=Path(env["WATTLEDGER_HOME"]), database_url=env["WATTLEDGER_DATABASE_URL"],
                    broker_url=env["WATTLEDGER_BROKER_URL"],
                    broker_visibility_timeout_s=int(env["WATTLEDGER_BROKER_VISIBILITY_TIMEOUT_S"]))


@pytest.fixture
def settings(services) -> Settings:
    return settings_of(services)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, which it may stop and start again."""
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_cluster() -> Iterator[tuple[PgCluster, sa.Engine]]:
    """A PostgreSQL cluster of the test's own, migrated, which it may restart; and its engine."""
    cluster = PgCluster()
    engine = None
    try:
        cluster.init()
        cluster.start()
        engine = make_engine(cluster.url)
        reset_database(engine)
        yield cluster, engine
    finally:
        if engine is not None:
            engine.dispose()
        cluster.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Workers:
    """Start, kill and restart real worker processes; each logs to its own file."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir, self.procs = dict(env), log_dir, []

    def start(self, pool: str = "solo") -> subprocess.Popen:
        log = self.log_dir / f"worker-{len(self.procs)}.log"
        proc = start_worker(self.env, log, queues="ingest", pool=pool)
        self.procs.append(proc)
        wait_until(lambda: b"ready." in log.read_bytes() if log.exists() else False, 60, "the worker to start")
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc)


@pytest.fixture
def workers(services, tmp_path) -> Iterator[Workers]:
    pool = Workers(services, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def make_workers(tmp_path) -> Iterator[Callable[[dict[str, str]], Workers]]:
    """Workers for another environment (a server of the test's own); all stopped at the end."""
    pools: list[Workers] = []

    def make(env: dict[str, str]) -> Workers:
        pools.append(Workers(env, tmp_path))
        return pools[-1]

    yield make
    for pool in pools:
        pool.stop_all()


def ingested(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(IngestedBatch)).scalar_one()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("WATTLEDGER_"):
            monkeypatch.delenv(key)


def ingested_seqs(engine: sa.Engine, node: str) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(IngestedBatch.seq).where(IngestedBatch.node == node)).scalars())


def energy_by_gpu(engine: sa.Engine, table: type) -> dict[str, int]:
    """Σ energy_mj per GPU uuid of `table` (Sample: what was metered; LedgerEntry: what was booked)."""
    from accounting.jobs.models import Gpu

    t, g = table.__table__, Gpu.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(g.c.uuid, sa.func.sum(t.c.energy_mj)).join(g, g.c.id == t.c.gpu_id).group_by(g.c.uuid)
        ).all()
    return {uuid: int(total) for uuid, total in rows}


def shipped_by_gpu(batches: dict[int, dict]) -> dict[str, int]:
    """Σ interval energy per GPU of the batches a sampler shipped (each seq once)."""
    totals: dict[str, int] = {}
    for batch in batches.values():
        for interval in batch["intervals"]:
            totals[interval["uuid"]] = totals.get(interval["uuid"], 0) + interval["energy_mj"]
    return totals
