"""What each workload looks like to NVML on the simulated fleet, including a real-trace replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.simulated import STEP_US, SimulatedFleet
from accounting.gpu.specs import get_spec
from accounting.gpu.trace import PowerTrace, load_nvidia_smi_trace
from accounting.gpu.workloads import FakeBusy, IdleAllocated, Inference, TracePower, Training

START_US = 1_753_500_000 * US_PER_S
TRACE_FILE = (
    Path(__file__).resolve().parents[3]
    / "shared/data/nvidia-smi_8xH100_llm-training_2025-07-26_100ms.csv"
)


def one_gpu(model: str, workload, seconds: int, seed: int = 0):
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build([model], clock=clock, seed=seed)
    uuid = fleet.gpus()[0].uuid
    fleet.assign(uuid, START_US, START_US + seconds * US_PER_S, workload)
    return fleet, clock, uuid


def sample(fleet, clock, uuid, seconds: int, every_s: float = 1.0):
    readings = []
    for _ in range(int(seconds / every_s)):
        clock.advance(every_s)
        readings.append(fleet.read(uuid))
    return readings


def test_idle_gpu_draws_idle_power_at_zero_util() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock)
    readings = sample(fleet, clock, fleet.gpus()[0].uuid, 120)
    assert all(68_000 < r.power_mw < 72_000 for r in readings)
    assert all(r.gpu_util_pct == 0 and r.processes == () for r in readings)


def test_fake_busy_reads_100_percent_at_near_idle_power() -> None:
    spec = get_spec("H100 SXM")
    fleet, clock, uuid = one_gpu("H100 SXM", FakeBusy(pids=(7,)), 600)
    readings = sample(fleet, clock, uuid, 300)[2:]
    assert all(r.gpu_util_pct == 100 for r in readings)
    near_idle_mw = (spec.idle_w + 0.15 * (spec.tdp_w - spec.idle_w)) * 1_000
    assert all(r.power_mw < near_idle_mw for r in readings)
    assert [p.pid for p in readings[-1].processes] == [7]


def test_idle_allocated_is_idle() -> None:
    fleet, clock, uuid = one_gpu("A100 SXM", IdleAllocated(pids=(9,)), 600)
    readings = sample(fleet, clock, uuid, 300)
    assert all(r.gpu_util_pct == 0 for r in readings)
    assert all(50_000 < r.power_mw < 60_000 for r in readings)
    assert readings[-1].processes[0].pid == 9


def test_training_runs_hot_and_dips_at_checkpoints() -> None:
    spec = get_spec("H100 SXM")
    fleet, clock, uuid = one_gpu("H100 SXM", Training(), 1_300)
    busy_w = spec.idle_w + 0.85 * (spec.tdp_w - spec.idle_w)
    mid_run = START_US + 300 * US_PER_S
    assert fleet.true_energy_j(uuid, mid_run, mid_run + 60 * US_PER_S) / 60 == pytest.approx(
        busy_w, rel=0.01)  # fmt: skip
    # Checkpoints fill the last 20 s of every 600 s.
    ckpt = START_US + 585 * US_PER_S
    assert fleet.true_energy_j(uuid, ckpt, ckpt + 10 * US_PER_S) / 10 < spec.idle_w + 40
    readings = sample(fleet, clock, uuid, 1_300)
    by_second = {i + 1: r for i, r in enumerate(readings)}
    assert all(by_second[s].gpu_util_pct >= 95 for s in (10, 300, 579, 610, 1_000))
    assert all(by_second[s].gpu_util_pct <= 5 for s in (583, 590, 599, 1_185))
    assert by_second[1_000].sm_clock_mhz > 1_500


def test_inference_is_bursty_around_its_mean_load() -> None:
    spec = get_spec("L40S")
    fleet, _, uuid = one_gpu("L40S", Inference(mean_load=0.4, burst_s=2.0), 3_600)
    steps = START_US + np.arange(0, 36_000) * STEP_US
    power_w = np.array([fleet.true_power_w(uuid, int(t)) for t in steps])
    on = power_w > spec.idle_w + 10
    assert on.mean() == pytest.approx(0.4, abs=0.05)
    assert power_w.max() <= 0.75 * spec.tdp_w  # ~0.7 TDP at most, plus noise
    runs = np.flatnonzero(np.diff(on.astype(int)))
    assert len(runs) > 300  # it switches often: bursts, not one long job
    assert np.all(np.diff(runs) % 20 == 0)  # switching happens only on 2 s burst edges


@pytest.fixture(scope="module")
def trace() -> PowerTrace:
    if not TRACE_FILE.exists():
        pytest.skip("real trace not found")
    return load_nvidia_smi_trace(TRACE_FILE)


def test_trace_replay_energy_equals_the_trace_integral(trace: PowerTrace) -> None:
    length_us = trace.n_steps * STEP_US
    for column in (0, 5):
        fleet, _, uuid = one_gpu("H100 SXM", TracePower(trace, column), 3 * trace.n_steps // 10)
        replay_j = fleet.true_energy_j(uuid, START_US, START_US + length_us)
        assert replay_j == pytest.approx(trace.energy_j(column), abs=1e-3)
        # Longer than the trace: it loops.
        looped_j = fleet.true_energy_j(uuid, START_US + length_us, START_US + 2 * length_us)
        assert looped_j == pytest.approx(replay_j, abs=1e-3)
        k = 3_000
        assert fleet.true_power_w(uuid, START_US + k * STEP_US) == pytest.approx(
            trace.watts[column, k])  # fmt: skip


def test_trace_replay_counter_and_util(trace: PowerTrace) -> None:
    fleet, clock, uuid = one_gpu("H100 SXM", TracePower(trace, 2, offset_s=200.0), 600)
    first = fleet.read(uuid)
    readings = sample(fleet, clock, uuid, 400)
    measured_j = (readings[-1].energy_mj - first.energy_mj) / 1_000
    expected_j = trace.watts[2, 2_000 : 2_000 + 4_000].sum() * 0.1
    assert measured_j == pytest.approx(expected_j, abs=1e-3)
    assert max(r.gpu_util_pct for r in readings) >= 95
    assert max(r.power_mw for r in readings) < 700_000


def test_bad_workload_arguments() -> None:
    with pytest.raises(ValueError):
        Training(power_fraction=1.5)
    with pytest.raises(ValueError):
        Training(checkpoint_every_s=60, checkpoint_s=60)
    with pytest.raises(ValueError):
        Inference(mean_load=2)
    with pytest.raises(ValueError):
        Inference(burst_s=0.01)
