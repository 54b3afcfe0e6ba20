"""Real services for the integration tests: PostgreSQL, Redis, `celery worker` processes."""

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
from accounting.ledger.models import IngestedBatch
from tests.conftest import PG_URL, REDIS_URL, truncate_all
from workers.processes import start_worker, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture
def services(pg_engine, tmp_path) -> Iterator[dict[str, str]]:
    """Empty ledger tables and an empty Redis database; the environment a worker needs."""
    truncate_all(pg_engine)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    env = {
        "WATTLEDGER_HOME": str(tmp_path),
        "WATTLEDGER_DATABASE_URL": PG_URL,
        "WATTLEDGER_BROKER_URL": REDIS_URL,
        "WATTLEDGER_BROKER_VISIBILITY_TIMEOUT_S": "5",
    }
    yield env
    client.flushdb()
    truncate_all(pg_engine)


@pytest.fixture
def settings(services) -> Settings:
    return Settings(home=Path(services["WATTLEDGER_HOME"]), database_url=PG_URL, broker_url=REDIS_URL,
                    broker_visibility_timeout_s=5)


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
        self.env, self.log_dir, self.procs = env, log_dir, []

    def start(self) -> subprocess.Popen:
        log = self.log_dir / f"worker-{len(self.procs)}.log"
        proc = start_worker(self.env, log, queues="ingest")
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


def ingested(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(IngestedBatch)).scalar_one()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("WATTLEDGER_"):
            monkeypatch.delenv(key)
