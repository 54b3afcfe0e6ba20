"""interval_energy: counter deltas, resets, pre-Volta power integration, missing data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounting.gpu.backend import GpuReading
from accounting.metering.energy import (
    interval_energy,
    is_counter_reset,
    power_integral_mj,
)

T0_US = 1_750_000_000_000_000


def reading(t_us: int, energy_mj: int | None, power_mw: int | None, uuid: str = "GPU-a"):
    return GpuReading(uuid=uuid, timestamp_us=t_us, energy_mj=energy_mj, power_mw=power_mw)


def test_counter_delta_is_exact_and_ignores_power():
    prev = reading(T0_US, 1_000_000, 300_000)
    cur = reading(T0_US + 1_000_000, 1_712_345, 10)  # power disagrees: the counter wins
    assert interval_energy(prev, cur) == (712_345, "counter")


def test_counter_unchanged_is_zero_counter_energy():
    prev = reading(T0_US, 5, 300_000)
    cur = reading(T0_US + 50_000, 5, 300_000)
    assert interval_energy(prev, cur) == (0, "counter")


def test_counter_reset_falls_back_to_trapezoid_never_negative():
    prev = reading(T0_US, 9_000_000_000, 200_000)
    cur = reading(T0_US + 2_000_000, 1_500, 400_000)
    energy_mj, method = interval_energy(prev, cur)
    # (200 W + 400 W) / 2 × 2 s = 600 J
    assert (energy_mj, method) == (600_000, "power-integral")
    assert is_counter_reset(prev, cur)


def test_pre_volta_without_counter_integrates_power():
    prev = reading(T0_US, None, 100_000)
    cur = reading(T0_US + 500_000, None, 300_000)
    assert interval_energy(prev, cur) == (100_000, "power-integral")  # 200 W × 0.5 s
    assert not is_counter_reset(prev, cur)


def test_counter_on_one_side_only_integrates_power():
    prev = reading(T0_US, None, 100_000)
    cur = reading(T0_US + 1_000_000, 42, 100_000)
    assert interval_energy(prev, cur) == (100_000, "power-integral")


def test_one_power_reading_is_held_constant():
    prev = reading(T0_US, None, None)
    cur = reading(T0_US + 3_000_000, None, 70_000)
    assert interval_energy(prev, cur) == (210_000, "power-integral")


def test_no_counter_and_no_power_is_missing():
    prev = reading(T0_US, None, None)
    cur = reading(T0_US + 1_000_000, None, None)
    assert interval_energy(prev, cur) == (0, "missing")


def test_reset_without_power_is_missing():
    prev = reading(T0_US, 10_000, None)
    cur = reading(T0_US + 1_000_000, 3, None)
    assert interval_energy(prev, cur) == (0, "missing")


def test_power_integral_rounds_half_up_to_integer_mj():
    assert power_integral_mj(1, 0, 1_000_000) == 1  # 0.5 mJ → 1
    assert power_integral_mj(1, 0, 999_999) == 0  # 0.4999995 mJ → 0
    assert power_integral_mj(3, 3, 1) == 0


def test_negative_power_glitch_gives_no_negative_energy():
    prev = reading(T0_US, None, -5_000)
    cur = reading(T0_US + 1_000_000, None, -5_000)
    assert interval_energy(prev, cur) == (0, "power-integral")


@pytest.mark.parametrize("dt_us", [0, -1, -1_000_000])
def test_non_positive_time_step_is_refused(dt_us):
    with pytest.raises(ValueError, match="time step"):
        interval_energy(reading(T0_US, 0, 1), reading(T0_US + dt_us, 1, 1))


def test_readings_of_different_gpus_are_refused():
    with pytest.raises(ValueError, match="different GPUs"):
        interval_energy(reading(T0_US, 0, 1), reading(T0_US + 1, 1, 1, uuid="GPU-b"))


@given(
    e0=st.integers(0, 2**62),
    e1=st.integers(0, 2**62),
    p0=st.none() | st.integers(0, 2_000_000),
    p1=st.none() | st.integers(0, 2_000_000),
    dt_us=st.integers(1, 10**10),
)
def test_energy_is_never_negative_and_method_matches(e0, e1, p0, p1, dt_us):
    energy_mj, method = interval_energy(reading(T0_US, e0, p0), reading(T0_US + dt_us, e1, p1))
    assert energy_mj >= 0
    if e1 >= e0:
        assert (energy_mj, method) == (e1 - e0, "counter")
    elif p0 is None and p1 is None:
        assert (energy_mj, method) == (0, "missing")
    else:
        assert method == "power-integral"
        watts = [p for p in (p0, p1) if p is not None]
        # The integral lies between the lowest and highest power held for the whole interval.
        assert min(watts) * dt_us // 1_000_000 <= energy_mj <= -(-max(watts) * dt_us // 1_000_000)
