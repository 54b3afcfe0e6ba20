"""Waste findings from hand-built ledger rows (no raw samples), each rule at its thresholds
(PostgreSQL and SQLite). H100 SXM: idle 70 W, TDP 700 W, so the busy-but-useless power line is
70 + 0.2 × 630 = 196 W."""

from __future__ import annotations

import pytest

from accounting.clock import US_PER_HOUR, US_PER_S, FakeClock
from accounting.work.waste import FindingKind, Severity, Thresholds, find_waste
from tests.conftest import T0_US

from .test_efficiency import add_gpu, add_hours, add_job, at, report

H, S, MIN = US_PER_HOUR, US_PER_S, 60 * US_PER_S
H100 = 989e12


def waste(session, hours: int = 6, **kwargs):
    return find_waste(session, at(T0_US), at(T0_US + hours * H), **kwargs)


def kinds(findings) -> list[str]:
    return [f.kind.value for f in findings]


def one_gpu_job(session, name: str, minutes: float = 60, *, kind: str = "other", model: str | None = "H100 SXM",
                **activity):
    gpu = add_gpu(session, f"GPU-{name}", model)
    job = add_job(session, name, [gpu], T0_US, T0_US + round(minutes * MIN), kind=kind)
    add_hours(session, job, gpu, T0_US, seconds=minutes * 60, **activity)
    return job


# ── idle-allocated ─────────────────────────────────────────────────────────────────────

def test_an_idle_allocation_is_flagged_with_its_evidence_span_and_energy(session):
    gpus = [add_gpu(session, f"GPU-{i}") for i in range(2)]
    job = add_job(session, "forgotten", gpus, T0_US, T0_US + 2 * H, team="vision")
    for gpu in gpus:
        add_hours(session, job, gpu, T0_US, 2, power_w=72, duty=2)
    [f] = waste(session)
    assert (f.kind, f.severity, f.job_id, f.external_id, f.team) == (
        FindingKind.idle_allocated, Severity.waste, job.id, "forgotten", "vision")
    assert (f.start, f.end) == (at(T0_US), at(T0_US + 2 * H))
    assert f.energy_at_stake_j == pytest.approx(2 * 2 * 72 * 3600)
    assert f.evidence["duty_cycle_pct"] == pytest.approx(2)
    assert f.evidence["mean_power_w"] == pytest.approx(72) and f.evidence["idle_power_w"] == 70
    assert f.evidence["allocated_s"] == 7200 and "tensor_active_pct" not in f.evidence  # no GPM read
    assert f.cost is None


@pytest.mark.parametrize(("duty", "tensor", "minutes", "flagged"), [
    (4.9, None, 60, True),
    (5.0, None, 60, False),  # the duty cycle must be under 5 %
    (2.0, 0.9, 60, True),
    (2.0, 1.0, 60, False),  # with GPM, tensor activity must be under 1 %
    (2.0, None, 10, True),
    (2.0, None, 9.9, False),  # allocated at least 10 minutes
])
def test_idle_allocated_at_its_thresholds(session, duty, tensor, minutes, flagged):
    sm = None if tensor is None else 1.0
    one_gpu_job(session, "j", minutes, power_w=71, duty=duty, sm=sm, tensor=tensor)
    assert kinds(waste(session)) == (["idle-allocated"] if flagged else [])


def test_a_job_that_trained_then_sat_idle_is_flagged_for_its_idle_hours_only(session):
    gpu = add_gpu(session, "GPU-a")
    job = add_job(session, "done-early", [gpu], T0_US, T0_US + 4 * H)
    add_hours(session, job, gpu, T0_US, 2, power_w=600, duty=97, sm=80, tensor=45)
    add_hours(session, job, gpu, T0_US + 2 * H, 2, power_w=72, duty=1, sm=0.2, tensor=0)
    report(session, job, T0_US + 2 * H, flops=10**18)
    [f] = waste(session)
    assert (f.kind, f.start, f.end) == (FindingKind.idle_allocated, at(T0_US + 2 * H), at(T0_US + 4 * H))
    assert f.energy_at_stake_j == pytest.approx(2 * 72 * 3600)


