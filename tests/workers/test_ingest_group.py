"""A worker's group of batches in one transaction: a malformed batch is refused alone, a broken one
fails alone, a database outage is waited out with backoff and then the batches go back to the
queue, a concurrent ingest of the same batch is tried again. Real PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

import workers.ingest as grouping
from accounting.ledger.ingest import ingest_batches
from accounting.ledger.models import IngestedBatch
from tests.conftest import T0_US, truncate_all
from tests.factories import batch
from workers.ingest import BatchRejected, GiveBack, Retrying, ingest_group


@pytest.fixture
def db(engine):
    truncate_all(engine)
    yield engine
    truncate_all(engine)


def stored(engine) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(IngestedBatch.node, IngestedBatch.seq)).all())


def group() -> list[dict]:
    return [batch("n1", 1, "GPU-a", T0_US, 10), batch("n2", 1, "GPU-b", T0_US, 10),
            batch("n1", 2, "GPU-a", T0_US + 10 * 10**6, 10)]


def failing(times: int, error: Exception, calls: list):
    """ingest_batches that raises `error` on its first `times` calls, then ingests."""
    def ingest(session, batches, *, clock):
        calls.append([b.node for b in batches])
        if len(calls) <= times:
            raise error
        return ingest_batches(session, batches, clock=clock)
    return ingest


class FakeTime:
    """A monotonic clock that only the fake sleep moves."""

    def __init__(self) -> None:
        self.now_s, self.slept = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds

    def retrying(self, budget_s: float = 60, stopping=lambda: False) -> Retrying:
        return Retrying(budget_s=budget_s, sleep=self.sleep, stopping=stopping, now=lambda: self.now_s)


def quick() -> Retrying:
    return FakeTime().retrying()


def outage() -> OperationalError:
    return OperationalError("INSERT …", {}, Exception("server closed the connection unexpectedly"))


def test_a_group_goes_in_together_and_each_batch_reports(db, clock):
    outcomes = ingest_group(db, group(), clock=clock, retrying=quick())
    assert [(o["node"], o["seq"], o["intervals"], o["duplicate"]) for o in outcomes] == [
        ("n1", 1, 10, False), ("n2", 1, 10, False), ("n1", 2, 10, False)]
    assert stored(db) == [("n1", 1), ("n1", 2), ("n2", 1)]


def test_a_malformed_batch_is_rejected_alone(db, clock, caplog):
    raws = group()
    raws[1]["intervals"][3]["energy_mj"] = -5
    outcomes = ingest_group(db, raws, clock=clock, retrying=quick())
    assert isinstance(outcomes[1], BatchRejected) and "intervals.3.energy_mj" in str(outcomes[1])
    assert [o["seq"] for o in (outcomes[0], outcomes[2])] == [1, 2]
    assert stored(db) == [("n1", 1), ("n1", 2)]
    assert "rejected batch n2/1" in caplog.text  # the whole batch is in the log


def test_a_database_outage_is_retried_with_backoff_then_ingested(db, clock, monkeypatch, caplog):
    calls, time_ = [], FakeTime()
    monkeypatch.setattr(grouping, "ingest_batches", failing(3, outage(), calls))
    outcomes = ingest_group(db, group(), clock=clock, retrying=time_.retrying())
    assert all(isinstance(o, dict) for o in outcomes) and len(calls) == 4
    assert stored(db) == [("n1", 1), ("n1", 2), ("n2", 1)]
    retries = [r.getMessage() for r in caplog.records if "; retry" in r.getMessage()]
    assert len(retries) == 3 and all("OperationalError" in m and "server closed the connection" in m for m in retries)
    assert 0 <= time_.now_s <= 2 + 4 + 8  # full jitter under 2^attempt s
    assert all(0 < w <= 1 for w in time_.slept)  # slept in steps of at most a second (a stop is noticed)


def test_a_long_outage_gives_the_batches_back_within_the_budget(db, clock, monkeypatch):
    calls, time_ = [], FakeTime()
    monkeypatch.setattr(grouping, "ingest_batches", failing(10**6, outage(), calls))
    outcomes = ingest_group(db, group(), clock=clock, retrying=time_.retrying(budget_s=60))
    assert all(isinstance(o, GiveBack) and "retried for 60 s" in o.reason for o in outcomes)
    assert time_.now_s <= 60 and len(calls) >= 5  # waits of up to 2, 4, 8, 16 … s fit in the budget
    assert stored(db) == []


def test_the_budget_is_the_groups_not_each_batchs(db, clock, monkeypatch):
    """One at a time after a fault, an outage then does not get a fresh budget per batch."""
    calls, time_ = [], FakeTime()
    state = {"faulty": True}

    def ingest(session, batches, *, clock):
        calls.append(len(batches))
        if state["faulty"] and len(batches) > 1:
            raise ValueError("a fault of ours")  # → one at a time …
        raise outage()  # … into an outage

    monkeypatch.setattr(grouping, "ingest_batches", ingest)
    outcomes = ingest_group(db, group(), clock=clock, retrying=time_.retrying(budget_s=30))
    assert all(isinstance(o, GiveBack) for o in outcomes) and time_.now_s <= 30


def test_a_stopping_worker_gives_the_batches_back_at_once(db, clock, monkeypatch):
    calls = []
    monkeypatch.setattr(grouping, "ingest_batches", failing(10**6, outage(), calls))
    outcomes = ingest_group(db, group(), clock=clock, retrying=FakeTime().retrying(stopping=lambda: True))
    assert len(calls) == 1 and all(isinstance(o, GiveBack) and "stopping" in o.reason for o in outcomes)


def test_a_group_goes_in_as_transactions_of_about_the_readings_asked(db, clock, monkeypatch):
    calls = []
    monkeypatch.setattr(grouping, "ingest_batches", failing(0, outage(), calls))
    raws = [batch(f"n{k}", 1, f"GPU-{k}", T0_US, 10) for k in range(7)]  # 10 readings each
    outcomes = ingest_group(db, raws, clock=clock, retrying=quick(), group_readings=25)
    assert [len(c) for c in calls] == [2, 2, 2, 1] and all(isinstance(o, dict) for o in outcomes)


def test_a_batch_whose_check_fails_unexpectedly_fails_alone(db, clock, monkeypatch):
    real = grouping.parse_batch

    def parse(raw):
        if raw["node"] == "n2":
            raise RuntimeError("a fault in the check")
        return real(raw)

    monkeypatch.setattr(grouping, "parse_batch", parse)
    outcomes = ingest_group(db, group(), clock=clock, retrying=quick())
    assert isinstance(outcomes[1], RuntimeError) and [o["seq"] for o in (outcomes[0], outcomes[2])] == [1, 2]


def test_a_broken_batch_fails_alone(db, clock, monkeypatch):
    def ingest(session, batches, *, clock):
        if any(b.node == "n2" for b in batches):
            raise ValueError("a fault of ours")
        return ingest_batches(session, batches, clock=clock)

    monkeypatch.setattr(grouping, "ingest_batches", ingest)
    outcomes = ingest_group(db, group(), clock=clock, retrying=quick())
    assert isinstance(outcomes[1], ValueError)
    assert [o["seq"] for o in (outcomes[0], outcomes[2])] == [1, 2]
    assert stored(db) == [("n1", 1), ("n1", 2)]


def test_a_concurrent_ingest_of_the_same_batch_is_tried_again(db, clock, monkeypatch):
    calls = []
    race = IntegrityError("INSERT INTO ingestedbatch …", {}, Exception("duplicate key value (node, seq)"))
    monkeypatch.setattr(grouping, "ingest_batches", failing(1, race, calls))
    outcomes = ingest_group(db, group(), clock=clock,
                            retrying=Retrying(60, sleep=lambda s: pytest.fail("a race needs no wait")))
    assert len(calls) == 2 and all(isinstance(o, dict) for o in outcomes)


def test_a_lasting_integrity_error_fails_the_batches_one_by_one(db, clock, monkeypatch):
    calls = []
    race = IntegrityError("INSERT …", {}, Exception("a constraint we break"))
    monkeypatch.setattr(grouping, "ingest_batches", failing(10**6, race, calls))
    outcomes = ingest_group(db, group(), clock=clock, retrying=quick())
    assert all(isinstance(o, IntegrityError) for o in outcomes)
    assert calls[:3] == [["n1", "n2", "n1"]] * 3 and calls[3:] == [["n1"]] * 3 + [["n2"]] * 3 + [["n1"]] * 3
