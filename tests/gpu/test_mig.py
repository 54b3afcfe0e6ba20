"""MIG on the simulated fleet: layouts, instance identities, what NVML reads, per-instance activity
and the ground truth per account."""

from __future__ import annotations

import time

import pytest

from accounting.clock import US_PER_S, FakeClock
from accounting.errors import GpuError, GpuNotSupported
from accounting.gpu.backend import GpuBackend
from accounting.gpu.sharing import IDLE, UNATTRIBUTED, legacy_account
from accounting.gpu.simulated import STEP_US, SimulatedFleet
from accounting.gpu.specs import get_spec
from accounting.gpu.workloads import Inference, Training

START_US = 1_753_500_000 * US_PER_S  # a chunk boundary
H100 = get_spec("H100 SXM")
DYNAMIC_W = H100.tdp_w - H100.idle_w


def at(seconds: float) -> int:
    return START_US + round(seconds * US_PER_S)


def steady(fraction: float) -> Training:
    return Training(power_fraction=fraction, checkpoint_every_s=0, noise=0.0)


def fleet_of(models: list[str], seed: int = 0) -> tuple[SimulatedFleet, FakeClock]:
    clock = FakeClock(START_US)
    return SimulatedFleet.build(models, clock=clock, seed=seed), clock


def assert_accounts_add_up(fleet: SimulatedFleet, uuid: str, start_us: int, end_us: int) -> dict:
    accounts = fleet.true_account_energies_j(start_us, end_us, uuid=uuid)
    assert sum(accounts.values()) == pytest.approx(fleet.true_energy_j(uuid, start_us, end_us), rel=1e-12)
    return accounts


def test_layout_names_and_listing() -> None:
    fleet, _ = fleet_of(["H100 SXM", "H100 SXM"])
    mig, plain = (g.uuid for g in fleet.gpus())
    ids = fleet.enable_mig(mig, ["3g.40gb", "2g.20gb", "2g.20gb"])
    assert len(set(ids)) == 3 and all(i.startswith("MIG-") and len(i) == 40 for i in ids)
    infos = fleet.mig_instances(mig)
    assert [i.uuid for i in infos] == ids
    assert [(i.name, i.index, i.parent_uuid, i.mig_profile, i.mig_slices) for i in infos] == [
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 0, mig, "3g.40gb", 3),
        ("NVIDIA H100 80GB HBM3 MIG 2g.20gb", 1, mig, "2g.20gb", 2),
        ("NVIDIA H100 80GB HBM3 MIG 2g.20gb", 2, mig, "2g.20gb", 2),
    ]
    assert [g.uuid for g in fleet.gpus()] == [mig, plain]  # physical GPUs only
    assert fleet.mig_instances(plain) == [] and fleet.mig_instances(ids[0]) == []
    with pytest.raises(GpuError):
        fleet.mig_instances("GPU-nope")
    again, _ = fleet_of(["H100 SXM", "H100 SXM"], seed=5)
    assert again.enable_mig(mig, ["3g.40gb", "2g.20gb", "2g.20gb"]) == ids  # deterministic
    assert isinstance(fleet, GpuBackend)


def test_bad_layouts_are_refused() -> None:
    fleet, _ = fleet_of(["H100 SXM", "L4", "A100 SXM 40GB", "H200 SXM", "A100 SXM"])
    h100, l4, a100_40, h200, a100 = (g.uuid for g in fleet.gpus())
    for uuid, profiles in ((l4, ["1g.10gb"]), (h100, ["1g.5gb"]), (h100, ["4g.40gb", "4g.40gb"]),
                           (h100, []), (a100_40, ["1g.20gb"])):  # fmt: skip
        with pytest.raises(ValueError):
            fleet.enable_mig(uuid, profiles)
    assert fleet.mig_instances(h100) == []  # a refused layout leaves MIG off
    assert len(fleet.enable_mig(a100_40, ["3g.20gb", "4g.20gb"])) == 2
    assert len(fleet.enable_mig(h200, ["3g.71gb", "3g.40gb", "1g.18gb"])) == 3
    with pytest.raises(ValueError):
        fleet.enable_mig(h200, ["1g.10gb"])  # already on
    fleet.assign(a100, at(0), at(60), Training())
    with pytest.raises(ValueError):
        fleet.enable_mig(a100, ["7g.80gb"])  # it already runs something
    (whole,) = fleet.enable_mig(h100, ["7g.80gb"])
    with pytest.raises(ValueError):
        fleet.assign(h100, at(0), at(60), Training())  # MIG on: the parent runs nothing itself
    with pytest.raises(ValueError):
        fleet.enable_mig(whole, ["1g.10gb"])


