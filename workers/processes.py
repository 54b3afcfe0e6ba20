"""Starting the pieces as real processes and servers: Celery worker, API server, batch sender."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from celery import Celery

from .queues import INGEST_TASK, QueueName


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_worker(
    env: dict[str, str],
    log_path: Path,
    *,
    queues: str = f"{QueueName.ingest},{QueueName.maintenance}",
    beat: bool = False,
    pool: str = "solo",
) -> subprocess.Popen:
    """A real `celery worker` process; its output goes to `log_path`."""
    args = [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", "worker",
            "--pool", pool, "-Q", queues, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if beat:
        args += ["--beat", "--schedule", str(log_path.parent / "celerybeat-schedule")]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 — the child process owns it
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ApiServer:
    """uvicorn serving an app on a background thread (real HTTP on loopback)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def batch_sender(app: Celery) -> Callable[[dict], None]:
    """Publish a sampler batch to the ingest queue; raises when the broker is unreachable
    (the sampler then keeps the batch in its spool and retries later)."""

    def send(batch: dict) -> None:
        app.send_task(
            INGEST_TASK, args=[batch], queue=QueueName.ingest.value,
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        )

    return send
