"""The exact split of an interval's energy over hours and jobs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from accounting.clock import US_PER_HOUR, US_PER_S
from accounting.ledger.attribution import Tenancy, attribute_interval

H = US_PER_HOUR


def test_an_interval_inside_one_job_goes_wholly_to_it():
    shares = attribute_interval(10 * US_PER_S, 11 * US_PER_S, 700_123, "counter", [Tenancy(1, 0, None)])
    assert [(s.job_id, s.method, s.energy_mj, s.gpu_us) for s in shares] == [(1, "exclusive", 700_123, US_PER_S)]


def test_time_without_a_job_goes_to_idle_and_the_split_is_by_time():
    # the job starts a quarter into the interval: 1/4 idle, 3/4 the job's
    shares = attribute_interval(0, 4 * US_PER_S, 1_000, "counter", [Tenancy(5, US_PER_S, None)])
    assert [(s.job_id, s.energy_mj) for s in shares] == [(None, 250), (5, 750)]


def test_an_interval_across_an_hour_boundary_is_cut_at_the_hour():
    shares = attribute_interval(H - US_PER_S, H + 2 * US_PER_S, 3_001, "counter", [])
    assert [(s.hour_us, s.energy_mj) for s in shares] == [(0, 1_000), (H, 2_001)]


def test_co_tenants_split_evenly_with_the_remainder_to_the_lowest_id():
    shares = attribute_interval(0, US_PER_S, 1_001, "counter", [Tenancy(9, 0, None), Tenancy(4, 0, None)])
    assert [(s.job_id, s.method, s.energy_mj) for s in shares] == [(4, "even", 501), (9, "even", 500)]


def test_an_estimated_interval_keeps_its_method():
    shares = attribute_interval(0, US_PER_S, 500, "power-integral", [Tenancy(1, 0, None)])
    assert shares[0].method == "power-integral"


def test_a_finished_job_stops_paying_at_its_end():
    shares = attribute_interval(0, 2 * US_PER_S, 2_000, "counter", [Tenancy(1, 0, US_PER_S)])
    assert [(s.job_id, s.energy_mj) for s in shares] == [(1, 1_000), (None, 1_000)]


tenancies = st.lists(
    st.builds(
        lambda job, a, length: Tenancy(job, a, None if length is None else a + length),
        st.integers(1, 6), st.integers(0, 3 * H), st.one_of(st.none(), st.integers(1, 2 * H)),
    ),
    max_size=5,
)


@given(
    start=st.integers(0, 3 * H), length=st.integers(1, 2 * H), energy=st.integers(0, 10**12),
    tenancies=tenancies,
)
def test_shares_always_add_up_to_the_interval_exactly(start, length, energy, tenancies):
    shares = attribute_interval(start, start + length, energy, "counter", tenancies)
    assert sum(s.energy_mj for s in shares) == energy
    assert sum(s.gpu_us for s in shares) >= length  # co-tenants share time, idle fills gaps
    assert all(s.energy_mj >= 0 for s in shares)
    assert all(s.hour_us % H == 0 and s.hour_us <= start + length for s in shares)


@given(start=st.integers(0, 3 * H), length=st.integers(2, 2 * H), energy=st.integers(0, 10**12),
       cut=st.floats(0.01, 0.99), tenancies=tenancies)
def test_per_hour_totals_do_not_depend_on_how_the_jobs_cut_the_interval(start, length, energy, cut, tenancies):
    """Re-attribution with other allocations never moves energy between hours or GPUs."""
    def per_hour(ts):
        totals: dict[int, int] = {}
        for s in attribute_interval(start, start + length, energy, "counter", ts):
            totals[s.hour_us] = totals.get(s.hour_us, 0) + s.energy_mj
        return totals

    assert per_hour(tenancies) == per_hour([]) == per_hour([Tenancy(1, start + int(cut * length), None)])
