"""Raw-sample retention by partition on PostgreSQL (days made ahead, expired days dropped whole),
row by row on SQLite, and re-attribution within retention on both."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock, to_datetime, to_us
from accounting.jobs.models import Gpu
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.ledger.models import ChangeLog, Sample
from accounting.ledger.reports import fleet_totals, job_energy
from accounting.ledger.retention import (
    SAMPLE_PARTITIONS,
    day_partitions,
    ensure_partitions,
    expire_samples,
    partitioned,
    prune_change_log,
)
from tests.conftest import T0_US
from tests.factories import batch, job

DAY0 = datetime(2025, 7, 26, tzinfo=UTC)  # T0's day
MIDNIGHT_US = to_us(DAY0 + timedelta(days=1))


@pytest.fixture
def pg(pg_engine) -> Iterator[Session]:
    """A PostgreSQL session rolled back after the test: the partitions it makes go with it."""
    with pg_engine.connect() as connection:
        transaction = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as db:
            yield db
        transaction.rollback()


def rows_in(session: Session, table: str) -> int:
    return session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_sample_is_partitioned_on_postgresql_with_a_default_partition(pg, sqlite_engine):
    assert partitioned(pg)
    names = pg.execute(sa.text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                               "WHERE i.inhparent = 'sample'::regclass")).scalars().all()
    assert "sample_default" in names
    with Session(sqlite_engine) as lite:
        assert not partitioned(lite)
        assert ensure_partitions(lite, clock=FakeClock(T0_US)) == []


def test_the_days_ahead_are_created_once(pg):
    clock = FakeClock(T0_US)
    created = ensure_partitions(pg, clock=clock, days_ahead=7)
    assert created == [f"sample_p{(DAY0 + timedelta(days=k)):%Y%m%d}" for k in range(8)]
    assert ensure_partitions(pg, clock=clock, days_ahead=7) == []
    assert set(day_partitions(pg)) >= {DAY0 + timedelta(days=k) for k in range(8)}


def test_samples_the_default_partition_caught_move_into_their_new_day(pg, clock):
    ingest_batch(pg, batch("n1", 1, "GPU-a", T0_US, 10), clock=clock)
    assert rows_in(pg, f"{SAMPLE_PARTITIONS}.sample_default") == 10  # no partition for that day yet
    ensure_partitions(pg, clock=clock, days_ahead=0)
    assert rows_in(pg, f"{SAMPLE_PARTITIONS}.sample_default") == 0
    assert rows_in(pg, f"{SAMPLE_PARTITIONS}.sample_p{DAY0:%Y%m%d}") == 10
    assert pg.scalar(sa.select(sa.func.count()).select_from(Sample)) == 10


def test_an_expired_day_is_dropped_whole_and_its_gpus_remember_the_cut_off(pg, clock):
    ensure_partitions(pg, clock=clock, days_ahead=1)
    ingest_batch(pg, batch("n1", 1, "GPU-a", T0_US, 10), clock=clock)
    before = fleet_totals(pg)
    clock.set(MIDNIGHT_US + 14 * 24 * 3_600 * US_PER_S)  # cut-off: 14 days back = the midnight after DAY0
    assert expire_samples(pg, retention_days=14, clock=clock) == 10
    assert DAY0 not in day_partitions(pg)
    assert DAY0 + timedelta(days=1) in day_partitions(pg)  # not wholly before the cut-off
    gpu = pg.execute(sa.select(Gpu).where(Gpu.uuid == "GPU-a")).scalar_one()
    assert gpu.samples_expired_before == datetime(2025, 7, 27, tzinfo=UTC)
    after = fleet_totals(pg)
    assert (after.measured_mj, after.idle_mj) == (0, before.idle_mj)  # the ledger stays
    assert expire_samples(pg, retention_days=14, clock=clock) == 0


def test_a_day_whose_last_interval_ends_after_the_cut_off_is_trimmed_row_by_row(pg):
    clock = FakeClock(MIDNIGHT_US - 4 * US_PER_S)
    ensure_partitions(pg, clock=clock, days_ahead=0)
    straddling = batch("n1", 1, "GPU-a", MIDNIGHT_US - 4 * US_PER_S + US_PER_S // 2, 4)  # the last ends at 00:00:00.5
    ingest_batch(pg, straddling, clock=clock)
    clock.set(MIDNIGHT_US + 14 * 24 * 3_600 * US_PER_S)  # cut-off: midnight
    assert expire_samples(pg, retention_days=14, clock=clock) == 3
    assert DAY0 in day_partitions(pg)
    left = pg.execute(sa.select(Sample.end_at)).scalars().all()
    assert left == [to_datetime(MIDNIGHT_US + US_PER_S // 2)]


def test_re_attribution_within_retention_is_exact_and_expired_hours_stay(session, clock):
    ensure_partitions(session, clock=clock, days_ahead=3)
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 60), clock=clock)
    late_us = T0_US + 2 * 24 * 3_600 * US_PER_S
    recent = batch("n1", 2, "GPU-a", late_us, 60)
    ingest_batch(session, recent, clock=clock)
    clock.set(late_us + 14 * 24 * 3_600 * US_PER_S)  # the first day has expired, the second not
    assert expire_samples(session, retention_days=14, clock=clock) == 60
    old_idle = fleet_totals(session).idle_mj
    # A job registered late for both times: re-attribution rebuilds only the hours it still can.
    created = create_job(session, job("late", ["GPU-a"], T0_US), clock=clock)
    finish_job(session, created.id, to_datetime(late_us + 60 * US_PER_S), clock=clock)
    recent_mj = sum(i["energy_mj"] for i in recent["intervals"])
    assert job_energy(session, created.id).energy_mj == recent_mj
    assert fleet_totals(session).idle_mj == old_idle - recent_mj  # the expired hour stays idle


def test_the_change_log_is_pruned_after_an_hour(pg, clock):
    pg.add(ChangeLog(txid=1, table_name="job", logged_at=to_datetime(clock.now_us() - 2 * 3_600 * US_PER_S)))
    pg.add(ChangeLog(txid=2, table_name="job", logged_at=to_datetime(clock.now_us())))
    pg.flush()
    assert prune_change_log(pg, clock=clock) >= 1
    assert pg.execute(sa.select(ChangeLog.txid).where(ChangeLog.txid.in_([1, 2]))).scalars().all() == [2]