def test_reads_meter_the_whole_gpu_and_refuse_instances() -> None:
    fleet, clock = fleet_of(["H100 SXM"])
    (uuid,) = (g.uuid for g in fleet.gpus())
    small, big = fleet.enable_mig(uuid, ["1g.10gb", "4g.40gb"])
    fleet.assign(big, at(0), at(600), steady(0.8), tenant="slurm:1")
    fleet.assign(small, at(0), at(600), Inference(), tenant="slurm:2")
    with pytest.raises(GpuNotSupported) as err:
        fleet.read(big)
    assert err.value.uuid == big
    previous = fleet.read(uuid)
    for _ in range(50):
        clock.advance(3.7)
        now = fleet.read(uuid)
        truth_mj = fleet.true_energy_j(uuid, previous.timestamp_us, now.timestamp_us) * 1_000
        assert abs(now.energy_mj - previous.energy_mj - truth_mj) < 1
        assert (now.gpu_util_pct, now.memory_util_pct, now.processes) == (None, None, ())
        assert [m.uuid for m in now.mig] == [small, big]
        previous = now
    # The 4g instance's dynamic power is scaled to its 4 of 7 slices.
    busy_w = H100.idle_w + 0.8 * DYNAMIC_W * 4 / 7
    assert fleet.true_energy_j(uuid, at(100), at(110)) / 10 == pytest.approx(busy_w, abs=2 + 0.7 * DYNAMIC_W / 7)


def test_instance_activity_is_its_share_of_its_own_capacity() -> None:
    fleet, clock = fleet_of(["H100 SXM"])
    (uuid,) = (g.uuid for g in fleet.gpus())
    ids = fleet.enable_mig(uuid, ["3g.40gb", "2g.20gb", "1g.10gb"])
    fleet.assign(ids[0], at(0), at(600), steady(0.8), tenant="a:1")
    fleet.assign(ids[1], at(20), at(600), steady(0.5), tenant="b:1")  # starts mid-window
    clock.set(at(10))
    first = {m.uuid: m.activity_pct for m in fleet.read(uuid).mig}  # the last second
    assert first[ids[0]] == pytest.approx(80, abs=0.5) and first[ids[1]] == first[ids[2]] == 0
    clock.set(at(30))
    since = {m.uuid: m.activity_pct for m in fleet.read(uuid).mig}  # since the read at 10 s
    assert since[ids[1]] == pytest.approx(25, abs=0.5) and since[ids[0]] == pytest.approx(80, abs=0.5)
    clock.set(at(31))
    assert {m.uuid: m.activity_pct for m in fleet.read(uuid).mig}[ids[1]] == pytest.approx(50, abs=0.5)


def test_seven_small_instances_partly_assigned_add_up() -> None:
    fleet, _ = fleet_of(["H100 SXM"], seed=7)
    (uuid,) = (g.uuid for g in fleet.gpus())
    ids = fleet.enable_mig(uuid, ["1g.10gb"] * 7)
    fleet.assign(ids[0], at(0), at(1_200), steady(0.6), tenant="a:1")
    fleet.assign(ids[1], at(0), at(1_200), Inference(mean_load=0.7), tenant="b:1")
    fleet.assign(ids[1], at(300), at(900), steady(0.2), tenant="c:1")  # co-tenants in one instance
    fleet.assign(ids[2], at(0), at(1_200), steady(0.3), tenant=None)  # nobody's process
    fleet.assign(ids[3], at(100.05), at(700), Training())  # exclusive, legacy
    # ids[4:] never run anything
    accounts = assert_accounts_add_up(fleet, uuid, at(50), at(1_000))
    assert set(accounts) == {IDLE, UNATTRIBUTED, "a:1", "b:1", "c:1", legacy_account(ids[3], at(100.05))}
    dt = 950
    # A sole tenant of a 1g instance pays a 7th of the baseline plus its own dynamic power.
    assert accounts["a:1"] == pytest.approx((H100.idle_w + 0.6 * DYNAMIC_W) / 7 * dt, rel=2e-3)
    # Nobody's process pays no baseline: its 7th, and the empty instances', are idle.
    assert accounts[UNATTRIBUTED] == pytest.approx(0.3 * DYNAMIC_W / 7 * dt, rel=5e-3)
    assert accounts[IDLE] > 4 / 7 * H100.idle_w * dt * 0.99
    for a, b in ((at(0), at(1)), (at(299.95), at(900.05)), (at(0), at(1_200)), (at(1_200), at(1_300))):
        assert_accounts_add_up(fleet, uuid, a, b)
    assert fleet.true_account_energy_j(IDLE, at(1_200), at(1_300)) == pytest.approx(
        fleet.true_energy_j(uuid, at(1_200), at(1_300)), rel=1e-12)  # fmt: skip


