"""GPM signals (SM, tensor, DRAM bandwidth) of the simulated fleet and the ground truth of useful
work they go with: per workload, per GPU generation, over the read window, on shared and MIG GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.backend import GpuReading
from accounting.gpu.sharing import legacy_account
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.specs import SPECS, get_spec
from accounting.gpu.trace import load_nvidia_smi_trace
from accounting.gpu.workloads import (
    TENSOR_EFFICIENCY,
    FakeBusy,
    IdleAllocated,
    Inference,
    TracePower,
    Training,
)

START_US = 1_753_500_000 * US_PER_S  # a chunk boundary
H100_PEAK = 989e12
HOUR_S = 3_600
TRACE_FILE = Path(__file__).resolve().parents[3] / "shared/data/nvidia-smi_8xH100_llm-training_2025-07-26_100ms.csv"


def at(seconds: float) -> int:
    return START_US + round(seconds * US_PER_S)


def one_gpu(model: str, workload, seconds: float, seed: int = 0) -> tuple[SimulatedFleet, FakeClock, str, str]:
    """A fleet of one GPU running `workload` exclusively from START_US; its uuid and account."""
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build([model], clock=clock, seed=seed)
    uuid = fleet.gpus()[0].uuid
    fleet.assign(uuid, START_US, at(seconds), workload)
    return fleet, clock, uuid, legacy_account(uuid, START_US)


def read_every(fleet: SimulatedFleet, clock: FakeClock, uuid: str, seconds: int) -> list[GpuReading]:
    """A read at the end of each of the next `seconds` seconds."""
    out = []
    for _ in range(seconds):
        clock.advance(1.0)
        out.append(fleet.read(uuid))
    return out


def gpm(r: GpuReading) -> tuple[float | None, float | None, float | None]:
    return r.sm_active_pct, r.tensor_active_pct, r.dram_bw_pct


# useful work of training


@pytest.mark.parametrize("checkpoint_every_s", [600, 0])
def test_training_at_mfu_04_for_an_hour_does_exactly_mfu_times_peak_times_time(checkpoint_every_s) -> None:
    fleet, clock, uuid, account = one_gpu("H100 SXM", Training(mfu=0.4, checkpoint_every_s=checkpoint_every_s), HOUR_S)
    expected = 0.4 * H100_PEAK * HOUR_S
    assert fleet.true_flops(account, START_US, at(HOUR_S)) == pytest.approx(expected, rel=1e-9)
    work = fleet.true_work(account, at(-60), at(HOUR_S + 60))  # time outside the run adds nothing
    assert work["flops"] == pytest.approx(expected, rel=1e-9)
    assert work["mfu"] == pytest.approx(0.4, rel=1e-9) and work["gpu_s"] == HOUR_S
    assert work["capacity_flops"] == pytest.approx(H100_PEAK * HOUR_S, rel=1e-12) and work["tokens"] is None
    readings = read_every(fleet, clock, uuid, HOUR_S)
    computing = [r for r in readings if r.gpu_util_pct >= 95]
    # Tensor activity follows the FLOP rate ÷ 0.85; with checkpoints the rate while computing makes up
    # for the pauses (600 s periods, 20 s of pause), and the hour's mean is mfu ÷ 0.85 all the same.
    boost = 600 / 580 if checkpoint_every_s else 1.0
    assert all(r.tensor_active_pct == pytest.approx(40 / 0.85 * boost, abs=0.5) for r in computing)
    mean_tensor = sum(r.tensor_active_pct for r in readings) / len(readings)
    assert mean_tensor == pytest.approx(40 / TENSOR_EFFICIENCY, rel=1e-3)
    assert all(90 <= r.sm_active_pct <= 98 and 30 <= r.dram_bw_pct <= 50 for r in computing)
    pausing = [r for r in readings if r.gpu_util_pct <= 3]
    assert len(pausing) == (6 * 20 if checkpoint_every_s else 0)  # whole-second reads: no window straddles one
    assert all(r.tensor_active_pct == 0 and r.sm_active_pct <= 2 and r.dram_bw_pct <= 1 for r in pausing)


def test_the_rate_while_computing_makes_up_for_the_pauses_of_this_run() -> None:
    # 3600 s: 34800 of 36000 steps compute. Inside a computing stretch, partial steps pro rata.
    fleet, _, _, account = one_gpu("H100 SXM", Training(mfu=0.4), HOUR_S)
    rate = 0.4 * H100_PEAK * 36_000 / 34_800
    assert fleet.true_flops(account, at(100.05), at(200.05)) == pytest.approx(rate * 100, rel=1e-9)
    assert fleet.true_flops(account, at(585), at(595)) == 0.0  # a checkpoint pause
    # 1190 s: a full period (200 pause steps) and 100 pause steps of the second, not its 200.
    fleet, _, _, account = one_gpu("H100 SXM", Training(mfu=0.4), 1_190)
    assert fleet.true_flops(account, START_US, at(1_190)) == pytest.approx(0.4 * H100_PEAK * 1_190, rel=1e-9)


def test_training_without_mfu_keeps_its_power_and_implies_one_from_power_fraction() -> None:
    fleet, clock, uuid, account = one_gpu("H100 SXM", Training(power_fraction=0.6, checkpoint_every_s=0), 600)
    assert fleet.true_work(account, START_US, at(600))["mfu"] == pytest.approx(0.47 * 0.6, rel=1e-9)
    r = read_every(fleet, clock, uuid, 10)[-1]
    assert r.tensor_active_pct == pytest.approx(100 * 0.47 * 0.6 / 0.85, abs=0.5)


def test_a100_has_no_gpm_but_its_work_is_still_known() -> None:
    fleet, clock, uuid, account = one_gpu("A100 SXM", Training(mfu=0.4, checkpoint_every_s=0), 600)
    readings = read_every(fleet, clock, uuid, 300)
    assert all(gpm(r) == (None, None, None) for r in readings)
    assert all(r.gpu_util_pct >= 95 for r in readings)  # the duty cycle still reads
    assert fleet.true_flops(account, START_US, at(600)) == pytest.approx(0.4 * 312e12 * 600, rel=1e-9)


def test_gpm_exists_on_hopper_and_newer_only() -> None:
    assert {m for m, spec in SPECS.items() if spec.has_gpm} == {"H100 SXM", "H100 PCIe", "H200 SXM", "B200", "GB200"}


# what each workload looks like


def test_fake_busy_reads_full_duty_with_idle_tensor_pipes() -> None:
    fleet, clock, uuid, account = one_gpu("H100 SXM", FakeBusy(pids=(7,)), 900)
    readings = read_every(fleet, clock, uuid, 600)
    assert all(r.gpu_util_pct == 100 for r in readings)
    assert all(r.tensor_active_pct == 0 and 0 < r.sm_active_pct < 5 and r.dram_bw_pct <= 1 for r in readings)
    assert fleet.true_flops(account, START_US, at(900)) == 0.0


@pytest.mark.parametrize("model", ["H100 SXM", "H200 SXM", "B200"])
def test_memory_bound_inference_streams_dram_and_barely_uses_tensor_pipes(model) -> None:
    fleet, clock, uuid, account = one_gpu(model, Inference(mean_load=0.5, burst_s=2.0), 1_200, seed=4)
    readings = read_every(fleet, clock, uuid, 1_200)  # 1 s windows inside the 2 s bursts
    serving = [r for r in readings if r.gpu_util_pct > 0]
    assert 400 < len(serving) < 800
    assert all(r.dram_bw_pct >= 60 and 5 <= r.tensor_active_pct < 15 and 30 <= r.sm_active_pct <= 70 for r in serving)
    assert all(gpm(r) == (0, 0, 0) for r in readings if r.gpu_util_pct == 0)
    # Useful FLOP/s follow tensor activity: 0.85 × tensor × peak.
    peak = get_spec(model).peak_bf16_flops
    mean_tensor = sum(r.tensor_active_pct for r in readings) / len(readings)
    flops = fleet.true_flops(account, START_US, at(1_200))
    assert flops == pytest.approx(0.85 * mean_tensor / 100 * peak * 1_200, rel=1e-9)


def test_compute_bound_inference_uses_tensor_pipes_more_than_dram() -> None:
    fleet, clock, uuid, _ = one_gpu("H100 SXM", Inference(mean_load=0.5, memory_bound=False), 600, seed=4)
    serving = [r for r in read_every(fleet, clock, uuid, 600) if r.gpu_util_pct > 0]
    assert serving and all(r.tensor_active_pct >= 29 and r.dram_bw_pct < 50 for r in serving)


@pytest.mark.parametrize("workload", [IdleAllocated(pids=(9,)), None])
def test_an_idle_or_idle_allocated_gpu_shows_zero_activity_not_none(workload) -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock)
    uuid = fleet.gpus()[0].uuid
    if workload is not None:
        fleet.assign(uuid, START_US, at(600), workload)
    readings = read_every(fleet, clock, uuid, 300)
    assert all(gpm(r) == (0, 0, 0) and r.gpu_util_pct == 0 for r in readings)


def test_trace_replay_tensor_activity_is_proportional_to_its_duty_cycle() -> None:
    if not TRACE_FILE.exists():
        pytest.skip("real trace not found")
    trace = load_nvidia_smi_trace(TRACE_FILE)
    fleet, clock, uuid, account = one_gpu("H100 SXM", TracePower(trace, 2, offset_s=200.0), 600)
    readings = read_every(fleet, clock, uuid, 400)
    assert max(r.tensor_active_pct for r in readings) > 40
    # 1 s reads: the GPM window and the duty cycle's last 10 steps coincide (the duty cycle is rounded).
    assert all(r.tensor_active_pct == pytest.approx(0.5 * r.gpu_util_pct, abs=0.26) for r in readings)
    assert all(r.sm_active_pct == pytest.approx(0.95 * r.gpu_util_pct, abs=0.5) for r in readings)
    mean_tensor = sum(r.tensor_active_pct for r in readings) / len(readings)
    assert fleet.true_flops(account, START_US, at(400)) == pytest.approx(
        0.85 * mean_tensor / 100 * H100_PEAK * 400, rel=1e-9)  # fmt: skip


# the read window


def test_means_cover_the_time_since_the_previous_read() -> None:
    clock = FakeClock(at(-1))
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock)
    uuid = fleet.gpus()[0].uuid
    fleet.assign(uuid, START_US, at(10), Training(mfu=0.4, checkpoint_every_s=0))
    busy = 40 / 0.85
    assert gpm(fleet.read(uuid)) == (0, 0, 0)  # the first read: the last second, idle
    clock.set(at(4))  # [-1, 4): one idle second, then four training
    assert fleet.read(uuid).tensor_active_pct == pytest.approx(busy * 4 / 5, abs=0.1)
    clock.set(at(4.05))  # within 100 ms: none this time, and the window keeps its start
    assert gpm(fleet.read(uuid)) == (None, None, None)
    clock.set(at(14))  # [4, 14): six of ten seconds training
    assert fleet.read(uuid).tensor_active_pct == pytest.approx(busy * 0.6, abs=0.1)


def test_window_means_add_up_however_often_one_reads() -> None:
    """Two fleets of one seed, one read every 0.37 s, the other at the ends only: the long window's
    mean is the time-weighted mean of the short ones (partial steps and a chunk edge included)."""
    times = [at(595.03) + 370_000 * k for k in range(28)]  # crosses the chunk edge at 600 s
    means: dict[str, list[float]] = {}
    for name, reads in (("often", times), ("ends", [times[0], times[-1]])):
        fleet, clock, uuid, _ = one_gpu("H200 SXM", Inference(mean_load=0.7, burst_s=0.5), 1_200, seed=9)
        means[name] = []
        for t_us in reads:
            clock.set(t_us)
            means[name].append(fleet.read(uuid).tensor_active_pct)
    short = means["often"][1:]  # the first read of each covers the second before it
    assert len(set(short)) > 10  # bursts on and off: the means differ
    assert means["ends"][1] == pytest.approx(sum(short) / len(short), rel=1e-9)


# shared and MIG GPUs


def test_shared_gpu_device_activity_is_the_sum_of_its_tenants_capped_at_100() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock)
    uuid = fleet.gpus()[0].uuid
    fleet.assign(uuid, START_US, at(600), Training(mfu=0.4, checkpoint_every_s=0), tenant="a:1")
    fleet.assign(uuid, START_US, at(600), Training(mfu=0.3, checkpoint_every_s=0), tenant="b:1")
    fleet.assign(uuid, at(300), at(600), Training(mfu=0.4, checkpoint_every_s=0), tenant="c:1")
    two = read_every(fleet, clock, uuid, 300)[1:]
    assert all(r.tensor_active_pct == pytest.approx((40 + 30) / 0.85, abs=0.5) for r in two)
    assert all(r.sm_active_pct == pytest.approx(100) for r in two)  # 90–98 % each
    # Two tenants fit in the tensor pipes: each does its own work exactly.
    assert fleet.true_flops("a:1", START_US, at(300)) == pytest.approx(0.4 * H100_PEAK * 300, rel=1e-9)
    assert fleet.true_flops("b:1", START_US, at(300)) == pytest.approx(0.3 * H100_PEAK * 300, rel=1e-9)
    # Three ask for 129 % of the tensor pipes: they share 100 %, each slowed by the same factor.
    three = read_every(fleet, clock, uuid, 299)[1:]
    assert all(r.tensor_active_pct == pytest.approx(100) for r in three)
    flops = {t: fleet.true_flops(t, at(300), at(600)) for t in ("a:1", "b:1", "c:1")}
    assert sum(flops.values()) == pytest.approx(0.85 * H100_PEAK * 300, rel=2e-3)
    assert flops["a:1"] == pytest.approx(flops["c:1"], rel=2e-3)
    assert flops["a:1"] / flops["b:1"] == pytest.approx(4 / 3, rel=2e-3)
    assert fleet.true_work("a:1", at(300), at(600))["mfu"] < 0.4


def test_mig_parent_activity_weights_instances_by_slices_and_work_scales_with_them() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock)
    uuid = fleet.gpus()[0].uuid
    big, small, _ = fleet.enable_mig(uuid, ["3g.40gb", "2g.20gb", "1g.10gb"])
    fleet.assign(big, START_US, at(600), Training(mfu=0.4, checkpoint_every_s=0), tenant="train:1")
    fleet.assign(small, START_US, at(600), FakeBusy(), tenant="busy:1")
    readings = read_every(fleet, clock, uuid, 300)[1:]
    assert all(r.tensor_active_pct == pytest.approx(40 / 0.85 * 3 / 7, abs=0.3) for r in readings)
    assert all(r.sm_active_pct == pytest.approx((94 * 3 + 2 * 2) / 7, abs=2) for r in readings)
    assert all(len(r.mig) == 3 and r.gpu_util_pct is None for r in readings)  # MIG: no duty cycle
    work = fleet.true_work("train:1", START_US, at(600))
    assert work["flops"] == pytest.approx(0.4 * H100_PEAK * 3 / 7 * 600, rel=1e-9)
    assert work["gpu_s"] == pytest.approx(600 * 3 / 7) and work["mfu"] == pytest.approx(0.4, rel=1e-9)


# ground truth per account


def test_true_work_sums_a_tenants_runs_over_gpus_and_counts_tokens_where_modelled() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM", "B200"], clock=clock)
    h100, b200 = (g.uuid for g in fleet.gpus())
    params = 8e9
    fleet.assign(h100, START_US, at(600), Training(mfu=0.4, checkpoint_every_s=0, params=params), tenant="j:1")
    fleet.assign(b200, START_US, at(600), Training(mfu=0.5, checkpoint_every_s=0, params=params), tenant="j:1")
    fleet.assign(b200, at(600), at(900), Inference(params=params), tenant="serve:1")
    work = fleet.true_work("j:1", START_US, at(600))
    flops = (0.4 * H100_PEAK + 0.5 * 2250e12) * 600
    assert work["flops"] == pytest.approx(flops, rel=1e-9)
    assert work["tokens"] == pytest.approx(flops / (6 * params), rel=1e-9)
    assert work["mfu"] == pytest.approx(flops / ((H100_PEAK + 2250e12) * 600), rel=1e-9)
    assert fleet.true_flops("j:1", START_US, at(600), uuid=h100) == pytest.approx(0.4 * H100_PEAK * 600, rel=1e-9)
    serve = fleet.true_work("serve:1", START_US, at(900))
    assert serve["tokens"] == pytest.approx(serve["flops"] / (2 * params), rel=1e-12) and serve["flops"] > 0
    nobody = fleet.true_work("nobody:1", START_US, at(900))
    assert (nobody["flops"], nobody["tokens"], nobody["gpu_s"], nobody["mfu"]) == (0.0, None, 0.0, None)
    with pytest.raises(ValueError):
        fleet.true_work("j:1", at(10), at(5))


def test_bad_useful_work_arguments() -> None:
    for bad in (0.0, 0.9, -0.1):
        with pytest.raises(ValueError):
            Training(mfu=bad)
    with pytest.raises(ValueError):
        Training(params=0)
    with pytest.raises(ValueError):
        Inference(params=-1)
    if TRACE_FILE.exists():
        with pytest.raises(ValueError):
            TracePower(load_nvidia_smi_trace(TRACE_FILE), 0, tensor_per_util=1.5)
