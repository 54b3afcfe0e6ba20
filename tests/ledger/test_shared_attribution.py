"""Shared GPUs and MIG: baseline split, SM shares, unattributed processes, slices."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from accounting.clock import US_PER_S
from accounting.ledger.attribution import (
    GpuSignals,
    MigSlot,
    ProcessUse,
    Tenancy,
    attribute_interval,
    split_weighted,
)

S = US_PER_S


def by_account(shares):
    totals: dict = {}
    for s in shares:
        key = ("job", s.job_id) if s.job_id else (("unattributed", s.pid) if s.pid is not None else ("idle",))
        totals[key] = totals.get(key, 0) + s.energy_mj
    return totals


def test_three_co_tenants_split_the_baseline_evenly_and_the_rest_by_sm_share():
    # 10 s at 1,000 W total on a GPU idling at 100 W: 1,000 J baseline, 9,000 J active
    signals = GpuSignals(baseline_mw=100_000, processes=(
        ProcessUse(1, 101, "ann", 60.0), ProcessUse(2, 202, "bob", 30.0), ProcessUse(3, 303, "cy", 0.0),
    ))
    tenants = [Tenancy(1, 0, None), Tenancy(2, 0, None), Tenancy(3, 0, None)]
    shares = attribute_interval(0, 10 * S, 10_000_000, "counter", tenants, signals)
    assert by_account(shares) == {("job", 1): 333_334 + 6_000_000, ("job", 2): 333_333 + 3_000_000,
                                  ("job", 3): 333_333}
    assert {s.method for s in shares} == {"even", "sm-share"}


def test_an_unknown_process_takes_its_sm_share_to_unattributed_with_pid_and_user():
    signals = GpuSignals(baseline_mw=0, processes=(
        ProcessUse(1, 10, "ann", 50.0), ProcessUse(None, 666, "mallory", 50.0, job_key="slurm:999"),
    ))
    shares = attribute_interval(0, S, 1_000, "counter", [Tenancy(1, 0, None)], signals)
    assert by_account(shares) == {("job", 1): 500, ("unattributed", 666): 500}
    rogue = next(s for s in shares if s.pid == 666)
    assert (rogue.user, rogue.job_key, rogue.method) == ("mallory", "slurm:999", "sm-share")


def test_processes_without_sm_data_fall_back_to_an_even_split():
    signals = GpuSignals(baseline_mw=50_000, processes=(ProcessUse(1, 1, "a", 0.0), ProcessUse(2, 2, "b", 0.0)))
    shares = attribute_interval(0, S, 1_001, "counter", [Tenancy(1, 0, None), Tenancy(2, 0, None)], signals)
    assert by_account(shares) == {("job", 1): 501, ("job", 2): 500}
    assert {s.method for s in shares} == {"even"}


def test_a_single_holder_with_its_own_processes_stays_exclusive():
    signals = GpuSignals(baseline_mw=70_000, processes=(ProcessUse(1, 10, "ann", 97.0),))
    shares = attribute_interval(0, S, 600_000, "counter", [Tenancy(1, 0, None)], signals)
    assert [(s.job_id, s.method, s.energy_mj) for s in shares] == [(1, "exclusive", 600_000)]


def test_mig_by_activity_baseline_by_slices_and_free_slices_to_idle():
    # 7 slices: a 3g instance held by job 1 (activity 80 %), a 2g held by job 2 (20 %), 2 slices free
    signals = GpuSignals(baseline_mw=70_000, mig=(
        MigSlot(3, (Tenancy(1, 0, None),), 80.0), MigSlot(2, (Tenancy(2, 0, None),), 20.0),
    ))
    shares = attribute_interval(0, 10 * S, 3_500_000, "counter", [], signals)
    # baseline 700 J: 300 / 200 / 200 (free); active 2,800 J by 3·80 : 2·20 = 240 : 40
    assert by_account(shares) == {("job", 1): 300_000 + 2_400_000, ("job", 2): 200_000 + 400_000,
                                  ("idle",): 200_000}
    assert {s.method for s in shares if s.job_id} == {"mig-activity"}


def test_mig_without_activity_splits_by_slice_size():
    signals = GpuSignals(baseline_mw=70_000, mig=tuple(
        MigSlot(1, (Tenancy(i, 0, None),) if i <= 5 else ()) for i in range(1, 8)
    ))
    shares = attribute_interval(0, S, 700_007, "counter", [], signals)
    totals = by_account(shares)
    assert sum(totals.values()) == 700_007
    assert [totals[("job", i)] for i in range(1, 6)] == [100_001] * 5  # remainder to the first
    assert totals[("idle",)] == 200_002
    assert {s.method for s in shares if s.job_id} == {"mig-slice"}


def test_split_weighted_is_exact_and_proportional():
    assert split_weighted(10, [1, 1, 1]) == [4, 3, 3]
    assert split_weighted(1_000, [3, 1]) == [750, 250]


processes = st.lists(st.builds(ProcessUse, st.one_of(st.none(), st.integers(1, 4)), st.integers(1, 99),
                               st.sampled_from(["a", "b", None]), st.floats(0, 100)), max_size=5)
slots = st.lists(st.builds(lambda n, who, act: MigSlot(n, tuple(Tenancy(j, 0, None) for j in who), act),
                           st.integers(1, 3), st.lists(st.integers(1, 4), max_size=2, unique=True),
                           st.one_of(st.none(), st.floats(0, 100))), max_size=3)


@given(energy=st.integers(0, 10**10), length=st.integers(1, 7_200 * S), baseline=st.integers(0, 10**6),
       procs=processes, mig=slots, holders=st.lists(st.integers(1, 4), max_size=3, unique=True))
def test_every_joule_lands_somewhere_exactly(energy, length, baseline, procs, mig, holders):
    signals = GpuSignals(baseline_mw=baseline, processes=tuple(procs), mig=tuple(mig))
    shares = attribute_interval(0, length, energy, "counter", [Tenancy(h, 0, None) for h in holders], signals)
    assert sum(s.energy_mj for s in shares) == energy
    assert all(s.energy_mj >= 0 for s in shares)


def test_a_job_starting_mid_interval_pays_nothing_before_its_start():
    # job 2 starts half-way through: both processes read 50 % over the whole interval, so job 2
    # ran at 100 % in the half it held the GPU, job 1 at 50 % throughout: equal activity-time
    signals = GpuSignals(baseline_mw=0, processes=(ProcessUse(1, 1, "a", 50.0), ProcessUse(2, 2, "b", 50.0)))
    shares = attribute_interval(0, 2 * S, 3_000, "counter", [Tenancy(1, 0, None), Tenancy(2, S, None)], signals)
    assert by_account(shares) == {("job", 1): 750 + 750, ("job", 2): 1_500}


def test_a_job_alone_after_its_co_tenant_ended_is_exclusive_again():
    signals = GpuSignals(baseline_mw=0, processes=(ProcessUse(1, 1, "a", 50.0), ProcessUse(2, 2, "b", 50.0)))
    shares = attribute_interval(0, 2 * S, 2_000, "counter", [Tenancy(1, 0, None), Tenancy(2, 0, S)], signals)
    # job 2's 50 % over the interval was 100 % in its half; job 1 ran at 50 % throughout
    assert by_account(shares) == {("job", 1): 500 + 500, ("job", 2): 1_000}
    assert {s.method for s in shares if s.job_id == 1 and s.energy_mj} == {"sm-share", "exclusive"}


def test_a_short_whole_gpu_job_inside_one_interval_gets_the_active_energy_of_its_time():
    # 5 s interval at a 70 W baseline; the job held the GPU for 2 s and drew 600 W then
    energy = 70_000 * 5 + (600_000 - 70_000) * 2  # mJ
    signals = GpuSignals(baseline_mw=70_000, processes=(ProcessUse(1, 1, "a", 30.0),))
    shares = attribute_interval(0, 5 * S, energy, "counter", [Tenancy(1, S, 3 * S)], signals)
    assert by_account(shares) == {("job", 1): 600_000 * 2, ("idle",): 70_000 * 3}
    assert {s.method for s in shares} == {"exclusive"}