def test_three_and_two_two_layout_partly_assigned_adds_up() -> None:
    fleet, _ = fleet_of(["H100 SXM"], seed=8)
    (uuid,) = (g.uuid for g in fleet.gpus())
    big, mid, spare = fleet.enable_mig(uuid, ["3g.40gb", "2g.20gb", "2g.20gb"])
    fleet.assign(big, at(0), at(600), steady(0.9), tenant="slurm:9")
    fleet.assign(mid, at(0), at(600), steady(0.4), tenant="k8s:pod")
    accounts = assert_accounts_add_up(fleet, uuid, at(10), at(590))
    dt = 580
    assert accounts[IDLE] == pytest.approx(2 / 7 * H100.idle_w * dt, rel=2e-3)  # the empty 2g
    assert accounts["slurm:9"] == pytest.approx(3 / 7 * (H100.idle_w + 0.9 * DYNAMIC_W) * dt, rel=2e-3)
    assert accounts["k8s:pod"] == pytest.approx(2 / 7 * (H100.idle_w + 0.4 * DYNAMIC_W) * dt, rel=2e-3)
    assert fleet.true_account_energy_j("slurm:9", at(10), at(590)) == accounts["slurm:9"]
    # A whole-fleet query sums over GPUs.
    assert fleet.true_account_energy_j("slurm:9", at(10), at(590), uuid=None) == accounts["slurm:9"]
    assert spare not in accounts


def test_a100_mig_and_a_seven_instance_gpu_read_for_an_hour_is_fast() -> None:
    fleet, clock = fleet_of(["A100 SXM", "H100 SXM"], seed=2)
    a100, h100 = (g.uuid for g in fleet.gpus())
    a_ids = fleet.enable_mig(a100, ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"])
    h_ids = fleet.enable_mig(h100, ["1g.10gb"] * 7)
    for i, inst in enumerate(a_ids + h_ids):
        fleet.assign(inst, START_US, at(3_700), Inference(mean_load=0.1 * (i % 8 + 1)), tenant=f"job:{i}")
    started = time.perf_counter()
    for _ in range(3_600):
        clock.advance(1.0)
        assert len(fleet.read(h100).mig) == 7
        fleet.read(a100)
    assert time.perf_counter() - started < 5.0  # ~0.3 s on a dev box
    assert_accounts_add_up(fleet, a100, START_US, at(3_600))
    assert_accounts_add_up(fleet, h100, START_US + STEP_US // 3, at(3_600))


def test_slices_no_instance_holds_are_idle() -> None:
    fleet, _ = fleet_of(["H200 SXM"], seed=9)
    (uuid,) = (g.uuid for g in fleet.gpus())
    spec = get_spec("H200 SXM")
    big, small = fleet.enable_mig(uuid, ["4g.71gb", "1g.18gb"])  # 2 of 7 slices unused
    fleet.assign(big, at(0), at(600), steady(0.7), tenant="a:1")
    fleet.assign(small, at(0), at(600), steady(0.7), tenant="b:1")
    accounts = assert_accounts_add_up(fleet, uuid, at(1), at(599))
    assert accounts[IDLE] == pytest.approx(2 / 7 * spec.idle_w * 598, rel=2e-3)
    assert accounts["a:1"] / accounts["b:1"] == pytest.approx(4, rel=1e-3)


def test_co_tenants_of_one_instance_share_only_its_slices() -> None:
    fleet, clock = fleet_of(["H100 SXM"])
    (uuid,) = (g.uuid for g in fleet.gpus())
    two, other = fleet.enable_mig(uuid, ["2g.20gb", "1g.10gb"])
    fleet.assign(two, at(0), at(60), steady(0.8), tenant="a:1")
    fleet.assign(two, at(0), at(60), steady(0.7), tenant="b:1")  # 1.5 × the instance together
    fleet.assign(other, at(0), at(60), steady(0.5), tenant="c:1")
    idle_only, _ = fleet_of(["H100 SXM"])
    for s in range(0, 60, 5):
        dynamic_w = fleet.true_power_w(uuid, at(s)) - idle_only.true_power_w(uuid, at(s))
        assert dynamic_w == pytest.approx((2 + 0.5) / 7 * DYNAMIC_W, abs=0.5)
    clock.set(at(30))
    activity = {m.uuid: m.activity_pct for m in fleet.read(uuid).mig}
    assert activity[two] == pytest.approx(100, abs=0.2) and activity[other] == pytest.approx(50, abs=0.2)
    accounts = assert_accounts_add_up(fleet, uuid, at(0), at(60))
    share_a = (accounts["a:1"] - accounts["b:1"]) / 60  # the baseline halves cancel
    assert share_a == pytest.approx(2 / 7 * DYNAMIC_W * (0.8 - 0.7) / 1.5, rel=0.02)
