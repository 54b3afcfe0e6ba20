"""A worker SIGKILLed during ingest, then restarted: no batch lost, none counted twice."""

from __future__ import annotations

import os
import signal
import time

import pytest
import sqlalchemy as sa

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Training
from accounting.ledger.models import IngestedBatch, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from tests.conftest import T0_US
from tests.integration.conftest import ingested, wait_until
from workers.celery_app import make_celery
from workers.processes import batch_sender

pytestmark = pytest.mark.integration

BATCHES = 12
BATCH_S = 900  # 8 GPUs × 900 readings: a batch takes the worker a noticeable while


def test_sigkill_mid_ingest_loses_nothing_and_doubles_nothing(settings, workers, pg_engine, tmp_path):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM"] * 4 + ["A100 SXM"] * 4, clock=clock, seed=3, node="kill")
    for gpu in fleet.gpus()[:5]:
        fleet.assign(gpu.uuid, T0_US, T0_US + BATCHES * BATCH_S * US_PER_S, Training())
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node="kill-node")
    sent: list[dict] = []
    publish = batch_sender(make_celery(settings, results=False))

    def send(batch: dict) -> None:
        publish(batch)
        sent.append(batch)

    for second in range(BATCHES * BATCH_S + 1):
        clock.set(T0_US + second * US_PER_S)
        sampler.sample()
        if second and second % BATCH_S == 0:
            sampler.flush()
    assert sampler.ship(send) == BATCHES

    workers.env["WATTLEDGER_INGEST_GROUP_BATCHES"] = "2"  # a transaction of two batches at a time
    first = workers.start()
    # Kill while the second group (batches 3 and 4) is being ingested: the worker logs the group's
    # start once it holds both messages unacknowledged, and the ingest takes ~0.5 s.
    wait_until(lambda: workers.logs().count("ingesting a group of 2 batches") >= 2, 60, "the second group")
    os.killpg(first.pid, signal.SIGKILL)  # the whole worker, mid-ingest
    first.wait(10)
    busy_since = time.monotonic()
    killed_at = ingested(pg_engine)
    assert killed_at == 2, "the kill did not land during the second group; the test proves nothing"

    workers.start()
    wait_until(lambda: ingested(pg_engine) == BATCHES, 40, "every batch after the restart")
    time.sleep(max(0.0, 6 - (time.monotonic() - busy_since)))  # past the 5 s visibility timeout:
    # any redelivery of an already-ingested batch has happened by now and must change nothing

    with pg_engine.connect() as connection:
        seqs = sorted(connection.execute(sa.select(IngestedBatch.seq)).scalars())
        samples_mj = connection.execute(sa.select(sa.func.sum(Sample.energy_mj))).scalar_one()
    assert seqs == list(range(1, BATCHES + 1))
    sent_mj = sum(i["energy_mj"] for b in sent for i in b["intervals"])
    assert samples_mj == sent_mj
    from sqlmodel import Session

    with Session(pg_engine) as session:
        totals = fleet_totals(session)
        assert totals.measured_mj == sent_mj and totals.balanced
        assert conservation_errors(session) == []
    truth_j = sum(fleet.true_energy_j(g.uuid, T0_US, T0_US + BATCHES * BATCH_S * US_PER_S) for g in fleet.gpus())
    assert sent_mj / 1000 == pytest.approx(truth_j, rel=1e-6)
