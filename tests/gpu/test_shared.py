"""Shared GPUs on the simulated fleet (time-slicing / MPS): co-tenants' power, the ground truth per
account, per-process SM utilization and process owners."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.backend import ProcessOwner, ProcessResolver
from accounting.gpu.sharing import IDLE, UNATTRIBUTED, UNKNOWN_USER, legacy_account
from accounting.gpu.simulated import CHUNK_STEPS, STEP_US, SimulatedFleet
from accounting.gpu.specs import get_spec
from accounting.gpu.workloads import FakeBusy, Inference, Training

START_US = 1_753_500_000 * US_PER_S  # a chunk boundary
CHUNK_US = CHUNK_STEPS * STEP_US
H100 = get_spec("H100 SXM")
DYNAMIC_W = H100.tdp_w - H100.idle_w  # 630 W


def steady(fraction: float, pids: tuple[int, ...] = ()) -> Training:
    """Exactly constant power: idle + fraction × (TDP − idle), whole mW."""
    return Training(power_fraction=fraction, checkpoint_every_s=0, noise=0.0, pids=pids)


def steady_w(fraction: float) -> float:
    return round((H100.idle_w + fraction * DYNAMIC_W) * 1_000) / 1_000


def one_h100(seed: int = 0) -> tuple[SimulatedFleet, FakeClock, str]:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock, seed=seed)
    return fleet, clock, fleet.gpus()[0].uuid


def at(seconds: float) -> int:
    return START_US + round(seconds * US_PER_S)


def three_tenants(fleet: SimulatedFleet, uuid: str) -> None:
    """Unequal co-tenants that come and go, and a process that belongs to no job."""
    fleet.assign(uuid, at(10), at(1_500), Training(power_fraction=0.5), tenant="slurm:1")
    fleet.assign(uuid, at(100.05), at(900), Inference(mean_load=0.6), tenant="slurm:2")
    fleet.assign(uuid, at(300), at(2_000), FakeBusy(), tenant="k8s:pod-3")
    fleet.assign(uuid, at(700), at(1_100), Inference(mean_load=0.3), tenant=None)


def assert_accounts_add_up(fleet: SimulatedFleet, uuid: str | None, start_us: int, end_us: int) -> dict:
    accounts = fleet.true_account_energies_j(start_us, end_us, uuid=uuid)
    gpus = [uuid] if uuid else [g.uuid for g in fleet.gpus()]
    truth_j = sum(fleet.true_energy_j(u, start_us, end_us) for u in gpus)
    assert sum(accounts.values()) == pytest.approx(truth_j, rel=1e-12, abs=1e-6)
    for account, joules in accounts.items():
        assert fleet.true_account_energy_j(account, start_us, end_us, uuid=uuid) == joules
    return accounts


def test_overlapping_tenants_add_their_dynamic_power() -> None:
    alone_a, _, uuid = one_h100()
    alone_a.assign(uuid, at(0), at(60), steady(0.3), tenant="a:1")
    alone_b, _, _ = one_h100()
    alone_b.assign(uuid, at(20), at(80), steady(0.2), tenant="b:1")
    both, _, _ = one_h100()
    both.assign(uuid, at(0), at(60), steady(0.3), tenant="a:1")
    both.assign(uuid, at(20), at(80), steady(0.2), tenant="b:1")
    idle, _, _ = one_h100()  # the same seed: the same idle baseline
    for k in range(0, 900, 7):
        t = START_US + k * STEP_US
        base = idle.true_power_w(uuid, t)
        expected = base + (alone_a.true_power_w(uuid, t) - base) + (alone_b.true_power_w(uuid, t) - base)
        assert both.true_power_w(uuid, t) == pytest.approx(expected, abs=1e-9)
    assert both.true_power_w(uuid, at(30)) == pytest.approx(steady_w(0.3) + steady_w(0.2) - base, abs=0.5)


def test_co_tenants_are_capped_at_tdp_and_their_parts_still_add_up() -> None:
    fleet, _, uuid = one_h100()
    loads = {"a:1": 0.6, "b:1": 0.5, "c:1": 0.4}  # 1.5 × the dynamic range together
    for tenant, fraction in loads.items():
        fleet.assign(uuid, at(0), at(60), steady(fraction), tenant=tenant)
    assert {fleet.true_power_w(uuid, at(s)) for s in range(0, 60, 3)} == {H100.tdp_w}
    accounts = assert_accounts_add_up(fleet, uuid, at(0), at(60))
    assert accounts[IDLE] == 0
    dynamic_j = {t: accounts[t] - accounts["c:1"] for t in loads}  # idle thirds cancel
    # Every part scaled by the same factor: differences keep the loads' proportions.
    assert dynamic_j["a:1"] / dynamic_j["b:1"] == pytest.approx((0.6 - 0.4) / (0.5 - 0.4), rel=1e-3)


def test_exclusive_assignments_still_refuse_any_overlap() -> None:
    fleet, _, uuid = one_h100()
    fleet.assign(uuid, at(0), at(60), Training())  # legacy: exclusive
    with pytest.raises(ValueError):
        fleet.assign(uuid, at(30), at(90), FakeBusy(), tenant="a:1")
    fleet.assign(uuid, at(60), at(120), FakeBusy(), tenant="a:1")
    fleet.assign(uuid, at(90), at(150), FakeBusy(), tenant=None)  # tenants may overlap
    with pytest.raises(ValueError):
        fleet.assign(uuid, at(140), at(200), Training())
    for bad in ("", IDLE, UNATTRIBUTED, "legacy:x", 7):
        with pytest.raises(ValueError):
            fleet.assign(uuid, at(300), at(400), FakeBusy(), tenant=bad)


def test_truth_accounts_add_up_with_three_unequal_tenants_and_an_unknown_process() -> None:
    fleet, _, uuid = one_h100(seed=4)
    three_tenants(fleet, uuid)
    accounts = assert_accounts_add_up(fleet, uuid, START_US, at(2_400))
    assert set(accounts) == {IDLE, UNATTRIBUTED, "slurm:1", "slurm:2", "k8s:pod-3"}
    # Heavier load, more energy; the unknown process pays no baseline.
    assert accounts["slurm:1"] > accounts["slurm:2"] > accounts[UNATTRIBUTED] > 0
    # Before anyone starts and after everyone left, the idle account is the GPU's whole energy.
    assert fleet.true_account_energy_j(IDLE, START_US, at(10), uuid=uuid) == pytest.approx(
        fleet.true_energy_j(uuid, START_US, at(10)), rel=1e-12)  # fmt: skip
    assert fleet.true_account_energy_j("slurm:1", at(1_500), at(2_400)) == 0
    # With the unknown process alone the baseline stays idle: it pays only its dynamic part.
    fleet2, _, uuid2 = one_h100(seed=4)
    fleet2.assign(uuid2, at(0), at(60), steady(0.2), tenant=None)
    alone = assert_accounts_add_up(fleet2, uuid2, at(0), at(60))
    assert alone[IDLE] == pytest.approx(H100.idle_w * 60, rel=2e-3)
    assert alone[UNATTRIBUTED] == pytest.approx((steady_w(0.2) - H100.idle_w) * 60, rel=2e-3)


def test_baseline_is_split_evenly_among_known_tenants() -> None:
    fleet, _, uuid = one_h100(seed=2)
    loads = {"a:1": 0.5, "b:1": 0.2, None: 0.1}
    for tenant, fraction in loads.items():
        fleet.assign(uuid, at(0), at(600), steady(fraction), tenant=tenant)
    t0, t1 = at(12.34), at(543.21)
    dt = (t1 - t0) / US_PER_S
    true_j = fleet.true_energy_j(uuid, t0, t1)
    # true = idle + Σ (Pᵢ − idle), every Pᵢ known exactly: so the idle energy is known too.
    idle_j = (sum(steady_w(f) for f in loads.values()) * dt - true_j) / (len(loads) - 1)
    accounts = assert_accounts_add_up(fleet, uuid, t0, t1)
    assert accounts[IDLE] == 0
    assert accounts["a:1"] == pytest.approx(steady_w(0.5) * dt - idle_j + idle_j / 2, rel=1e-9)
    assert accounts["b:1"] == pytest.approx(steady_w(0.2) * dt - idle_j + idle_j / 2, rel=1e-9)
    assert accounts[UNATTRIBUTED] == pytest.approx(steady_w(0.1) * dt - idle_j, rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    a=st.integers(0, 2 * CHUNK_STEPS * STEP_US + 900_000_000),
    length=st.integers(0, 2 * CHUNK_STEPS * STEP_US),
    seed=st.integers(0, 2**32),
)
def test_truth_accounts_add_up_over_any_range(a: int, length: int, seed: int) -> None:
    fleet, _, uuid = one_h100(seed=seed)
    three_tenants(fleet, uuid)
    assert_accounts_add_up(fleet, uuid, START_US + a, START_US + a + length)


def test_legacy_single_assignment_account_is_the_gpus_energy() -> None:
    """The legacy path, checked without NumPy: the exclusive run pays for everything."""
    fleet, _, uuid = one_h100()
    start, end = at(5.1), at(725.5)  # on step edges: power changes only there
    fleet.assign(uuid, start, end, Training())
    whole = fleet.true_energy_j(uuid, start, end)
    legacy = fleet.true_account_energy_j(legacy_account(uuid, start), start, end)
    assert abs(legacy - whole) <= 1e-9 * whole
    assert fleet.true_account_energy_j(IDLE, start, end) == 0.0
    before = fleet.true_account_energy_j(IDLE, START_US, start)
    assert abs(before - fleet.true_energy_j(uuid, START_US, start)) <= 1e-9 * before
    assert fleet.true_account_energy_j("nobody:1", START_US, end) == 0.0


def test_all_gpus_accounts_add_up_across_a_fleet() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM", "A100 SXM", "L4"], clock=clock, seed=3)
    h100, a100, l4 = (g.uuid for g in fleet.gpus())
    three_tenants(fleet, h100)
    fleet.assign(a100, at(0), at(900), Inference(), tenant="slurm:1")
    fleet.assign(l4, at(60), at(300), Training())
    accounts = assert_accounts_add_up(fleet, None, START_US, at(1_800))
    one = fleet.true_account_energy_j("slurm:1", START_US, at(1_800), uuid=h100)
    assert accounts["slurm:1"] == pytest.approx(
        one + fleet.true_account_energy_j("slurm:1", START_US, at(1_800), uuid=a100), rel=1e-12)  # fmt: skip


def test_process_sm_util_follows_each_tenants_dynamic_energy() -> None:
    fleet, clock, uuid = one_h100(seed=1)
    loads = {"a:1": 0.5, "b:1": 0.25, None: 0.1}
    for tenant, fraction in loads.items():
        fleet.assign(uuid, at(0), at(600), steady(fraction), tenant=tenant)
    clock.set(at(30))
    fleet.read(uuid)
    prev_us = clock.now_us()
    for gap_s in (1.0, 0.25, 7.3, 60.0, 1.0):
        clock.advance(gap_s)
        reading = fleet.read(uuid)
        procs = reading.processes
        assert len(procs) == 3 and len({p.pid for p in procs}) == 3
        owners = [fleet.owner(p.pid).job_key for p in procs]
        assert owners == list(loads)  # in the order assigned
        pct = [p.sm_util_pct for p in procs]
        assert pct[0] > pct[1] > pct[2] > 0
        assert pct[0] == pytest.approx(50, abs=0.5) and pct[2] == pytest.approx(10, abs=0.5)
        # Σ weights × (TDP − idle) × dt is the dynamic energy (the GPU's energy above idle).
        dt = (reading.timestamp_us - prev_us) / US_PER_S
        true_j = fleet.true_energy_j(uuid, prev_us, reading.timestamp_us)
        idle_j = (sum(steady_w(f) for f in loads.values()) * dt - true_j) / (len(loads) - 1)
        assert sum(pct) / 100 * DYNAMIC_W * dt == pytest.approx(true_j - idle_j, rel=1e-9)
        prev_us = reading.timestamp_us


def test_sm_util_covers_the_time_since_the_previous_read() -> None:
    fleet, clock, uuid = one_h100()
    fleet.assign(uuid, at(0), at(600), steady(0.4, pids=(11,)), tenant="a:1")
    fleet.assign(uuid, at(105), at(600), steady(0.6, pids=(12,)), tenant="b:1")
    clock.set(at(100))
    first = fleet.read(uuid)  # a first read covers the last second
    assert [p.pid for p in first.processes] == [11]
    assert first.processes[0].sm_util_pct == pytest.approx(40, abs=0.2)
    clock.set(at(110))
    late = {p.pid: p.sm_util_pct for p in fleet.read(uuid).processes}
    assert late[12] == pytest.approx(30, abs=0.2)  # 60 % for the last half of the 10 s
    clock.set(at(111))
    assert {p.pid: p.sm_util_pct for p in fleet.read(uuid).processes}[12] == pytest.approx(60, abs=0.2)


def test_processes_split_a_runs_utilization_and_derive_pids_when_none_given() -> None:
    fleet, clock, uuid = one_h100()
    fleet.assign(uuid, at(0), at(60), steady(0.5, pids=(21, 22)), tenant="a:1")
    fleet.assign(uuid, at(0), at(60), steady(0.1), tenant="b:1")
    fleet.assign(uuid, at(0), at(60), steady(0.1), tenant="b:1")  # a second run of the same job
    clock.set(at(30))
    procs = fleet.read(uuid).processes
    assert [p.pid for p in procs][:2] == [21, 22] and len({p.pid for p in procs}) == 4
    assert procs[0].sm_util_pct == procs[1].sm_util_pct == pytest.approx(25, abs=0.2)
    assert all(p.used_memory_bytes > 0 for p in procs)
    again, clock2, _ = one_h100()
    for tenant, w in (("a:1", steady(0.5, pids=(21, 22))), ("b:1", steady(0.1)), ("b:1", steady(0.1))):
        again.assign(uuid, at(0), at(60), w, tenant=tenant)
    clock2.set(at(30))
    assert again.read(uuid).processes == procs  # deterministic, derived pids included


def test_legacy_runs_list_only_their_own_pids() -> None:
    fleet, clock, uuid = one_h100()
    fleet.assign(uuid, at(0), at(60), Training())
    fleet.assign(uuid, at(60), at(120), Training(pids=(5,)))
    clock.set(at(30))
    assert fleet.read(uuid).processes == ()
    clock.set(at(90))
    (proc,) = fleet.read(uuid).processes
    assert proc.pid == 5 and proc.sm_util_pct == pytest.approx(85 / 2, abs=3)  # since 30 s, on since 60 s
    assert fleet.owner(5) == ProcessOwner(None)  # the allocation, not the node, knows the job


def test_owner_resolves_tenants_unknown_processes_and_strangers() -> None:
    fleet, clock, uuid = one_h100()
    assert isinstance(fleet, ProcessResolver)
    fleet.assign(uuid, at(0), at(60), FakeBusy(pids=(31,)), tenant="demo:chat-serving")
    fleet.assign(uuid, at(0), at(60), FakeBusy(pids=(32,)), tenant="demo:chat-serving")
    fleet.assign(uuid, at(0), at(60), FakeBusy(pids=(33,)), tenant=None)
    chat = fleet.owner(31)
    assert chat.job_key == "demo:chat-serving" and chat.user and chat.user != UNKNOWN_USER
    assert fleet.owner(32) == chat  # a job's user is stable
    assert fleet.owner(33) == ProcessOwner(None, UNKNOWN_USER)
    assert fleet.owner(99_999_999) == ProcessOwner(None)
    # A pid reused later by another job resolves by time.
    fleet.assign(uuid, at(100), at(160), FakeBusy(pids=(31,)), tenant="slurm:7")
    assert fleet.owner(31).job_key == "demo:chat-serving"
    clock.set(at(120))
    assert fleet.owner(31).job_key == "slurm:7"


def test_three_tenants_read_every_second_for_an_hour_is_fast() -> None:
    fleet, clock, uuid = one_h100()
    for tenant, w in (("a:1", Training()), ("b:1", Inference()), (None, FakeBusy())):
        fleet.assign(uuid, START_US, at(3_700), w, tenant=tenant)
    started = time.perf_counter()
    for _ in range(3_600):
        clock.advance(1.0)
        assert len(fleet.read(uuid).processes) == 3
    assert time.perf_counter() - started < 5.0  # well under a second on a dev box
