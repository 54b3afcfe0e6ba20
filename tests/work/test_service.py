"""Recording work reports (idempotent by key, race-safe) and their totals, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from sqlmodel import func, select

from accounting.clock import US_PER_HOUR, US_PER_S, to_datetime
from accounting.errors import InvalidInput, NotFound
from accounting.jobs.service import create_job
from accounting.work import service
from accounting.work.models import WorkReport, WorkReportCreate
from accounting.work.service import WorkTotals, list_work, record_work, work_totals
from tests.conftest import T0_US
from tests.factories import job

S, H = US_PER_S, US_PER_HOUR


@pytest.fixture
def job_id(session, clock) -> int:
    return create_job(session, job("run-1", ["GPU-a"], T0_US, kind="training"), clock=clock).id


def work(key: str, at_us: int = T0_US + 10 * S, **figures) -> WorkReportCreate:
    return WorkReportCreate(key=key, at=to_datetime(at_us), **(figures or {"tokens": 1}))


def rows(session, job_id: int) -> int:
    return session.exec(select(func.count()).select_from(WorkReport).where(WorkReport.job_id == job_id)).one()


def test_a_first_report_is_stored_with_its_provenance_and_receipt_time(session, clock, job_id):
    clock.advance(60)
    report, duplicate = record_work(session, job_id, work("a", flops=2**70, tokens=4096, samples=2, steps=1),
                                    clock=clock)
    assert not duplicate
    assert report.id is not None
    assert (report.flops, report.tokens, report.samples, report.steps) == (2**70, 4096, 2, 1)
    assert report.provenance == "reported"
    assert report.received_at == to_datetime(T0_US + 60 * S)
    assert report.at == to_datetime(T0_US + 10 * S)


def test_a_time_stated_in_another_zone_is_stored_in_utc(session, clock, job_id):
    at = to_datetime(T0_US + 10 * S).astimezone(timezone(timedelta(hours=2)))
    report, _ = record_work(session, job_id, WorkReportCreate(key="a", at=at, steps=1), clock=clock)
    assert report.at.utcoffset() == timedelta(0)
    assert report.at == to_datetime(T0_US + 10 * S)


def test_the_same_key_again_returns_the_stored_report_and_changes_nothing(session, clock, job_id):
    first, _ = record_work(session, job_id, work("a", tokens=100), clock=clock)
    again, duplicate = record_work(session, job_id, work("a", tokens=999, at_us=T0_US + 20 * S), clock=clock)
    assert duplicate
    assert again.id == first.id
    assert (again.tokens, again.at) == (100, to_datetime(T0_US + 10 * S))  # the first body wins
    assert rows(session, job_id) == 1
    assert work_totals(session, [job_id])[job_id].tokens == 100


def test_the_same_key_on_another_job_is_another_report(session, clock, job_id):
    other = create_job(session, job("run-2", ["GPU-b"], T0_US), clock=clock).id
    record_work(session, job_id, work("a", tokens=1), clock=clock)
    _, duplicate = record_work(session, other, work("a", tokens=2), clock=clock)
    assert not duplicate
    totals = work_totals(session, [job_id, other])
    assert (totals[job_id].tokens, totals[other].tokens) == (1, 2)


def test_a_twin_that_wins_the_race_makes_the_loser_a_duplicate(session, clock, job_id, monkeypatch):
    """The check-then-insert race: the lookup misses, a concurrent twin commits the key first,
    and the insert fails on the unique constraint. Simulated by a lookup that misses once."""
    record_work(session, job_id, work("other", steps=5), clock=clock)
    winner, _ = record_work(session, job_id, work("a", tokens=100), clock=clock)
    real, lookups = service._stored, []

    def miss_once(*args):
        lookups.append(args)
        return None if len(lookups) == 1 else real(*args)

    monkeypatch.setattr(service, "_stored", miss_once)
    loser, duplicate = record_work(session, job_id, work("a", tokens=7), clock=clock)
    assert len(lookups) == 2  # the miss, then the look after the IntegrityError
    assert duplicate
    assert (loser.id, loser.tokens) == (winner.id, 100)
    # only the failed insert was rolled back (a savepoint): the rest of the transaction stands
    assert rows(session, job_id) == 2
    assert work_totals(session, [job_id])[job_id].steps == 5


def test_work_of_an_unknown_job_is_not_found(session, clock):
    with pytest.raises(NotFound):
        record_work(session, 999_999, work("a"), clock=clock)


def test_work_up_to_a_day_ahead_is_taken_and_beyond_it_is_refused(session, clock, job_id):
    record_work(session, job_id, work("a", at_us=T0_US + 24 * H), clock=clock)
    with pytest.raises(InvalidInput) as refused:
        record_work(session, job_id, work("b", at_us=T0_US + 24 * H + 1), clock=clock)
    assert refused.value.field == "at"
    assert rows(session, job_id) == 1


def test_work_up_to_a_minute_before_the_start_is_taken_and_earlier_is_refused(session, clock, job_id):
    record_work(session, job_id, work("a", at_us=T0_US - 60 * S), clock=clock)
    with pytest.raises(InvalidInput) as refused:
        record_work(session, job_id, work("b", at_us=T0_US - 60 * S - 1), clock=clock)
    assert refused.value.field == "at"
    assert "before the job started" in refused.value.message


def test_totals_are_exact_python_ints_beyond_2_to_the_63(session, clock, job_id):
    record_work(session, job_id, work("a", at_us=T0_US + 30 * S, flops=9 * 10**18, tokens=10), clock=clock)
    record_work(session, job_id, work("b", at_us=T0_US + 10 * S, flops=10**25 + 1, samples=3), clock=clock)
    record_work(session, job_id, work("c", at_us=T0_US + 20 * S, steps=2), clock=clock)
    totals = work_totals(session, [job_id])[job_id]
    assert totals == WorkTotals(
        flops=10**25 + 9 * 10**18 + 1, tokens=10, samples=3, steps=2, reports=3,
        first_at=to_datetime(T0_US + 10 * S), last_at=to_datetime(T0_US + 30 * S),
        figures=frozenset({"flops", "tokens", "samples", "steps"}),
    )
    assert type(totals.flops) is int


def test_every_job_asked_about_gets_totals_even_without_reports(session, clock, job_id):
    record_work(session, job_id, work("a", tokens=0), clock=clock)
    idle = create_job(session, job("run-2", ["GPU-b"], T0_US), clock=clock).id
    totals = work_totals(session, [job_id, idle, idle])
    assert totals[idle] == WorkTotals()
    assert totals[job_id].figures == {"tokens"}  # zero tokens reported is not nothing reported
    assert work_totals(session, []) == {}


def test_reports_are_listed_in_the_order_the_work_was_done(session, clock, job_id):
    for key, second in (("late", 30), ("early", 10), ("middle", 20)):
        record_work(session, job_id, work(key, at_us=T0_US + second * S), clock=clock)
    assert [r.key for r in list_work(session, job_id)] == ["early", "middle", "late"]
    assert [r.key for r in list_work(session, job_id, limit=1, offset=1)] == ["middle"]