def test_an_idle_gpu_of_unknown_model_is_still_flagged_by_its_duty_cycle(session):
    one_gpu_job(session, "j", model=None, power_w=50, duty=0)
    [f] = waste(session)
    assert f.kind == FindingKind.idle_allocated and f.evidence["idle_power_w"] is None


# ── busy-but-useless ───────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("duty", "power_w", "sm", "tensor", "flagged"), [
    (100, 133, None, None, True),  # a tiny kernel in a loop: idle + 10 % of the range
    (100, 195.9, 5, 2, True),
    (100, 196, None, None, False),  # at idle + 20 % of (TDP − idle): not near idle
    (80, 133, None, None, True),
    (79.9, 133, None, None, False),  # the duty cycle must read ≥ 80 %
    (100, 133, 10, 2, False),  # SMs busy (≥ 10 %)
    (100, 133, 5, 10, False),  # tensor pipes busy (≥ 10 %)
])
def test_busy_but_useless_by_power_at_its_thresholds(session, duty, power_w, sm, tensor, flagged):
    one_gpu_job(session, "j", power_w=power_w, duty=duty, sm=sm, tensor=tensor)
    found = waste(session)
    assert kinds(found) == (["busy-but-useless"] if flagged else [])
    if flagged:
        assert found[0].energy_at_stake_j == pytest.approx(power_w * 3600)
        assert found[0].evidence["duty_cycle_pct"] == pytest.approx(duty)
        assert found[0].rule.startswith("duty cycle ≥ 80 %")


def test_busy_but_useless_by_power_needs_ten_minutes_and_a_known_model(session):
    one_gpu_job(session, "short", 9.9, power_w=133, duty=100)
    one_gpu_job(session, "unknown", model=None, power_w=133, duty=100)
    assert waste(session) == []


@pytest.mark.parametrize(("minutes", "kind", "tensor", "reported", "flagged"), [
    (30, "training", 0.5, False, True),
    (29.9, "training", 0.5, False, False),  # at least 30 minutes
    (30, "training", 1.0, False, False),  # tensor activity must be under 1 %
    (30, "training", 0.5, True, False),  # it reported work
    (30, "inference", 0.5, False, False),  # only a job that claims training
])
def test_training_with_no_work_and_no_tensor_activity(session, minutes, kind, tensor, reported, flagged):
    job = one_gpu_job(session, "j", minutes, kind=kind, power_w=300, duty=60, sm=30, tensor=tensor)
    if reported:
        report(session, job, T0_US + 10 * MIN, steps=100)
    found = waste(session)
    assert kinds(found) == (["busy-but-useless"] if flagged else [])
    if flagged:
        assert found[0].evidence["work_reports"] == 0 and found[0].rule.startswith("a training job")


def test_an_idle_training_job_is_idle_allocated_not_also_busy(session):
    one_gpu_job(session, "j", 60, kind="training", power_w=71, duty=0, sm=0, tensor=0)
    assert kinds(waste(session)) == ["idle-allocated"]


# ── low-mfu ────────────────────────────────────────────────────────────────────────────

def training_at_mfu(session, name: str, mfu: float, model: str = "H100 SXM", peak: float = H100):
    job = one_gpu_job(session, name, kind="training", model=model, power_w=600, duty=97, sm=80, tensor=45)
    report(session, job, T0_US + H, flops=round(mfu * peak * 3600))
    return job


@pytest.mark.parametrize(("mfu", "flagged"), [(0.1999, True), (0.2001, False)])
def test_low_mfu_against_the_median_of_its_peers(session, mfu, flagged):
    for name, peer in (("p1", 0.40), ("p2", 0.42), ("p3", 0.38)):
        training_at_mfu(session, name, peer)
    training_at_mfu(session, "a100-peer-is-no-peer", 0.05, "A100 SXM", 312e12)
    slow = training_at_mfu(session, "slow", mfu)
    found = waste(session)
    assert kinds(found) == (["low-mfu"] if flagged else [])
    if flagged:
        f = found[0]
        assert (f.job_id, f.severity) == (slow.id, Severity.efficiency)
        assert f.evidence["mfu"] == pytest.approx(mfu) and f.evidence["peer_median_mfu"] == pytest.approx(0.40)
        assert (f.evidence["peer_jobs"], f.evidence["flops_provenance"]) == (3, "reported")
        assert f.energy_at_stake_j == pytest.approx(600 * 3600 * (1 - mfu / 0.40))


