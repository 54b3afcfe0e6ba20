"""GET /metrics: Prometheus text format, computed from the database at every scrape.

A fresh registry with one custom collector per request: no process-global metric state, so any
number of API processes answer the same. Labels are bounded by the fleet (GPU, node, site), a fixed
set (account kind) or the registered Celery task names; nothing is labelled per job, team or user,
so finished jobs add no series. Public unless WATTLEDGER_API_PUBLIC_METRICS=false; then any valid
API key may scrape it (Prometheus: `authorization: {credentials_file: …}`).
"""

from __future__ import annotations

import logging
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from accounting.config import get_settings
from accounting.metrics import TASK_FAILURES_KEY, Snapshot, snapshot

from ..auth import maybe_principal
from ..deps import ClockDep, SessionDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])

# The classic text format, which every Prometheus (Debian's included) parses; our names are all
# legacy-valid, so generate_latest's output is the same under either version.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def task_failure_store() -> str | None:
    """The Redis URL where workers count task failures (the broker), or None without Redis."""
    url = get_settings().resolved_broker_url
    return url if url.startswith(("redis://", "rediss://", "unix://")) else None


FailureStoreDep = Annotated[str | None, Depends(task_failure_store)]


def read_task_failures(url: str | None) -> dict[str, int] | None:
    if url is None:
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return {k.decode(): int(v) for k, v in client.hgetall(TASK_FAILURES_KEY).items()}
        finally:
            client.close()
    except redis.RedisError:
        log.warning("task failures unreadable from Redis; omitted from /metrics", exc_info=True)
        return None


class SnapshotCollector(Collector):
    def __init__(self, data: Snapshot, task_failures: dict[str, int] | None) -> None:
        self.data, self.task_failures = data, task_failures

    def collect(self):
        d = self.data
        power = GaugeMetricFamily("wattledger_gpu_power_watts", "GPU power of the newest ingested sample "
                                  "(its power reading, else its mean power).",
                                  labels=["gpu_uuid", "gpu_model", "node", "site"])
        for p in d.gpu_power:
            power.add_metric([p.gpu_uuid, p.gpu_model, p.node, p.site], p.watts)
        yield power

        energy = CounterMetricFamily("wattledger_gpu_energy_joules", "Energy metered on the GPU, all time "
                                     "(sum of the hourly ledger).", labels=["gpu_uuid", "gpu_model", "node"])
        for e in d.gpu_energy:
            energy.add_metric([e.gpu_uuid, e.gpu_model, e.node], e.joules)
        yield energy

        # A gauge, not a counter: a job registered late takes energy from idle, so a kind can go down.
        accounts = GaugeMetricFamily("wattledger_account_energy_joules", "Ledger energy by kind of account, all "
                                     "time; re-attribution moves energy between kinds, so a kind can decrease.",
                                     labels=["account_kind"])
        for kind, joules in d.account_energy_j.items():
            accounts.add_metric([kind], joules)
        yield accounts

        yield GaugeMetricFamily("wattledger_jobs_running", "Registered jobs started and not finished.",
                                value=d.jobs_running)

        lag = GaugeMetricFamily("wattledger_ingest_lag_seconds", "Seconds since the end of the newest "
                                "ingested sample of the node.", labels=["node"])
        batches = CounterMetricFamily("wattledger_ingested_batches", "Sampler batches taken into the ledger.",
                                      labels=["node"])
        for n in d.nodes:
            if n.lag_s is not None:
                lag.add_metric([n.node], n.lag_s)
            batches.add_metric([n.node], n.batches)
        yield lag
        yield batches

        if self.task_failures is not None:
            failures = CounterMetricFamily("wattledger_task_failures", "Celery tasks that failed for good "
                                           "(raised, no retry left).", labels=["task"])
            for task, count in sorted(self.task_failures.items()):
                failures.add_metric([task], count)
            yield failures


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, session: SessionDep, clock: ClockDep, failure_store: FailureStoreDep) -> Response:
    maybe_principal(request, session, public=request.app.state.settings.api_public_metrics)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot(session, now_us=clock.now_us()), read_task_failures(failure_store)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
