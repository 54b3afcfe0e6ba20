"""Metrics that live outside the API process: Celery task failures and the node's spool depth.

Task failures: every worker process (prefork children included, on any host) adds one to a
Redis hash field per task name when Celery's `task_failure` signal fires (a task that raised and
will not be retried). The API's /metrics reads the hash at scrape time, so the count is fleet-wide,
survives worker restarts and needs no per-process registry or multiprocess directory. With a
non-Redis broker (the embedded SQLite transport) nothing is counted and /metrics omits the family.

Spool depth: the spool is a directory on the node, so the sampler serves it itself on a small
HTTP endpoint (prometheus_client.start_http_server, its own registry). Carrying the depth inside
each batch would go stale exactly when it matters: while the broker is unreachable no batch
arrives centrally, and the last reported depth would stay low while the spool fills.
"""

from __future__ import annotations

import logging
import os

import redis
from celery import Celery
from celery.signals import task_failure
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from accounting.metering.spool import Spool
from accounting.metrics import TASK_FAILURES_KEY

log = logging.getLogger(__name__)

_clients: dict[tuple[int, str], redis.Redis] = {}  # per (pid, url): a forked child opens its own


def is_redis_url(url: str | None) -> bool:
    return bool(url) and url.startswith(("redis://", "rediss://", "unix://"))


def _client(url: str) -> redis.Redis:
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _clients[key]


def record_task_failure(redis_url: str, task_name: str) -> None:
    """Count one failure of `task_name`; never raises (metrics must not break a worker)."""
    try:
        _client(redis_url).hincrby(TASK_FAILURES_KEY, task_name, 1)
    except Exception:  # noqa: BLE001
        log.warning("could not count a failure of %s in Redis", task_name, exc_info=True)


def install_task_failure_counter(app: Celery) -> bool:
    """Connect the `task_failure` handler for this app's tasks; False (nothing connected) unless
    the broker is Redis."""
    url = app.conf.broker_url
    if not is_redis_url(url):
        return False

    def on_failure(sender=None, **_kwargs) -> None:
        if sender is not None and getattr(sender, "app", app) is app:
            record_task_failure(url, sender.name)

    task_failure.connect(on_failure, weak=False, dispatch_uid=f"wattledger-task-failures-{id(app)}")
    return True


class SpoolCollector(Collector):
    """The sampler's spool, counted at scrape time (all per node):
    wattledger_sampler_spool_depth (not sent yet), wattledger_sampler_unconfirmed_batches (sent,
    waiting for the ledger's confirmation), wattledger_sampler_rejected_batches (set aside)."""

    FAMILIES = (
        ("wattledger_sampler_spool_depth", "Batches waiting in the sampler's on-disk spool for the broker.",
         lambda spool: spool.depth()),
        ("wattledger_sampler_unconfirmed_batches", "Batches sent and kept in the spool until the ledger "
         "confirms them.", lambda spool: len(spool.awaiting())),
        ("wattledger_sampler_rejected_batches", "Batches the ledger rejected as malformed, kept in the "
         "spool's rejected/ folder for an operator.", lambda spool: spool.rejected()),
    )

    def __init__(self, spool: Spool, node: str) -> None:
        self.spool, self.node = spool, node

    def collect(self):
        for name, help_text, count in self.FAMILIES:
            family = GaugeMetricFamily(name, help_text, labels=["node"])
            family.add_metric([self.node], count(self.spool))
            yield family


def start_sampler_metrics(spool: Spool, node: str, port: int, addr: str = "0.0.0.0"):
    """Serve the sampler's metrics on http://addr:port/metrics from a daemon thread; returns the
    server (`.shutdown()` stops it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpoolCollector(spool, node))
    server, _thread = start_http_server(port, addr, registry=registry)
    log.info("sampler metrics on http://%s:%d/metrics", addr, port)
    return server
