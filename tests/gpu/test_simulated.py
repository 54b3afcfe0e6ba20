"""The simulated fleet against its own ground truth: the energy counter, the power sensor,
determinism, chunking, faults and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.clock import US_PER_S, FakeClock
from accounting.errors import GpuError, GpuLost
from accounting.gpu.backend import GpuBackend
from accounting.gpu.simulated import CHUNK_STEPS, STEP_US, SimGpu, SimulatedFleet
from accounting.gpu.workloads import FakeBusy, Inference, Training

START_US = 1_753_500_000 * US_PER_S  # a chunk boundary (a multiple of 10 minutes)
CHUNK_US = CHUNK_STEPS * STEP_US


def fleet_of(models: list[str], seed: int = 0, start_us: int = START_US):
    clock = FakeClock(start_us)
    return SimulatedFleet.build(models, clock=clock, seed=seed), clock


def uuids(fleet: SimulatedFleet) -> list[str]:
    return [g.uuid for g in fleet.gpus()]


def test_is_a_backend_with_canonical_names() -> None:
    fleet, _ = fleet_of(["H100 SXM", "A100 SXM", "H200 SXM"])
    assert isinstance(fleet, GpuBackend) and fleet.kind == "simulated"
    assert [g.name for g in fleet.gpus()] == [
        "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA H200"]  # fmt: skip
    assert [g.index for g in fleet.gpus()] == [0, 1, 2]


def test_uuids_deterministic_and_unique_across_nodes() -> None:
    a, _ = fleet_of(["H100 SXM"] * 4)
    again, _ = fleet_of(["H100 SXM"] * 4, seed=9)
    b = SimulatedFleet.build(["H100 SXM"] * 4, clock=FakeClock(START_US), node="other")
    assert uuids(a) == uuids(again)
    assert len(set(uuids(a)) | set(uuids(b))) == 8
    with pytest.raises(ValueError, match="duplicate"):
        SimulatedFleet([SimGpu("GPU-x", "L4", 0), SimGpu("GPU-x", "L4", 1)], clock=FakeClock(0))


def test_unknown_uuid_raises_gpu_error() -> None:
    fleet, _ = fleet_of(["L4"])
    with pytest.raises(GpuError):
        fleet.read("GPU-nope")
    with pytest.raises(GpuError):
        fleet.assign("GPU-nope", START_US, START_US + US_PER_S, FakeBusy())


def test_counter_deltas_equal_truth_on_step_boundaries() -> None:
    fleet, clock = fleet_of(["H100 SXM", "A100 SXM", "L4"], seed=5)
    for i, uuid in enumerate(uuids(fleet)):
        workload = [Training(), Inference(), FakeBusy()][i]
        fleet.assign(uuid, START_US + 30 * US_PER_S, START_US + 3_000 * US_PER_S, workload)
    rng = np.random.default_rng(1)
    # Irregular gaps (0.1 s … 15 min) that cross chunk boundaries and assignment edges.
    times = START_US + np.cumsum(rng.integers(1, 9_000, 40)) * STEP_US
    previous = {u: fleet.read(u) for u in uuids(fleet)}
    assert all(r.energy_mj > 0 for r in previous.values())  # the driver loaded long ago
    for t in times:
        clock.set(int(t))
        for uuid in uuids(fleet):
            now = fleet.read(uuid)
            truth_mj = fleet.true_energy_j(uuid, previous[uuid].timestamp_us, int(t)) * 1_000
            assert abs((now.energy_mj - previous[uuid].energy_mj) - truth_mj) < 1.0
            previous[uuid] = now


def test_counter_advances_only_at_step_boundaries() -> None:
    fleet, clock = fleet_of(["H100 SXM"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 60 * US_PER_S, Training())
    clock.set(START_US + 10 * US_PER_S + 1)
    first = fleet.read(uuid).energy_mj
    clock.set(START_US + 10 * US_PER_S + STEP_US - 1)
    assert fleet.read(uuid).energy_mj == first
    clock.set(START_US + 10 * US_PER_S + STEP_US)
    step_mj = fleet.true_power_w(uuid, START_US + 10 * US_PER_S) * 100  # W × 100 ms
    assert fleet.read(uuid).energy_mj - first == pytest.approx(step_mj, abs=1)


def test_mid_step_reads_lag_truth_by_less_than_a_step() -> None:
    fleet, clock = fleet_of(["A100 SXM"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 600 * US_PER_S, Training())
    r0 = fleet.read(uuid)
    clock.set(START_US + 123_456_789)
    r1 = fleet.read(uuid)
    truth_mj = fleet.true_energy_j(uuid, r0.timestamp_us, r1.timestamp_us) * 1_000
    assert 0 <= truth_mj - (r1.energy_mj - r0.energy_mj) < 400 * 100  # TDP × one step


def test_average_sensor_shows_a_step_gradually_instant_sensor_at_once() -> None:
    fleet, clock = fleet_of(["H100 SXM", "A100 SXM"])
    h100, a100 = uuids(fleet)
    on_us = START_US + 20 * US_PER_S
    for uuid in (h100, a100):
        fleet.assign(uuid, on_us, on_us + 60 * US_PER_S, Training(noise=0.0))
    h_busy_mw = round((70 + 0.85 * (700 - 70)) * 1_000)
    a_busy_mw = round((55 + 0.85 * (400 - 55)) * 1_000)
    clock.set(on_us - 1)
    assert fleet.read(h100).power_mw < 75_000 and fleet.read(a100).power_mw < 60_000
    clock.set(on_us + STEP_US)  # one step into the load
    assert fleet.read(a100).power_mw == a_busy_mw
    h_early = fleet.read(h100).power_mw
    assert 100_000 < h_early < 150_000  # ~1/10 of the way
    clock.set(on_us + 5 * STEP_US)
    assert fleet.read(h100).power_mw == pytest.approx((70_000 + h_busy_mw) / 2, rel=0.02)
    clock.set(on_us + 10 * STEP_US)
    assert fleet.read(h100).power_mw == h_busy_mw


def test_average_sensor_is_the_mean_of_truth_over_the_last_second() -> None:
    fleet, clock = fleet_of(["H200 SXM"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 300 * US_PER_S, Inference(burst_s=0.3))
    for t in START_US + np.arange(1, 200) * 1_234_567:
        clock.set(int(t))
        mean_w = fleet.true_energy_j(uuid, int(t) - US_PER_S, int(t))
        assert abs(fleet.read(uuid).power_mw - mean_w * 1_000) <= 1


def test_same_seed_same_everything_other_seed_differs() -> None:
    def run(seed: int) -> list[tuple]:
        fleet, clock = fleet_of(["H100 SXM", "A100 SXM"], seed=seed)
        for uuid in uuids(fleet):
            fleet.assign(uuid, START_US + US_PER_S, START_US + 900 * US_PER_S, Inference())
        out = []
        for _ in range(50):
            clock.advance(17.3)
            readings = map(fleet.read, uuids(fleet))
            out += [(r.energy_mj, r.power_mw, r.gpu_util_pct) for r in readings]
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_chunk_boundaries_are_invisible() -> None:
    fleet, _ = fleet_of(["H100 SXM"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 3 * CHUNK_US, Training(checkpoint_every_s=0))
    edge = START_US + CHUNK_US
    a, b = edge - 7_654_321, edge + 3_333_333
    whole = fleet.true_energy_j(uuid, a, b)
    assert whole == pytest.approx(
        fleet.true_energy_j(uuid, a, edge) + fleet.true_energy_j(uuid, edge, b), abs=1e-6)
    assert whole / ((b - a) / US_PER_S) == pytest.approx(605.5, rel=0.01)
    # A fresh fleet that renders only the second chunk sees the same power there.
    fresh, _ = fleet_of(["H100 SXM"])
    fresh.assign(uuid, START_US, START_US + 3 * CHUNK_US, Training(checkpoint_every_s=0))
    ts = edge + np.arange(0, 50) * STEP_US
    assert [fresh.true_power_w(uuid, int(t)) for t in ts] == [
        fleet.true_power_w(uuid, int(t)) for t in ts]  # fmt: skip


def test_true_power_is_constant_within_a_step() -> None:
    fleet, _ = fleet_of(["L40S"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 60 * US_PER_S, Training())
    t = START_US + 42 * STEP_US
    assert fleet.true_power_w(uuid, t) == fleet.true_power_w(uuid, t + STEP_US - 1)
    half_step_j = fleet.true_energy_j(uuid, t, t + STEP_US // 2)
    assert half_step_j == pytest.approx(fleet.true_power_w(uuid, t) * 0.05)


def test_assigning_from_now_on_never_changes_history() -> None:
    fleet, clock = fleet_of(["H100 SXM"])
    (uuid,) = uuids(fleet)
    clock.set(START_US + 125 * US_PER_S)
    before = fleet.read(uuid)
    past_j = fleet.true_energy_j(uuid, START_US, clock.now_us())
    fleet.assign(uuid, clock.now_us(), clock.now_us() + 60 * US_PER_S, Training())
    after = fleet.read(uuid)  # what looks back (counter, 1 s sensor, duty cycle) is unchanged
    assert (after.energy_mj, after.power_mw, after.gpu_util_pct) == (
        before.energy_mj, before.power_mw, before.gpu_util_pct)  # fmt: skip
    assert fleet.true_energy_j(uuid, START_US, clock.now_us()) == past_j
    assert fleet.true_power_w(uuid, clock.now_us()) > 500


def test_overlapping_assignments_rejected_adjacent_ones_fine() -> None:
    fleet, _ = fleet_of(["H100 SXM"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 60 * US_PER_S, Training())
    with pytest.raises(ValueError):
        fleet.assign(uuid, START_US + 59 * US_PER_S, START_US + 90 * US_PER_S, FakeBusy())
    with pytest.raises(ValueError):
        fleet.assign(uuid, START_US + 90 * US_PER_S, START_US + 90 * US_PER_S, FakeBusy())
    fleet.assign(uuid, START_US + 60 * US_PER_S, START_US + 90 * US_PER_S, FakeBusy())


def test_counter_reset_restarts_from_zero_and_never_otherwise_decreases() -> None:
    fleet, clock = fleet_of(["H100 SXM", "A100 SXM"])
    h100, a100 = uuids(fleet)
    fleet.assign(h100, START_US, START_US + 3_600 * US_PER_S, Training())
    reset_us = START_US + 1_000 * US_PER_S + 30_000  # mid-step: counting resumes next step
    fleet.reset_counter(h100, reset_us)
    last = {u: fleet.read(u).energy_mj for u in (h100, a100)}
    drops = []
    for _ in range(2_000):
        clock.advance(1.0)
        for uuid in (h100, a100):
            now = fleet.read(uuid).energy_mj
            if now < last[uuid]:
                drops.append((uuid, clock.now_us()))
            last[uuid] = now
    assert drops == [(h100, START_US + 1_001 * US_PER_S)]
    resumed_us = START_US + 1_000 * US_PER_S + STEP_US
    expected_mj = fleet.true_energy_j(h100, resumed_us, clock.now_us()) * 1_000
    assert abs(last[h100] - expected_mj) < 1


def test_lost_gpu_raises_only_in_its_window_then_restarts_its_counter() -> None:
    fleet, clock = fleet_of(["H200 SXM", "H200 SXM"])
    lost, ok = uuids(fleet)
    fleet.assign(lost, START_US, START_US + 600 * US_PER_S, Training())
    lose_from, lose_to = START_US + 100 * US_PER_S, START_US + 110 * US_PER_S
    fleet.lose(lost, lose_from, lose_to)
    clock.set(lose_from - 1)
    before = fleet.read(lost)
    for t in (lose_from, lose_from + 5 * US_PER_S, lose_to - 1):
        clock.set(t)
        with pytest.raises(GpuLost) as err:
            fleet.read(lost)
        assert err.value.uuid == lost
        assert fleet.read(ok).energy_mj > 0  # the other GPU answers
    clock.set(lose_to)
    assert fleet.read(lost).energy_mj == 0
    clock.set(lose_to + 10 * US_PER_S)
    after = fleet.read(lost)
    assert abs(after.energy_mj - fleet.true_energy_j(lost, lose_to, after.timestamp_us) * 1e3) < 1
    assert after.energy_mj < before.energy_mj
    # The GPU kept drawing while lost: truth counts it.
    assert fleet.true_energy_j(lost, lose_from, lose_to) == pytest.approx(10 * 605.5, rel=0.05)


def test_processes_reported_while_active() -> None:
    fleet, clock = fleet_of(["A100 SXM"])
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US + US_PER_S, START_US + 10 * US_PER_S, Training(pids=(41, 42)))
    assert fleet.read(uuid).processes == ()
    clock.set(START_US + 5 * US_PER_S)
    reading = fleet.read(uuid)
    assert [p.pid for p in reading.processes] == [41, 42]
    assert reading.memory_used_bytes > 60 * 2**30
    clock.set(START_US + 10 * US_PER_S)  # exited at 10 s: still in the read that closes [5 s, 10 s)
    assert [(p.pid, p.used_memory_bytes) for p in fleet.read(uuid).processes] == [(41, None), (42, None)]
    clock.set(START_US + 11 * US_PER_S)
    assert fleet.read(uuid).processes == ()


def test_memory_stays_bounded_over_days() -> None:
    fleet, clock = fleet_of(["H100 SXM"] * 2)
    for _ in range(3 * 24 * 60):
        clock.advance(60.0)
        for uuid in uuids(fleet):
            fleet.read(uuid)
    assert len(fleet._chunks) <= fleet._max_chunks
    assert all(len(g.checkpoints) <= 80 for g in fleet._gpus.values())


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 20_000), min_size=2, max_size=12),
    reset_after=st.integers(0, 200_000),
    seed=st.integers(0, 2**32),
)
def test_counter_matches_truth_between_resets(gaps: list[int], reset_after: int, seed: int) -> None:
    fleet, clock = fleet_of(["H100 SXM"], seed=seed)
    (uuid,) = uuids(fleet)
    fleet.assign(uuid, START_US, START_US + 10**6 * STEP_US, Inference(mean_load=0.6))
    reset_us = START_US + reset_after * STEP_US
    fleet.reset_counter(uuid, reset_us)
    prev = fleet.read(uuid)
    for gap in gaps:
        clock.advance(gap / 10)
        now = fleet.read(uuid)
        if prev.timestamp_us < reset_us <= now.timestamp_us:
            expected_mj = fleet.true_energy_j(uuid, reset_us, now.timestamp_us) * 1e3
            assert abs(now.energy_mj - expected_mj) < 1
        else:
            expected_mj = fleet.true_energy_j(uuid, prev.timestamp_us, now.timestamp_us) * 1e3
            assert abs(now.energy_mj - prev.energy_mj - expected_mj) < 1
        prev = now


def test_twelve_gpus_three_hours_at_1_hz_is_fast() -> None:
    models = ["H100 SXM"] * 4 + ["A100 SXM"] * 4 + ["H200 SXM"] * 4
    fleet, clock = fleet_of(models, seed=1)
    for i, uuid in enumerate(uuids(fleet)):
        workload = [Training(), Inference(), FakeBusy()][i % 3]
        fleet.assign(uuid, START_US + 60 * US_PER_S, START_US + 7_200 * US_PER_S, workload)
    started = time.perf_counter()
    for _ in range(3 * 3_600):
        clock.advance(1.0)
        for uuid in uuids(fleet):
            fleet.read(uuid)
    assert time.perf_counter() - started < 10.0  # ~1.5 s on a 2-core dev box
