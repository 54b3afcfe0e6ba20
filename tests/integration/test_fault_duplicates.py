"""The same batch delivered more than once: published twice through the broker to a real worker,
then redelivered by the broker. The ledger counts it once.

Real services: the shared Redis (broker and results) and PostgreSQL, a real `celery worker`.
"""

from __future__ import annotations

import json
import re

import pytest
import redis
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Training
from accounting.ledger.models import LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.sampler import Delivery, Sampler
from accounting.metering.spool import Spool
from tests.conftest import REDIS_URL, T0_US
from tests.integration.conftest import energy_by_gpu, ingested_seqs, shipped_by_gpu, wait_until
from workers.celery_app import make_celery
from workers.processes import batch_confirmer, batch_sender
from workers.queues import QueueName

pytestmark = pytest.mark.integration

NODE = "dup-node"


def two_batches(tmp_path) -> list[dict]:
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM", "A100 SXM"], clock=clock, seed=4, node="dup")
    fleet.assign(fleet.gpus()[0].uuid, T0_US, T0_US + 600 * US_PER_S, Training())
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node=NODE)
    sent: list[dict] = []
    for second in range(121):
        clock.set(T0_US + second * US_PER_S)
        sampler.sample()
        if second in (60, 120):
            sampler.flush()
    sampler.ship(sent.append)
    return sent


def queued(client: redis.Redis) -> dict[str, bytes]:
    """The ingest queue's raw messages by task id."""
    return {json.loads(raw)["headers"]["id"]: raw for raw in client.lrange(QueueName.ingest.value, 0, -1)}


def test_a_batch_published_twice_and_redelivered_is_counted_once(settings, workers, pg_engine, tmp_path):
    batch_1, batch_2 = two_batches(tmp_path)
    publish = batch_sender(make_celery(settings, results=False))
    app = make_celery(settings)
    confirm = batch_confirmer(app)
    client = redis.Redis.from_url(REDIS_URL)

    first, second, other = publish(batch_1), publish(batch_1), publish(batch_2)
    raw_first = queued(client)[first]  # kept to give back below, as the broker would
    workers.start()
    wait_until(lambda: all(confirm(t) is Delivery.confirmed for t in (first, second, other)), 30,
               "the three deliveries to be ingested")
    assert app.AsyncResult(second).result["duplicate"] is True
    assert app.AsyncResult(other).result["duplicate"] is False

    # A redelivery: the first message comes back, marked the way kombu's Redis transport restores
    # an unacknowledged message (redelivered, pushed back onto its queue).
    message = json.loads(raw_first)
    message["headers"]["redelivered"] = True
    message["properties"]["delivery_info"]["redelivered"] = True
    client.rpush(QueueName.ingest.value, json.dumps(message))
    wait_until(lambda: workers.logs().count(f"ledger.ingest_batch[{first}] succeeded") == 2, 30,
               "the redelivered message to be ingested")
    logs = workers.logs()
    # Its second run found the batch there (Celery keeps the first SUCCESS result: read the log).
    runs = re.findall(rf"ledger\.ingest_batch\[{first}\] succeeded .*'duplicate': (True|False)", logs)
    assert runs == ["False", "True"]
    assert logs.count(f"batch {NODE}/1 already ingested; ignored") == 2
    assert ingested_seqs(pg_engine, NODE) == [1, 2]
    shipped = shipped_by_gpu({1: batch_1, 2: batch_2})
    assert energy_by_gpu(pg_engine, Sample) == shipped == energy_by_gpu(pg_engine, LedgerEntry)
    print(f"deliveries: 3 of batch 1, 1 of batch 2; ledger per GPU (mJ): {shipped}")
    with Session(pg_engine) as session:
        totals = fleet_totals(session)
        assert totals.balanced and totals.measured_mj == sum(shipped.values())
        assert conservation_errors(session) == []
