"""Redis stopped for 30 s while the sampler runs: the spool grows, then drains, and the ledger ends
exactly equal to the GPUs' energy counters.

Real services: a Redis server of the test's own (stopped with SIGTERM and no persistence, so it
comes back empty, as after a crash), a real `celery worker` process, the shared PostgreSQL. The
sampler loop runs on a thread here, on the real clock, so the test can read the simulated fleet's
counters at the sampler's first and last readings.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlmodel import Session

from accounting.clock import US_PER_S, SystemClock
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Inference, Training
from accounting.ledger.models import LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.loop import run_sampler
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from tests.api.test_metrics import scrape, value
from tests.conftest import PG_URL
from tests.integration.conftest import (
    energy_by_gpu,
    ingested_seqs,
    service_env,
    settings_of,
    shipped_by_gpu,
    wait_until,
)
from workers.celery_app import make_celery
from workers.metrics import start_sampler_metrics
from workers.processes import batch_confirmer, batch_sender, free_port

pytestmark = pytest.mark.integration

NODE = "outage-node"
OUTAGE_S = 30
SAMPLE_S, FLUSH_S = 0.5, 2.0
RESEND_S = 12.0  # > the 5 s visibility timeout: a batch Redis still holds is not sent twice


def test_redis_down_30_s_spool_grows_then_drains_and_the_ledger_equals_the_counters(
    services, redis_server, make_workers, pg_engine, tmp_path, caplog
):
    env = service_env(tmp_path, database_url=PG_URL, broker_url=redis_server.url())
    workers = make_workers(env)
    workers.start()
    publish = batch_sender(make_celery(settings_of(env), results=False))
    confirm = batch_confirmer(make_celery(settings_of(env)))
    assert confirm is not None  # Redis keeps results: the sampler waits for confirmations

    clock = SystemClock()
    fleet = SimulatedFleet.build(["H100 SXM", "A100 SXM", "H200 SXM", "H100 SXM"], clock=clock, seed=8, node="out")
    now_us = clock.now_us()
    for gpu, workload in zip(fleet.gpus(), [Training(), Inference(mean_load=0.5), Training(), None], strict=True):
        if workload is not None:
            fleet.assign(gpu.uuid, now_us, now_us + 600 * US_PER_S, workload)
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node=NODE)
    shipped: dict[int, dict] = {}
    first_mj: dict[str, int] = {}

    def send(batch: dict) -> str:
        receipt = publish(batch)
        shipped.setdefault(batch["seq"], batch)
        return receipt

    def on_tick(_readings: int) -> None:
        if not first_mj:  # the sampler's first reading of each GPU: where the ledger starts
            first_mj.update({g.uuid: sampler.baseline(g.uuid).energy_mj for g in fleet.gpus()})

    stop = threading.Event()
    loop = threading.Thread(target=run_sampler, name="sampler", kwargs=dict(
        sampler=sampler, send=send, confirm=confirm, resend_after_s=RESEND_S, sample_interval_s=SAMPLE_S,
        flush_interval_s=FLUSH_S, stop=stop, sleep=stop.wait, on_tick=on_tick))
    port = free_port()
    metrics = start_sampler_metrics(sampler.spool, NODE, port, addr="127.0.0.1")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def gauge(name: str) -> float:
        return value(scrape(http), name, node=NODE)

    caplog.set_level("WARNING")
    loop.start()
    try:
        wait_until(lambda: len(ingested_seqs(pg_engine, NODE)) >= 2, 30, "two batches before the outage")

        redis_server.stop()
        down_at = time.monotonic()
        depths = []
        while time.monotonic() - down_at < OUTAGE_S:
            depths.append(gauge("wattledger_sampler_spool_depth"))
            stop.wait(1)
        redis_server.start()  # empty: whatever the broker held is gone
        back_at = time.monotonic()

        wait_until(lambda: gauge("wattledger_sampler_spool_depth") == 0
                   and gauge("wattledger_sampler_unconfirmed_batches") <= 1, 45, "the spool to drain")
        drained_s = time.monotonic() - back_at
    finally:
        stop.set()
        loop.join(30)
        metrics.shutdown()
        metrics.server_close()
    assert not loop.is_alive()
    # The loop's last flush went out on stop; settle it like the next round would.
    wait_until(lambda: sampler.ship(send, confirm=confirm, resend_after_s=RESEND_S) >= 0
               and not sampler.spool.awaiting(), 30, "the last batch to be confirmed")

    print(f"spool depth while Redis was down: {depths}; drained {drained_s:.1f} s after it came back")
    assert max(depths) >= OUTAGE_S / FLUSH_S - 3, depths  # every flush during the outage stayed on disk
    assert depths == sorted(depths)  # it only grew
    assert sampler.spool.depth() == 0 and sampler.spool.rejected() == 0
    resent = [r.getMessage() for r in caplog.records if "re-sent as" in r.getMessage()]
    # The batch awaiting confirmation when Redis died lost its message or result with Redis.
    assert resent, "no batch was re-sent: the outage did not hit a batch in flight"

    seqs = ingested_seqs(pg_engine, NODE)
    assert seqs == list(range(1, sampler.next_seq)) == sorted(shipped)
    last_mj = {g.uuid: sampler.baseline(g.uuid).energy_mj for g in fleet.gpus()}
    counters_mj = {uuid: last_mj[uuid] - first_mj[uuid] for uuid in first_mj}
    ledger_mj = energy_by_gpu(pg_engine, LedgerEntry)
    print(f"per GPU, counter delta = ledger (mJ): {counters_mj}; resent: {resent}")
    assert ledger_mj == counters_mj  # to the millijoule, per GPU
    assert energy_by_gpu(pg_engine, Sample) == counters_mj == shipped_by_gpu(shipped)
    with Session(pg_engine) as session:
        totals = fleet_totals(session)
        assert totals.balanced and totals.measured_mj == sum(counters_mj.values())
        assert conservation_errors(session) == []
    logs = workers.logs()
    assert "Connection to broker lost" in logs or "Cannot connect to redis" in logs.lower() or "Error 111" in logs
