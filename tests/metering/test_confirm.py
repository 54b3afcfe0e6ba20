"""Shipping with confirmation: a sent batch stays in the spool's `sent/` until the ledger confirms
it, goes to `rejected/` when the ledger refuses it, and is sent again when no answer comes."""

from __future__ import annotations

import json
import logging
import threading

import httpx
import pytest

from accounting.clock import FakeClock
from accounting.metering.loop import run_sampler
from accounting.metering.sampler import Delivery
from accounting.metering.spool import Shipment, Spool
from tests.api.test_metrics import promtool_check, scrape, value
from workers.metrics import start_sampler_metrics
from workers.processes import free_port

from .test_sampler import T0_US, ScriptedBackend, assert_contiguous, energy_by_gpu, intervals_of, make_sampler, run

RESEND_S = 60.0


class FakeLedger:
    """A transport that hands out receipts and answers for them the way the ledger would."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, dict]] = []  # (receipt, batch), every send including re-sends
        self.answers: dict[str, Delivery] = {}  # receipt → what `confirm` says; absent: waiting
        self.down = False

    def send(self, batch: dict) -> str:
        if self.down:
            raise ConnectionError("broker unreachable")
        receipt = f"task-{len(self.sends) + 1}"
        self.sends.append((receipt, batch))
        return receipt

    def confirm(self, receipt: str) -> Delivery:
        if self.down:
            raise ConnectionError("result backend unreachable")
        return self.answers.get(receipt, Delivery.waiting)

    def ingest_all(self) -> None:
        """The ledger takes every batch it was sent."""
        for receipt, _ in self.sends:
            self.answers.setdefault(receipt, Delivery.confirmed)

    def seqs(self) -> list[int]:
        return [batch["seq"] for _, batch in self.sends]


def spool_of(sampler) -> Spool:
    return sampler.spool


def flushed_batches(sampler, backend, n: int) -> None:
    for _ in range(n):
        run(sampler, backend, 5)
        sampler.flush()


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(FakeClock(T0_US))


def ship(sampler, ledger) -> int:
    return sampler.ship(ledger.send, confirm=ledger.confirm, resend_after_s=RESEND_S)


def test_a_sent_batch_waits_in_sent_until_confirmed(backend, tmp_path, ledger):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 2)
    assert ship(sampler, ledger) == 2
    spool = spool_of(sampler)
    assert spool.pending() == [] and spool.depth() == 0
    assert [s.seq for s in spool.awaiting()] == [1, 2]
    receipt = json.loads((tmp_path / "sent" / "batch-000000000001.receipt.json").read_text())
    assert receipt == {"seq": 1, "receipt": "task-1", "sent_us": backend.clock.now_us(), "sends": 1}
    assert spool.load(1, sent=True) == ledger.sends[0][1]

    ledger.answers["task-1"] = Delivery.confirmed
    assert ship(sampler, ledger) == 0
    assert [s.seq for s in spool.awaiting()] == [2]
    assert sorted(p.name for p in (tmp_path / "sent").iterdir()) == [
        "batch-000000000002.json", "batch-000000000002.receipt.json"]
    ledger.answers["task-2"] = Delivery.confirmed
    ship(sampler, ledger)
    assert spool.awaiting() == [] and list((tmp_path / "sent").iterdir()) == []
    assert ledger.seqs() == [1, 2]  # nothing sent twice


def test_an_unconfirmed_batch_is_sent_again_once_overdue(backend, tmp_path, ledger, caplog):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 1)
    ship(sampler, ledger)
    sent_us = backend.clock.now_us()
    backend.advance(RESEND_S - 1)
    assert ship(sampler, ledger) == 0  # not overdue yet
    backend.advance(1)
    with caplog.at_level(logging.WARNING):
        assert ship(sampler, ledger) == 1
    assert ledger.seqs() == [1, 1]
    assert ledger.sends[0][1] == ledger.sends[1][1]  # the very same batch
    assert spool_of(sampler).awaiting() == [Shipment(1, "task-2", sent_us + int(RESEND_S * 1e6), 2)]
    assert any("re-sent as task-2" in r.getMessage() for r in caplog.records)
    # The first send's answer no longer matters: only the latest receipt is asked about.
    ledger.answers["task-1"] = Delivery.confirmed
    ship(sampler, ledger)
    assert [s.seq for s in spool_of(sampler).awaiting()] == [1]
    ledger.answers["task-2"] = Delivery.confirmed
    ship(sampler, ledger)
    assert spool_of(sampler).awaiting() == []


def test_a_rejected_batch_goes_to_rejected_with_an_error_and_is_never_resent(backend, tmp_path, ledger, caplog):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 2)
    ship(sampler, ledger)
    batch_1 = ledger.sends[0][1]
    ledger.answers.update({"task-1": Delivery.rejected, "task-2": Delivery.confirmed})
    with caplog.at_level(logging.ERROR):
        ship(sampler, ledger)
    assert spool_of(sampler).awaiting() == []
    assert sorted(p.name for p in (tmp_path / "rejected").iterdir()) == ["batch-000000000001.json"]
    assert json.loads((tmp_path / "rejected" / "batch-000000000001.json").read_text()) == batch_1
    assert spool_of(sampler).rejected() == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "REJECTED" in record.getMessage() and "rejected/batch-000000000001.json" in record.getMessage()
    backend.advance(10 * RESEND_S)
    ship(sampler, ledger)
    assert ledger.seqs() == [1, 2]


def test_an_unreachable_ledger_keeps_everything_for_the_next_round(backend, tmp_path, ledger, caplog):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 2)
    ship(sampler, ledger)
    ledger.answers["task-1"] = Delivery.confirmed
    ledger.down = True
    backend.advance(2 * RESEND_S)
    flushed_batches(sampler, backend, 1)
    with caplog.at_level(logging.WARNING):
        assert ship(sampler, ledger) == 0
    spool = spool_of(sampler)
    assert [s.seq for s in spool.awaiting()] == [1, 2] and spool.pending() == [3]
    assert any("cannot check sent batches" in r.getMessage() for r in caplog.records)
    ledger.down = False
    assert ship(sampler, ledger) == 2  # batch 2 re-sent (overdue), batch 3 sent
    assert ledger.seqs() == [1, 2, 2, 3]
    assert [s.seq for s in spool.awaiting()] == [2, 3]


def test_a_crash_between_receipt_and_move_sends_the_batch_again(backend, tmp_path, ledger, monkeypatch):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 1)
    real_replace = __import__("os").replace

    def crash_on_move(src, dst):
        if str(dst).endswith("sent/batch-000000000001.json"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", crash_on_move)
    with pytest.raises(OSError, match="power cut"):
        ship(sampler, ledger)
    monkeypatch.undo()
    assert (tmp_path / "sent" / "batch-000000000001.receipt.json").exists()
    restarted = make_sampler(backend, tmp_path)  # drops the receipt of a batch that never moved
    assert restarted.spool.pending() == [1]
    assert not (tmp_path / "sent" / "batch-000000000001.receipt.json").exists()
    assert ship(restarted, ledger) == 1
    assert ledger.seqs() == [1, 1]  # sent again: harmless, the ledger counts a (node, seq) once
    assert restarted.spool.awaiting() == [Shipment(1, "task-2", backend.clock.now_us(), 1)]


def test_a_restarted_sampler_settles_what_its_predecessor_sent(backend, tmp_path, ledger):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 2)
    ship(sampler, ledger)
    (tmp_path / "sent" / "batch-000000000002.receipt.json").unlink()  # lost receipt: due at once
    (tmp_path / "sent" / "batch-000000000009.receipt.json").write_text("{}")  # orphan: dropped
    restarted = make_sampler(backend, tmp_path)
    assert not (tmp_path / "sent" / "batch-000000000009.receipt.json").exists()
    assert restarted.next_seq == 3
    ledger.answers["task-1"] = Delivery.confirmed
    assert ship(restarted, ledger) == 1
    assert ledger.seqs() == [1, 2, 2]
    assert [s.seq for s in restarted.spool.awaiting()] == [2]


def test_without_confirm_a_batch_is_removed_once_sent_as_before(backend, tmp_path, ledger):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    flushed_batches(sampler, backend, 2)
    assert sampler.ship(ledger.send) == 2
    assert sampler.spool.pending() == [] and sampler.spool.awaiting() == []
    assert not (tmp_path / "sent").exists()


def test_the_loop_loses_no_interval_across_lost_sends(backend, tmp_path, ledger):
    """Every third send is lost by the transport; with confirmation and re-sends the ledger
    still ends with every interval exactly once."""
    sampler = make_sampler(backend, tmp_path)
    stop, ticks = threading.Event(), []
    ingested: dict[int, dict] = {}

    def confirm(receipt: str) -> Delivery:
        number = int(receipt.split("-")[1])
        if number % 3 == 0:
            return Delivery.waiting  # this message never reached a worker
        batch = ledger.sends[number - 1][1]
        ingested.setdefault(batch["seq"], batch)  # a duplicate counts once
        return Delivery.confirmed

    def on_tick(_readings: int) -> None:
        ticks.append(1)
        if len(ticks) >= 400:
            stop.set()

    run_sampler(sampler, send=ledger.send, confirm=confirm, resend_after_s=25, sample_interval_s=1,
                flush_interval_s=10, stop=stop, sleep=backend.advance, on_tick=on_tick)
    true_mj = dict(backend.true_mj)  # through the last sample
    backend.advance(30)  # the last batches become overdue; two more rounds settle them
    for _ in range(3):
        backend.advance(30)
        sampler.ship(ledger.send, confirm=confirm, resend_after_s=25)
    assert sampler.spool.awaiting() == [] and sampler.spool.pending() == []
    assert sorted(ingested) == list(range(1, sampler.next_seq))
    assert len(ledger.sends) > len(ingested)  # some were sent again
    intervals = intervals_of(ingested[s] for s in sorted(ingested))
    assert_contiguous(intervals)
    assert energy_by_gpu(intervals) == true_mj


def test_the_sampler_metrics_show_unconfirmed_and_rejected_batches(tmp_path):
    spool = Spool(tmp_path / "spool")
    for seq in range(1, 5):
        spool.put({"seq": seq, "node": "node-1"})
    for seq in (1, 2, 3):
        spool.mark_sent(seq, receipt=f"t{seq}", sent_us=0)
    spool.reject(3)
    port = free_port()
    server = start_sampler_metrics(spool, "node-1", port, addr="127.0.0.1")
    try:
        text = scrape(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        assert value(text, "wattledger_sampler_spool_depth", node="node-1") == 1
        assert value(text, "wattledger_sampler_unconfirmed_batches", node="node-1") == 2
        assert value(text, "wattledger_sampler_rejected_batches", node="node-1") == 1
        promtool_check(text)
    finally:
        server.shutdown()
        server.server_close()


def test_the_celery_confirmer_reads_the_ingest_result_from_redis():
    """batch_confirmer on a real Redis: SUCCESS confirms, a BatchRejected failure rejects, any other
    failure or no result yet waits; an unreachable Redis raises (the sampler keeps everything)."""
    from celery import states

    from accounting.config import Settings
    from tests.conftest import REDIS_URL
    from workers.celery_app import make_celery
    from workers.processes import batch_confirmer
    from workers.tasks.ledger import BatchRejected

    app = make_celery(Settings(broker_url=REDIS_URL))
    confirm = batch_confirmer(app)
    ids = {name: f"confirm-test-{name}-{free_port()}" for name in ("done", "rejected", "failed", "retrying")}
    try:
        app.backend.mark_as_done(ids["done"], {"seq": 1, "duplicate": False})
        app.backend.mark_as_failure(ids["rejected"], BatchRejected("batch n/1: intervals: negative energy"))
        app.backend.mark_as_failure(ids["failed"], RuntimeError("retries exhausted"))
        app.backend.store_result(ids["retrying"], None, states.RETRY)
        assert confirm(ids["done"]) is Delivery.confirmed
        assert confirm(ids["rejected"]) is Delivery.rejected
        assert confirm(ids["failed"]) is Delivery.waiting
        assert confirm(ids["retrying"]) is Delivery.waiting
        assert confirm("confirm-test-never-sent") is Delivery.waiting
    finally:
        for task_id in ids.values():
            app.backend.forget(task_id)
    down = batch_confirmer(make_celery(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")))
    with pytest.raises(Exception, match="(?i)connect"):
        down("any-task")
