"""PostgreSQL restarted during ingest: the worker retries its group of batches with backoff and every
batch ends in the ledger exactly once.

Real services: a PostgreSQL cluster of the test's own (stopped with `pg_ctl stop -m fast`, which
ends the worker's session mid-transaction, then started again), the shared Redis as broker, and a
real `celery worker` process.
"""

from __future__ import annotations

import re
import time

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Training
from accounting.ledger.models import LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from tests.conftest import REDIS_URL, T0_US
from tests.integration.conftest import energy_by_gpu, ingested, ingested_seqs, service_env, settings_of, wait_until
from workers.celery_app import make_celery
from workers.processes import batch_sender

pytestmark = pytest.mark.integration

NODE = "pg-node"
BATCHES = 10
BATCH_S = 300  # 8 GPUs × 300 readings: each ingest holds a transaction for a while
RETRY = re.compile(r"ingest of (\d+) batches failed \(OperationalError: .*?\); retry (\d+) in ([0-9.]+) s")


def spool_batches(tmp_path) -> list[dict]:
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM"] * 4 + ["A100 SXM"] * 4, clock=clock, seed=5, node="pg")
    for gpu in fleet.gpus()[:6]:
        fleet.assign(gpu.uuid, T0_US, T0_US + BATCHES * BATCH_S * US_PER_S, Training())
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node=NODE)
    sent: list[dict] = []
    for second in range(BATCHES * BATCH_S + 1):
        clock.set(T0_US + second * US_PER_S)
        sampler.sample()
        if second and second % BATCH_S == 0:
            sampler.flush()
    assert sampler.ship(sent.append) == BATCHES
    return sent


def test_postgres_restart_during_ingest_retries_with_backoff_and_counts_once(
    services, pg_cluster, make_workers, tmp_path
):
    cluster, engine = pg_cluster
    env = service_env(tmp_path, database_url=cluster.url, broker_url=REDIS_URL)
    batches = spool_batches(tmp_path)
    publish = batch_sender(make_celery(settings_of(env), results=False))
    task_ids = [publish(batch) for batch in batches]
    workers = make_workers({**env, "WATTLEDGER_INGEST_GROUP_BATCHES": "2"})  # transactions of two batches
    workers.start()

    wait_until(lambda: ingested(engine) >= 2, 30, "two batches before the restart")
    cluster.stop("fast")  # ends the worker's session, mid-ingest if it is in one
    engine.dispose()
    # Down for three retries (each waits a random 0..2^n s; past half the 5 s visibility timeout
    # the group goes back to the queue and is taken again).
    wait_until(lambda: len(RETRY.findall(workers.logs())) >= 3, 45, "three retries while PostgreSQL is down")
    cluster.start()
    wait_until(lambda: ingested(engine) == BATCHES, 60, "every batch after the restart")

    logs = workers.logs()
    retries = RETRY.findall(logs)
    waits = [float(s) for _, _, s in retries]
    print(f"{len(retries)} retries, waits {waits} s; {logs.count('] succeeded')} ingests succeeded")
    assert all(w <= min(60, 2 ** int(n)) for (_, n, _), w in zip(retries, waits, strict=True))  # backoff
    for task_id in task_ids:  # every batch's task succeeded in the end, once
        assert len(re.findall(rf"ledger\.ingest_batch\[{task_id}\] succeeded", logs)) == 1

    assert ingested_seqs(engine, NODE) == list(range(1, BATCHES + 1))
    sent_mj = sum(i["energy_mj"] for b in batches for i in b["intervals"])
    samples = energy_by_gpu(engine, Sample)
    assert sum(samples.values()) == sent_mj  # nothing lost, nothing twice
    assert energy_by_gpu(engine, LedgerEntry) == samples
    with engine.connect() as connection:
        rows = connection.execute(sa.select(sa.func.count()).select_from(Sample)).scalar_one()
    assert rows == sum(len(b["intervals"]) for b in batches)
    with Session(engine) as session:
        totals = fleet_totals(session)
        assert totals.balanced and totals.measured_mj == sent_mj
        assert conservation_errors(session) == []


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_worker_stopped_while_postgres_is_down_gives_its_batches_back(
    services, pg_cluster, make_workers, tmp_path, pool
):
    """A warm shutdown while the worker waits out an outage: it stops within seconds, having put
    its group back on the queue (a prefork child learns of the shutdown from the main process),
    and the next worker ingests every batch once; the sampler's receipts are confirmed."""
    cluster, engine = pg_cluster
    env = service_env(tmp_path, database_url=cluster.url, broker_url=REDIS_URL)
    batches = spool_batches(tmp_path)[:4]
    task_ids = [batch_sender(make_celery(settings_of(env), results=False))(b) for b in batches]
    cluster.stop("fast")
    engine.dispose()
    workers = make_workers(env)
    first = workers.start(pool)
    wait_until(lambda: RETRY.search(workers.logs()), 30, "the group's first retry")
    stopping_at = time.monotonic()
    first.terminate()  # SIGTERM: Celery's warm shutdown
    first.wait(20)
    stopped_s = time.monotonic() - stopping_at
    logs = workers.logs()
    assert logs.count("goes back to the queue: the worker is stopping") == len(batches), logs[-2000:]
    assert stopped_s < 10, f"the worker took {stopped_s:.1f} s to stop"

    cluster.start()
    workers.start()
    wait_until(lambda: ingested(engine) == len(batches), 60, "every batch, by the next worker")
    app = make_celery(settings_of(env))
    for task_id in task_ids:  # the sampler's receipts are confirmed
        assert app.AsyncResult(task_id).result["duplicate"] is False
    assert sum(energy_by_gpu(engine, LedgerEntry).values()) == sum(
        i["energy_mj"] for b in batches for i in b["intervals"])
