"""A worker SIGKILLed during ingest, then restarted: no batch lost, none counted twice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

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


def fleet_batches(tmp_path):
    """The node's batches (BATCHES of BATCH_S s on 8 GPUs, 5 of them training) and its fleet."""
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM"] * 4 + ["A100 SXM"] * 4, clock=clock, seed=3, node="kill")
    for gpu in fleet.gpus()[:5]:
        fleet.assign(gpu.uuid, T0_US, T0_US + BATCHES * BATCH_S * US_PER_S, Training())
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node="kill-node")
    for second in range(BATCHES * BATCH_S + 1):
        clock.set(T0_US + second * US_PER_S)
        sampler.sample()
        if second and second % BATCH_S == 0:
            sampler.flush()
    sent: list[dict] = []
    assert sampler.ship(sent.append) == BATCHES
    return sent, fleet


def test_sigkill_mid_ingest_loses_nothing_and_doubles_nothing(settings, workers, pg_engine, tmp_path):
    sent, fleet = fleet_batches(tmp_path)
    publish = batch_sender(make_celery(settings, results=False))
    for batch in sent:
        publish(batch)

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


def test_a_lost_prefork_child_puts_its_group_back_at_once(services, make_workers, pg_engine, tmp_path):
    """A pool process killed mid-group (the OOM killer, say): the main process puts the group back
    on the queue as soon as the pool notices, long before the broker's visibility timeout (300 s
    here) would, and the new child ingests it; nothing lost, nothing twice."""
    from tests.conftest import PG_URL, REDIS_URL
    from tests.integration.conftest import service_env, settings_of

    env = {**service_env(tmp_path, database_url=PG_URL, broker_url=REDIS_URL, visibility_timeout_s=300),
           "WATTLEDGER_INGEST_GROUP_BATCHES": "2"}
    sent, _ = fleet_batches(tmp_path)
    publish = batch_sender(make_celery(settings_of(env), results=False))
    for batch in sent:
        publish(batch)
    workers = make_workers(env)
    main = workers.start("prefork")
    wait_until(lambda: workers.logs().count("ingesting a group of 2 batches") >= 2, 60, "the first groups")
    children = [int(p) for p in (Path(f"/proc/{main.pid}/task/{main.pid}/children").read_text().split())]
    assert children, "no pool processes"
    for child in children:
        os.kill(child, signal.SIGKILL)
    killed_at = ingested(pg_engine)
    assert killed_at < BATCHES, "the kill came after the last group; the test proves nothing"
    wait_until(lambda: ingested(pg_engine) == BATCHES, 60, "every batch, well before the visibility timeout")
    assert "all go back to the queue" in workers.logs()
    with pg_engine.connect() as connection:
        seqs = sorted(connection.execute(sa.select(IngestedBatch.seq)).scalars())
        samples_mj = connection.execute(sa.select(sa.func.sum(Sample.energy_mj))).scalar_one()
    assert seqs == list(range(1, BATCHES + 1))
    assert samples_mj == sum(i["energy_mj"] for b in sent for i in b["intervals"])
