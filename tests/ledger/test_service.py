"""Ingest, re-attribution and conservation on real PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from accounting.clock import US_PER_HOUR, US_PER_S, to_datetime
from accounting.errors import InvalidInput
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.ledger.models import GpuEvent, IngestedBatch, LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals, job_energy
from accounting.ledger.retention import expire_samples
from tests.conftest import T0_US
from tests.factories import batch, job

S = US_PER_S


def energy_between(first_k: int, last_k: int, mj_per_s: int = 300_000) -> int:
    """Σ of factories.batch's interval energies k = first_k .. last_k - 1."""
    return sum(mj_per_s + k for k in range(first_k, last_k))


def test_a_batch_lands_in_samples_and_the_ledger(session, clock):
    result = ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 60), clock=clock)
    assert (result.duplicate, result.intervals, result.energy_mj) == (False, 60, energy_between(0, 60))
    assert session.scalar(sa.select(sa.func.count()).select_from(Sample)) == 60
    totals = fleet_totals(session)
    assert totals.measured_mj == totals.idle_mj == energy_between(0, 60)
    assert totals.balanced and conservation_errors(session) == []


def test_the_same_batch_twice_counts_once(session, clock):
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 30), clock=clock)
    again = ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 30), clock=clock)
    assert again.duplicate
    assert fleet_totals(session).measured_mj == energy_between(0, 30)
    assert session.scalar(sa.select(sa.func.count()).select_from(IngestedBatch)) == 1


def test_a_job_pays_exactly_its_share_and_idle_the_rest(session, clock):
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 10), clock=clock)
    j = create_job(session, job("j1", ["GPU-a"], T0_US + 4 * S), clock=clock)  # registered late
    ingest_batch(session, batch("n1", 2, "GPU-a", T0_US + 10 * S, 10), clock=clock)
    finish_job(session, j.id, to_datetime(T0_US + 15 * S), clock=clock)  # finished in the past
    ingest_batch(session, batch("n1", 3, "GPU-a", T0_US + 20 * S, 10), clock=clock)

    expected = energy_between(4, 10) + energy_between(0, 5)
    assert job_energy(session, j.id).energy_mj == expected
    totals = fleet_totals(session)
    assert totals.jobs_mj == expected
    assert totals.jobs_mj + totals.idle_mj == totals.measured_mj == 3 * energy_between(0, 10) - energy_between(0, 0)
    assert conservation_errors(session) == []


def test_an_hour_boundary_splits_the_ledger_but_not_the_job(session, clock):
    start = T0_US + US_PER_HOUR - 30 * S
    ingest_batch(session, batch("n1", 1, "GPU-a", start, 60), clock=clock)
    j = create_job(session, job("j1", ["GPU-a"], start), clock=clock)
    hours = session.execute(sa.select(LedgerEntry.hour, LedgerEntry.energy_mj).order_by(LedgerEntry.hour)).all()
    assert [h for h, _ in hours] == [to_datetime(T0_US), to_datetime(T0_US + US_PER_HOUR)]
    assert [e for _, e in hours] == [energy_between(0, 30), energy_between(30, 60)]
    assert job_energy(session, j.id).energy_mj == energy_between(0, 60)


def test_two_jobs_on_one_gpu_split_evenly(session, clock):
    a = create_job(session, job("a", ["GPU-a"], T0_US), clock=clock)
    b = create_job(session, job("b", ["GPU-a"], T0_US), clock=clock)
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 2, mj_per_s=1_001), clock=clock)
    # 1001 + 1002 mJ: 501 + 501 to job a (lower id), 500 + 501 to b
    assert (job_energy(session, a.id).energy_mj, job_energy(session, b.id).energy_mj) == (1_002, 1_001)
    assert set(job_energy(session, a.id).by_method_mj) == {"even"}


def test_estimated_intervals_are_flagged_on_the_job(session, clock):
    j = create_job(session, job("j1", ["GPU-a"], T0_US), clock=clock)
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 3, method="power-integral"), clock=clock)
    energy = job_energy(session, j.id)
    assert energy.by_method_mj == {"power-integral": energy_between(0, 3)}
    assert [p.energy_mj for p in energy.estimated] == [energy_between(0, 3)]


@pytest.mark.parametrize("broken, field", [
    ({"node": ""}, "node"),
    ({"seq": -1}, "seq"),
    ({"intervals": [{"uuid": "GPU-a", "start_us": 5, "end_us": 5, "energy_mj": 1, "method": "counter"}]},
     "intervals.0"),
    ({"intervals": [{"uuid": "GPU-a", "start_us": 1, "end_us": 5, "energy_mj": -1, "method": "counter"}]},
     "intervals.0.energy_mj"),
])
def test_a_malformed_batch_is_refused_naming_the_field_and_changes_nothing(session, clock, broken, field):
    raw = batch("n1", 1, "GPU-a", T0_US, 2) | broken
    with pytest.raises(InvalidInput) as excinfo:
        ingest_batch(session, raw, clock=clock)
    assert excinfo.value.field == field
    assert fleet_totals(session).measured_mj == 0


def test_retention_keeps_the_ledger_and_protects_expired_hours(session, clock):
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 10), clock=clock)
    clock.advance(15 * 24 * 3600)
    assert expire_samples(session, retention_days=14, clock=clock) == 10
    assert fleet_totals(session).idle_mj == energy_between(0, 10)  # the ledger stays
    # a job registered now for that old time cannot rebuild the expired hour: the ledger is kept
    create_job(session, job("late", ["GPU-a"], T0_US), clock=clock)
    assert fleet_totals(session).idle_mj == energy_between(0, 10)


def test_an_interval_over_time_already_metered_is_dropped_not_counted_twice(session, clock):
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 60), clock=clock)
    # the same minute again under a new seq (a sampler restored from an old state), shifted by 1 µs
    again = batch("n1", 2, "GPU-a", T0_US + 1, 60)
    result = ingest_batch(session, again, clock=clock)
    assert (result.duplicate, result.intervals, result.energy_mj) == (False, 0, 0)
    assert fleet_totals(session).measured_mj == energy_between(0, 60)
    assert conservation_errors(session) == []
    kinds = session.execute(sa.select(GpuEvent.kind)).scalars().all()
    assert kinds.count("overlap-dropped") == 60


def test_two_intervals_with_one_start_in_a_batch_do_not_poison_it(session, clock):
    raw = batch("n1", 1, "GPU-a", T0_US, 2)
    raw["intervals"].append({**raw["intervals"][0], "end_us": T0_US + S // 2, "energy_mj": 5})
    result = ingest_batch(session, raw, clock=clock)  # no IntegrityError: the clash is dropped
    # in time order the half-second interval comes first; the full second overlapping it is dropped
    assert result.intervals == 2
    assert fleet_totals(session).measured_mj == 5 + energy_between(1, 2)
    assert conservation_errors(session) == []
