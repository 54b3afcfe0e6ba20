"""Energy of one interval between two readings of the same GPU.

The NVML energy counter is the primary truth: the difference of two counter values is exact
however far apart the readings are. The counter restarts at a driver reload or GPU reset, so a
decrease is a reset, never negative energy; that interval and GPUs without a counter (pre-Volta)
fall back to integrating power, which is flagged by its method because the power sensor sees only
part of the runtime.
"""

from __future__ import annotations

from typing import Final

from accounting.clock import US_PER_S
from accounting.gpu.backend import GpuReading

METHOD_COUNTER: Final = "counter"
METHOD_POWER_INTEGRAL: Final = "power-integral"
METHOD_MISSING: Final = "missing"

# mW × µs = 1e-9 J = 1e-6 mJ
_MW_US_PER_MJ: Final = US_PER_S


def is_counter_reset(prev: GpuReading, cur: GpuReading) -> bool:
    """True when both readings carry the energy counter and it went down."""
    if prev.energy_mj is None or cur.energy_mj is None:
        return False
    return cur.energy_mj < prev.energy_mj


def power_integral_mj(
    prev_power_mw: int | None, cur_power_mw: int | None, dt_us: int
) -> int | None:
    """Trapezoid of two power readings over `dt_us`, rounded half-up to integer mJ.

    With only one of the two powers known it is held constant over the interval (a rectangle);
    with neither there is nothing to integrate and the answer is None.
    """
    if prev_power_mw is None and cur_power_mw is None:
        return None
    p0_mw = prev_power_mw if prev_power_mw is not None else cur_power_mw
    p1_mw = cur_power_mw if cur_power_mw is not None else prev_power_mw
    assert p0_mw is not None and p1_mw is not None
    # Integer arithmetic keeps the result exact before the single rounding step.
    # A negative power is a sensor glitch; energy is never negative.
    numerator = max(0, p0_mw + p1_mw) * dt_us
    denominator = 2 * _MW_US_PER_MJ
    return (numerator + denominator // 2) // denominator


def interval_energy(prev: GpuReading, cur: GpuReading) -> tuple[int, str]:
    """(energy_mj, method) consumed by one GPU between two of its readings.

    method is "counter" (exact counter difference), "power-integral" (counter reset or no
    counter) or "missing" (neither counter nor power: 0 mJ, so the gap is visible, not guessed).
    """
    if prev.uuid != cur.uuid:
        raise ValueError(f"readings of different GPUs: {prev.uuid!r} and {cur.uuid!r}")
    dt_us = cur.timestamp_us - prev.timestamp_us
    if dt_us <= 0:
        raise ValueError(f"non-positive time step {dt_us} µs between readings of {cur.uuid}")
    if prev.energy_mj is not None and cur.energy_mj is not None and cur.energy_mj >= prev.energy_mj:
        return cur.energy_mj - prev.energy_mj, METHOD_COUNTER
    energy_mj = power_integral_mj(prev.power_mw, cur.power_mw, dt_us)
    if energy_mj is None:
        return 0, METHOD_MISSING
    return energy_mj, METHOD_POWER_INTEGRAL
