"""A message the broker loses (kombu's Redis transport, a worker killed between BRPOP and its
unacked bookkeeping): the sampler keeps the batch until the ledger confirms it, sends it again
once overdue, and the ledger ends complete.

The loss is made deterministic by deleting the published message from the Redis queue before any
worker takes it. Real services: the shared Redis (broker and results) and PostgreSQL, a real
`celery worker`; the sampler runs here on a fake clock so "overdue" is exact.
"""

from __future__ import annotations

import json

import pytest
import redis
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Inference
from accounting.ledger.models import LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from tests.conftest import REDIS_URL, T0_US
from tests.integration.conftest import energy_by_gpu, ingested_seqs, shipped_by_gpu, wait_until
from workers.celery_app import make_celery
from workers.processes import batch_confirmer, batch_sender
from workers.queues import QueueName

pytestmark = pytest.mark.integration

NODE = "lost-node"
RESEND_S = 300.0


def test_a_lost_message_is_sent_again_and_the_ledger_ends_complete(settings, workers, pg_engine, tmp_path, caplog):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM", "H200 SXM"], clock=clock, seed=6, node="lost")
    for gpu in fleet.gpus():
        fleet.assign(gpu.uuid, T0_US, T0_US + 600 * US_PER_S, Inference(mean_load=0.6))
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node=NODE)
    publish = batch_sender(make_celery(settings, results=False))
    confirm = batch_confirmer(make_celery(settings))
    shipped: dict[int, dict] = {}
    sends: list[int] = []

    def send(batch: dict) -> str:
        sends.append(batch["seq"])
        shipped.setdefault(batch["seq"], batch)
        return publish(batch)

    def ship() -> int:
        return sampler.ship(send, confirm=confirm, resend_after_s=RESEND_S)

    for second in range(181):
        clock.set(T0_US + second * US_PER_S)
        sampler.sample()
        if second and second % 60 == 0:
            sampler.flush()
    assert ship() == 3
    lost = sampler.spool.awaiting()[1]
    assert lost.seq == 2

    client = redis.Redis.from_url(REDIS_URL)
    [raw] = [m for m in client.lrange(QueueName.ingest.value, 0, -1) if json.loads(m)["headers"]["id"] == lost.receipt]
    assert client.lrem(QueueName.ingest.value, 1, raw) == 1  # the broker lost it; nobody will redeliver it

    workers.start()
    wait_until(lambda: ingested_seqs(pg_engine, NODE) == [1, 3], 30, "the two surviving batches")
    wait_until(lambda: ship() >= 0 and [s.seq for s in sampler.spool.awaiting()] == [2], 30,
               "batches 1 and 3 to be confirmed")
    assert ship() == 0  # not overdue yet: nothing is sent again early

    clock.advance(RESEND_S)
    caplog.set_level("WARNING")
    assert ship() == 1
    assert sends == [1, 2, 3, 2]
    wait_until(lambda: ship() >= 0 and not sampler.spool.awaiting(), 30, "the re-sent batch to be confirmed")
    assert any("batch 2 had no confirmation 300 s after send 1" in r.getMessage() for r in caplog.records)

    assert ingested_seqs(pg_engine, NODE) == [1, 2, 3]
    expected = shipped_by_gpu(shipped)
    assert energy_by_gpu(pg_engine, Sample) == expected == energy_by_gpu(pg_engine, LedgerEntry)
    print(f"lost task {lost.receipt}; sends {sends}; ledger per GPU (mJ): {expected}")
    with Session(pg_engine) as session:
        totals = fleet_totals(session)
        assert totals.balanced and totals.measured_mj == sum(expected.values())
        assert conservation_errors(session) == []


def test_a_batch_the_ledger_rejects_is_set_aside_not_sent_again(settings, workers, pg_engine, tmp_path, caplog):
    spool = Spool(tmp_path / "spool")
    spool.put({"version": 1, "node": NODE, "seq": 1, "created_us": T0_US, "gpus": [], "events": [],
               "intervals": [{"uuid": "GPU-x", "start_us": T0_US, "end_us": T0_US - 1, "energy_mj": -5}]})
    sampler = Sampler(backend=SimulatedFleet.build(["H100 SXM"], clock=FakeClock(T0_US)), spool=spool,
                      clock=FakeClock(T0_US), node=NODE)
    publish = batch_sender(make_celery(settings, results=False))
    confirm = batch_confirmer(make_celery(settings))
    sends: list[int] = []

    def ship() -> int:
        return sampler.ship(lambda b: sends.append(b["seq"]) or publish(b), confirm=confirm, resend_after_s=RESEND_S)

    assert ship() == 1
    workers.start()
    caplog.set_level("ERROR")
    wait_until(lambda: ship() >= 0 and spool.rejected() == 1, 30, "the ledger's rejection")
    assert spool.awaiting() == [] and spool.pending() == []
    assert (tmp_path / "spool" / "rejected" / "batch-000000000001.json").is_file()
    assert any("REJECTED" in r.getMessage() for r in caplog.records)
    sampler.clock.advance(10 * RESEND_S)
    ship()
    assert sends == [1]  # never sent again
    assert "rejected batch lost-node/1" in workers.logs() and "BatchRejected" in workers.logs()
    assert ingested_seqs(pg_engine, NODE) == []