def test_low_mfu_needs_three_peers_of_the_same_kind(session):
    training_at_mfu(session, "p1", 0.40)
    training_at_mfu(session, "p2", 0.40)
    inference = one_gpu_job(session, "serve", kind="inference", power_w=400, duty=60, sm=40, tensor=30)
    report(session, inference, T0_US + H, flops=round(0.4 * H100 * 3600))
    training_at_mfu(session, "slow", 0.05)
    assert waste(session) == []
    training_at_mfu(session, "p3", 0.40)
    assert kinds(waste(session)) == ["low-mfu"]


def test_a_job_with_a_waste_finding_is_neither_low_mfu_nor_a_peer(session):
    for name in ("p1", "p2", "p3"):
        training_at_mfu(session, name, 0.02)  # three slow peers
    training_at_mfu(session, "norm", 0.40)
    idle = one_gpu_job(session, "idle", kind="training", power_w=71, duty=0, sm=0, tensor=0)
    report(session, idle, T0_US + H, flops=10**12)  # an MFU of ~0, but the waste is the idleness
    found = waste(session)
    assert sorted(kinds(found)) == ["idle-allocated"]


# ── memory-bound ───────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("dram", "tensor", "flagged"), [
    (60, 14.9, True),
    (59.9, 14.9, False),  # DRAM bandwidth must be ≥ 60 % of peak
    (60, 15, False),  # tensor activity must be under 15 %
])
def test_memory_bound_is_an_insight_not_a_fault(session, dram, tensor, flagged):
    one_gpu_job(session, "decode", kind="inference", power_w=420, duty=90, sm=40, tensor=tensor, dram=dram)
    found = waste(session)
    assert kinds(found) == (["memory-bound"] if flagged else [])
    if flagged:
        f = found[0]
        assert (f.severity, f.energy_at_stake_j) == (Severity.info, 0.0)
        assert f.evidence["dram_bw_pct"] == pytest.approx(dram)
        assert f.evidence["tensor_active_pct"] == pytest.approx(tensor)


# ── together ───────────────────────────────────────────────────────────────────────────

def test_healthy_jobs_carry_no_findings_and_findings_come_largest_first(session):
    training_at_mfu(session, "healthy", 0.40)
    one_gpu_job(session, "small-idle", 20, power_w=70, duty=0)
    gpus = [add_gpu(session, "GPU-x"), add_gpu(session, "GPU-y")]
    big = add_job(session, "big-idle", gpus, T0_US, T0_US + H)
    for gpu in gpus:
        add_hours(session, big, gpu, T0_US, power_w=70, duty=0)
    found = waste(session)
    assert [f.external_id for f in found] == ["big-idle", "small-idle"]
    assert [f.energy_at_stake_j for f in found] == pytest.approx([2 * 70 * 3600, 70 * 20 * 60])


def test_custom_thresholds_change_the_rules(session):
    one_gpu_job(session, "j", power_w=71, duty=8)
    assert waste(session) == []
    assert kinds(waste(session, thresholds=Thresholds(idle_max_duty_cycle_pct=10))) == ["idle-allocated"]


def test_open_allocations_end_now_when_a_clock_is_given(session):
    gpu = add_gpu(session, "GPU-a")
    job = add_job(session, "live", [gpu], T0_US, None)
    add_hours(session, job, gpu, T0_US, power_w=71, seconds=9 * 60, duty=0)
    assert waste(session, clock=FakeClock(T0_US + 9 * MIN)) == []  # allocated 9 minutes so far
    assert kinds(waste(session, clock=FakeClock(T0_US + 10 * MIN))) == ["idle-allocated"]
