"""The real `wattledger sampler` process keeps shipped batches until the ledger confirms them; one
SIGKILLed and started again settles what its predecessor left and loses no batch.

Real services: the shared Redis (broker and results) and PostgreSQL, a real `celery worker`, and
the sampler as its own process on the simulated fleet (WATTLEDGER_GPU_BACKEND=simulated).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from accounting.ledger.models import LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.spool import Spool
from tests.api.test_metrics import scrape, value
from tests.integration.conftest import energy_by_gpu, ingested_seqs, wait_until
from workers.processes import free_port, stop_process

pytestmark = pytest.mark.integration

NODE = "proc-node"


def start_sampler(env: dict[str, str], log: Path) -> subprocess.Popen:
    wattledger = Path(sys.executable).parent / "wattledger"
    with open(log, "ab") as out:
        return subprocess.Popen([str(wattledger), "sampler"], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_the_sampler_process_waits_for_confirmations_and_survives_sigkill(services, workers, pg_engine, tmp_path):
    port = free_port()
    env = {**services, "WATTLEDGER_GPU_BACKEND": "simulated", "WATTLEDGER_SIMULATED_GPUS": "2",
           "WATTLEDGER_SAMPLE_INTERVAL_S": "0.25", "WATTLEDGER_FLUSH_INTERVAL_S": "1",
           "WATTLEDGER_SPOOL_DIR": str(tmp_path / "spool"), "WATTLEDGER_NODE_NAME": NODE,
           "WATTLEDGER_SAMPLER_METRICS_PORT": str(port), "WATTLEDGER_RESEND_AFTER_S": "30"}
    workers.start()
    log = tmp_path / "sampler.log"
    spool = Spool(tmp_path / "spool")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

    def unconfirmed() -> float:
        try:
            return value(scrape(http), "wattledger_sampler_unconfirmed_batches", node=NODE)
        except httpx.HTTPError:
            return -1

    first = start_sampler(env, log)
    try:
        wait_until(lambda: len(ingested_seqs(pg_engine, NODE)) >= 4, 40, "four batches from the sampler")
        # Confirmed batches are gone from the spool; only the newest wait for their confirmation.
        wait_until(lambda: 0 <= unconfirmed() <= 2, 10, "the sampler to report its unconfirmed batches")
        os.killpg(first.pid, signal.SIGKILL)  # no last flush, no clean-up
        first.wait(10)
        left = [s.seq for s in spool.awaiting()]
        # A spool without state starts at now in µs, above any seq an earlier spool of the node sent.
        first_seq = ingested_seqs(pg_engine, NODE)[0]
        assert first_seq > 10**15
        second = start_sampler(env, log)
        try:
            # The new process settles the old one's sent batches, then ships on.
            wait_until(lambda: not set(left) & {s.seq for s in spool.awaiting()}
                       and len(ingested_seqs(pg_engine, NODE)) >= max(left, default=first_seq) - first_seq + 4, 40,
                       "the restarted sampler to settle and ship")
        finally:
            second.send_signal(signal.SIGTERM)  # a clean stop: flush and ship once more
            assert second.wait(20) == 0
    finally:
        stop_process(first)
    state = spool.read_state()
    wait_until(lambda: ingested_seqs(pg_engine, NODE) == list(range(first_seq, state["next_seq"])), 20,
               "every batch, the one shipped on stop included")

    text = log.read_text()
    print(f"left in sent/ by the killed sampler: {left}; {state['next_seq'] - first_seq} batches in all")
    assert text.count("shipped batches wait in the spool for the ledger's confirmation") == 2
    assert spool.pending() == [] and spool.rejected() == 0
    samples = energy_by_gpu(pg_engine, Sample)
    assert samples == energy_by_gpu(pg_engine, LedgerEntry) and all(mj > 0 for mj in samples.values())
    with Session(pg_engine) as session:
        assert fleet_totals(session).balanced and conservation_errors(session) == []
