"""The part-time power sensor ("part-time-25") and kernel bursts within a step: the sensor sees the
first 25 ms of each 100 ms step, the counter and the truth see every millisecond."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from accounting.clock import US_PER_S, FakeClock
from accounting.gpu.simulated import STEP_US, SimulatedFleet
from accounting.gpu.workloads import Inference, KernelBursts, Training

START_US = 1_753_500_000 * US_PER_S  # a chunk boundary
RUN_S = 600
STEADY = Training(checkpoint_every_s=0)


def run(workload, sensor: str | None = "part-time-25", *, seed: int = 0, model: str = "H100 SXM", read_s: int = 300):
    """Readings every second over read_s of a run of `workload` on one GPU."""
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build([model], clock=clock, seed=seed, power_sensor=sensor)
    uuid = fleet.gpus()[0].uuid
    fleet.assign(uuid, START_US, START_US + RUN_S * US_PER_S, workload)
    readings = []
    for _ in range(read_s):
        clock.advance(1)
        readings.append(fleet.read(uuid))
    return fleet, uuid, readings


def true_mean_mw(fleet: SimulatedFleet, uuid: str, r) -> float:
    return fleet.true_energy_j(uuid, r.timestamp_us - US_PER_S, r.timestamp_us) * 1_000


@pytest.mark.parametrize("workload", [
    KernelBursts(STEADY, period_ms=50), KernelBursts(Inference(mean_load=0.6), period_ms=30, random_phase=True),
])  # fmt: skip
def test_bursts_and_sensor_leave_counter_and_truth_unchanged(workload: KernelBursts) -> None:
    fleet, uuid, part_time = run(workload)
    plain_fleet, _, plain = run(workload.inner, sensor=None)
    assert [r.energy_mj for r in part_time] == [r.energy_mj for r in plain]
    end_us = part_time[-1].timestamp_us
    assert fleet.true_energy_j(uuid, START_US, end_us) == plain_fleet.true_energy_j(uuid, START_US, end_us)
    # Everything but the power reading is what the inner workload shows.
    assert [r.gpu_util_pct for r in part_time] == [r.gpu_util_pct for r in plain]


def test_on_a_flat_load_the_part_time_sensor_reads_the_true_mean() -> None:
    fleet, uuid, readings = run(STEADY)
    for r in readings[2:]:  # on a whole second: the last 10 slices are the last 10 steps
        assert abs(r.power_mw - true_mean_mw(fleet, uuid, r)) <= 1


def test_the_reading_covers_the_last_ten_slices_that_have_ended() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock, power_sensor="part-time-25")
    uuid = fleet.gpus()[0].uuid
    fleet.assign(uuid, START_US, START_US + RUN_S * US_PER_S, STEADY)
    step = START_US // STEP_US + 50
    for into_ms, last_step in ((10, step - 1), (25, step), (90, step)):
        clock.set(step * STEP_US + into_ms * 1_000)
        powers = [fleet.true_power_w(uuid, k * STEP_US) * 1_000 for k in range(last_step - 9, last_step + 1)]
        assert abs(fleet.read(uuid).power_mw - statistics.fmean(powers)) <= 1


def test_a_burst_train_locked_to_the_sensor_misreads_power() -> None:
    # A 50 ms period divides the step: the bursts keep one phase against the 25 ms slice all run long.
    fleet, uuid, readings = run(KernelBursts(STEADY, period_ms=50))
    errors = [r.power_mw / true_mean_mw(fleet, uuid, r) - 1 for r in readings[2:]]
    assert abs(statistics.fmean(errors)) > 0.05
    assert max(errors) - min(errors) < 0.05  # locked: the same bias every second


def test_a_burst_train_that_fits_the_slice_is_read_exactly() -> None:
    # A 25 ms period: every slice holds exactly one whole period, so it sees the step's mean.
    fleet, uuid, readings = run(KernelBursts(STEADY, period_ms=25, duty=0.3))
    assert all(abs(r.power_mw - true_mean_mw(fleet, uuid, r)) <= 2 for r in readings[2:])


def test_random_phase_bursts_scatter_readings_around_the_truth() -> None:
    fleet, uuid, readings = run(KernelBursts(STEADY, period_ms=50, random_phase=True), read_s=RUN_S - 1)
    errors = np.array([r.power_mw / true_mean_mw(fleet, uuid, r) - 1 for r in readings[2:]])
    assert np.abs(errors).max() > 0.05  # any one reading may be well off
    assert abs(errors.mean()) < 0.01  # but no bias: the phases average out


def test_same_seed_same_readings_other_seed_differs() -> None:
    workload = KernelBursts(Inference(mean_load=0.5), period_ms=40, random_phase=True)
    first = [r.power_mw for r in run(workload, seed=3, read_s=60)[2]]
    assert first == [r.power_mw for r in run(workload, seed=3, read_s=60)[2]]
    assert first != [r.power_mw for r in run(workload, seed=4, read_s=60)[2]]


def test_fleet_sensor_override_and_defaults() -> None:
    _, _, a100 = run(KernelBursts(STEADY, period_ms=50), sensor=None, model="A100 SXM", read_s=3)
    _, _, a100_part = run(KernelBursts(STEADY, period_ms=50), model="A100 SXM", read_s=3)
    assert a100[-1].power_mw != a100_part[-1].power_mw  # the catalog's "instant" sensor was replaced
    with pytest.raises(ValueError, match="power_sensor"):
        SimulatedFleet.build(["H100 SXM"], clock=FakeClock(START_US), power_sensor="sometimes")  # type: ignore[arg-type]


def test_bad_burst_arguments() -> None:
    for kwargs in ({"period_ms": 0}, {"period_ms": 150}, {"duty": 0}, {"duty": 1.5}, {"floor": -0.1}):
        with pytest.raises(ValueError):
            KernelBursts(STEADY, **kwargs)
    bursty = KernelBursts(Training(params=1e9, pids=(5,)))
    assert bursty.pids == (5,) and bursty.tokens_per_flop == Training(params=1e9).tokens_per_flop


def test_co_tenants_each_add_their_own_bursts() -> None:
    clock = FakeClock(START_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock, power_sensor="part-time-25")
    uuid = fleet.gpus()[0].uuid
    end_us = START_US + RUN_S * US_PER_S
    fleet.assign(uuid, START_US, end_us, Inference(mean_load=1.0), tenant="slurm:1")
    fleet.assign(uuid, START_US, end_us, KernelBursts(Training(checkpoint_every_s=0, power_fraction=0.3),
                                                      period_ms=50), tenant="slurm:2")  # fmt: skip
    errors = []
    for _ in range(120):
        clock.advance(1)
        r = fleet.read(uuid)
        errors.append(r.power_mw / true_mean_mw(fleet, uuid, r) - 1)
    assert abs(statistics.fmean(errors[2:])) > 0.02  # the bursty co-tenant's part is misread
    assert sum(fleet.true_account_energies_j(START_US, clock.now_us()).values()) == pytest.approx(
        fleet.true_energy_j(uuid, START_US, clock.now_us()))  # fmt: skip
