"""A past month's open statement comes from the cache until a change to what it reads commits;
never inside a transaction that wrote, never for a month that has not ended. Real PostgreSQL,
committed data (the cache keys on committed transactions), cleaned up after."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.chargeback import cache, statements
from accounting.chargeback.statements import build_statement
from accounting.clock import FakeClock, to_us
from accounting.ledger.ingest import ingest_batch
from tests.conftest import truncate_all
from tests.factories import batch

OCTOBER_US = to_us(datetime(2026, 10, 5, 10, tzinfo=UTC))


@pytest.fixture
def committed(pg_engine, monkeypatch):
    """An empty PostgreSQL database and cache; the number of statements computed (not cached)."""
    truncate_all(pg_engine)
    cache.clear()
    computed: list[str] = []
    core = statements._core

    def counting(session, period, *args, **kwargs):
        computed.append(period)
        return core(session, period, *args, **kwargs)

    monkeypatch.setattr(statements, "_core", counting)
    yield computed
    truncate_all(pg_engine)
    cache.clear()


def statement(engine, clock: FakeClock, period: str = "2026-10") -> dict:
    with Session(engine) as session:
        return build_statement(session, period=period, group_by="team", idle_policy="separate", clock=clock)


def ingest(engine, seq: int, start_us: int, clock: FakeClock) -> None:
    with Session(engine) as session:
        ingest_batch(session, batch("n1", seq, "GPU-cache", start_us, 60), clock=clock)
        session.commit()


def metered_mj(content: dict) -> int:
    return content["reconciliation"]["metered_mj"]


def test_a_past_month_is_cached_until_a_change_commits(pg_engine, committed):
    clock = FakeClock(to_us(datetime(2026, 12, 1, tzinfo=UTC)))
    ingest(pg_engine, 1, OCTOBER_US, clock)
    first = statement(pg_engine, clock)
    second = statement(pg_engine, clock)
    assert committed == ["2026-10"]  # the second came from the cache
    assert second["lines"] == first["lines"] and metered_mj(first) > 0
    clock.advance(5_000_000)
    assert statement(pg_engine, clock)["generated_at"] != first["generated_at"]  # stamped per answer

    ingest(pg_engine, 2, OCTOBER_US + 3_600_000_000, clock)  # late data for October commits
    third = statement(pg_engine, clock)
    assert committed == ["2026-10", "2026-10"]
    assert metered_mj(third) == 2 * metered_mj(first)


def test_a_transaction_that_wrote_sees_its_own_changes_not_the_cache(pg_engine, committed):
    clock = FakeClock(to_us(datetime(2026, 12, 1, tzinfo=UTC)))
    ingest(pg_engine, 1, OCTOBER_US, clock)
    before = metered_mj(statement(pg_engine, clock))
    with Session(pg_engine) as session:
        ingest_batch(session, batch("n1", 2, "GPU-cache", OCTOBER_US + 3_600_000_000, 60), clock=clock)
        inside = build_statement(session, period="2026-10", group_by="team", idle_policy="separate", clock=clock)
        session.rollback()
    assert metered_mj(inside) == 2 * before
    assert metered_mj(statement(pg_engine, clock)) == before  # the rolled-back change never counted
    assert committed == ["2026-10", "2026-10"]  # the writer's own; the last came from the cache again


def test_a_month_that_has_not_ended_is_computed_each_time(pg_engine, committed):
    clock = FakeClock(to_us(datetime(2026, 10, 20, tzinfo=UTC)))
    ingest(pg_engine, 1, OCTOBER_US, clock)
    statement(pg_engine, clock)
    statement(pg_engine, clock)
    assert committed == ["2026-10", "2026-10"]


# ---- invalidation by time: only a change that touches the month's span drops it ---------------

DECEMBER_US = to_us(datetime(2026, 12, 1, 9, tzinfo=UTC))


def execute(engine, sql: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(sql))


def cached_october(engine, clock, computed) -> int:
    """Ledger in October, its statement computed once; returns how many were computed so far."""
    ingest(engine, 1, OCTOBER_US, clock)
    statement(engine, clock)
    assert computed == ["2026-10"]
    return len(computed)


def test_current_hour_ingest_and_gpu_locks_keep_a_past_month_cached(pg_engine, committed):
    clock = FakeClock(DECEMBER_US + 3_600_000_000)
    cached_october(pg_engine, clock, committed)
    with pg_engine.connect() as connection:
        logged = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM change_log")).scalar_one()
    ingest(pg_engine, 2, DECEMBER_US, clock)  # ingest of the current hour: ledger rows, GPU touched
    # A statement that changes no row still fires its statement-level trigger, with empty
    # transition tables (ingest's UPDATE of this hour's rows before they exist does): that was
    # once logged as an unbounded change and dropped every cached month on every ingest.
    execute(pg_engine, "UPDATE ledger_entry SET energy_mj = energy_mj WHERE false")
    execute(pg_engine, "UPDATE allocation SET end_at = end_at WHERE false")
    execute(pg_engine, "UPDATE gpu SET id = id")  # a lock-only UPDATE
    execute(pg_engine, "UPDATE gpu SET last_seen_at = now()")  # not read by a statement
    execute(pg_engine, "INSERT INTO price_point (series, hour, price_per_kwh, currency) "
                       "VALUES ('s', '2026-11-01 00:00+00', '0.1', 'EUR')")  # the hour after October
    with pg_engine.connect() as connection:  # the ingest and the price were logged, with their spans
        spans = connection.execute(sa.text("SELECT table_name, start_at, end_at FROM change_log WHERE id > :id"),
                                   {"id": logged}).all()
    assert {t for t, *_ in spans} >= {"ledger_entry", "price_point"} and "gpu" not in {t for t, *_ in spans}
    assert all(start is not None and start >= datetime(2026, 11, 1, tzinfo=UTC) for _, start, _ in spans)
    statement(pg_engine, clock)
    assert committed == ["2026-10"]


@pytest.mark.parametrize("change", [
    pytest.param("UPDATE ledger_entry SET energy_mj = energy_mj + 1", id="ledger-in-month"),
    pytest.param("INSERT INTO job (source, external_id, team, kind, started_at, ended_at, created_at) "
                 "VALUES ('slurm', 'long', 'cv', 'training', '2026-09-20 00:00+00', '2026-11-05 00:00+00', now())",
                 id="job-overlapping-month"),
    pytest.param("INSERT INTO price_point (series, hour, price_per_kwh, currency) "
                 "VALUES ('s', '2026-10-31 23:00+00', '0.1', 'EUR')", id="price-in-month"),
    pytest.param("INSERT INTO site (name, timezone, pue, currency) VALUES ('far', 'Asia/Tokyo', 1.2, 'JPY')",
                 id="site"),
    pytest.param("UPDATE gpu SET model = 'A100-SXM4-80GB'", id="gpu-model"),
])
def test_a_change_to_what_the_month_reads_drops_it(pg_engine, committed, change):
    clock = FakeClock(DECEMBER_US)
    computed = cached_october(pg_engine, clock, committed)
    execute(pg_engine, change)
    statement(pg_engine, clock)
    assert len(committed) == computed + 1


def test_a_job_outside_the_month_keeps_it_cached(pg_engine, committed):
    clock = FakeClock(DECEMBER_US)
    cached_october(pg_engine, clock, committed)
    execute(pg_engine, "INSERT INTO job (source, external_id, team, kind, started_at, created_at) "
                       "VALUES ('slurm', 'new', 'cv', 'training', '2026-11-20 00:00+00', now())")  # still running
    statement(pg_engine, clock)
    assert committed == ["2026-10"]
