"""How a simulated GPU's tenants combine into one chunk of 100 ms steps: the shared idle baseline,
power caps, duty cycles, memory, clocks, device-level GPM activity and each tenant's true useful
work, with running sums so that any window of the chunk integrates in O(1).

Device-level GPM activity (what NVML's GPM reports for the whole GPU) per step: within a pool (the
whole GPU, or one MIG instance), the co-tenants' activities add up, capped at 100 % of the pool;
pools add up weighted by their share of the GPU (a MIG instance's slices / 7). Useful work: a
tenant's FLOP rate is scaled by its share, like its dynamic power, and where a pool's co-tenants
ask for more than 100 % tensor activity together, each one's FLOP rate shrinks by the same factor
(they time-slice the tensor pipes), so no GPU does more than TENSOR_EFFICIENCY × peak.

The part-time sensor's view: in each step's first 25 ms slice a tenant draws its dynamic power ×
its Frame's `window_gain` (workloads.py), over the one idle baseline, never below 0 W; chunks with
no bursty tenant keep no series of their own (the slice sees the step's mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from accounting.gpu.specs import GpuSpec
from accounting.gpu.workloads import (
    BASE_MEMORY_MIB,
    IDLE_SM_CLOCK_MHZ,
    STEP_MS,
    STEP_US,
    RenderContext,
    Workload,
)

CHUNK_STEPS = 6_000  # 10 simulated minutes: the simulated fleet renders and caches chunks this long
_IDLE_NOISE = 0.003  # relative sd of idle draw per step (the real trace idles within ±0.1 W)
_STEP_S = STEP_MS / 1_000
SIGNALS = ("sm_active_pct", "tensor_active_pct", "dram_bw_pct")  # the rows of Chunk.activity_cum


class Tenant(NamedTuple):
    start_step: int
    end_step: int
    workload: Workload
    rng: np.random.Generator  # per (seed, GPU, chunk, assignment)
    key: int  # per (seed, GPU, assignment)
    share: float = 1.0  # the part of the GPU it runs on: 1, or a MIG instance's slices / 7
    pool: str = ""  # tenants of one pool (the GPU, or one MIG instance) share its part of the GPU


@dataclass(slots=True)
class Chunk:
    """One GPU's per-step series over a run of steps, with running sums for O(1) windows.

    Row j of `dynamic_mw` is tenant j's dynamic power (its power above the idle baseline, after
    the TDP cap), zero outside `spans[j]`; the rows and `idle_mw` add up to `power_mw` exactly.
    """

    power_mw: np.ndarray  # int64 per step
    cum_uj: np.ndarray  # int64, n + 1: energy since the chunk's start (mW × ms = µJ)
    util_cum: np.ndarray  # int64, n + 1: running sum of the duty cycle
    mem_util_pct: np.ndarray
    memory_used_mib: np.ndarray
    sm_clock_mhz: np.ndarray
    idle_mw: np.ndarray  # int64 per step: the baseline the GPU draws with nothing running
    dynamic_mw: np.ndarray  # int64, (tenants, n)
    dynamic_cum_uj: np.ndarray  # int64, (tenants, n + 1): running sums of dynamic_mw × 100 ms
    spans: tuple[tuple[int, int], ...]  # per tenant: its steps [lo, hi) within the chunk
    activity_cum: np.ndarray  # float64, (3, n + 1): running sums of the device-level SIGNALS, % × steps
    flops_cum: np.ndarray  # float64, (tenants, n + 1): each tenant's true useful FLOPs since the start
    # int64, n + 1: running sum of the power the part-time sensor sees per step; None: flat (power_mw)
    sensed_cum: np.ndarray | None = None

    def util_sum(self, lo: int, hi: int) -> int:
        """Σ of the duty cycle over steps [lo, hi)."""
        return int(self.util_cum[hi] - self.util_cum[lo])

    def sensed_mw_sum(self, lo: int, hi: int) -> int:
        """Σ over steps [lo, hi) of the mean power in each step's part-time sensor slice, mW."""
        if self.sensed_cum is None:
            return int(self.cum_uj[hi] - self.cum_uj[lo]) // STEP_MS  # cum_uj sums power × 100 ms
        return int(self.sensed_cum[hi] - self.sensed_cum[lo])

    def activity_pct_steps(self, lo_us: int, hi_us: int) -> np.ndarray:
        """The integral of each device-level signal over [lo, hi) µs from the chunk's start, in % × steps."""
        return _at(self.activity_cum, hi_us) - _at(self.activity_cum, lo_us)

    def flops(self, lo_us: int, hi_us: int) -> np.ndarray:
        """Each tenant's useful FLOPs over [lo, hi) µs from the chunk's start."""
        return _at(self.flops_cum, hi_us) - _at(self.flops_cum, lo_us)


def _at(cum: np.ndarray, x_us: int) -> np.ndarray:
    """Running sums (last axis) at x µs into the chunk, a partial step pro rata."""
    i, r = divmod(x_us, STEP_US)
    at = cum[..., i]
    return at + (cum[..., i + 1] - at) * (r / STEP_US) if r else at


def render_chunk(
    spec: GpuSpec, first_step: int, n: int, idle_rng: np.random.Generator,
    tenants: Sequence[Tenant],
) -> Chunk:  # fmt: skip
    """Steps [first_step, first_step + n): the idle baseline, with each tenant's workload
    rendered over its part of the run.

    Co-tenants add their dynamic power over the one shared baseline, within limits (see _cap).
    A tenant with share < 1 (on a MIG instance) has its dynamic power, memory and useful work
    scaled to that share of the GPU; GPM activity combines as the module docstring says.
    """
    steps = np.arange(first_step, first_step + n, dtype=np.int64)
    noise = 1 + _IDLE_NOISE * idle_rng.standard_normal(n)
    idle_mw = np.rint(spec.idle_w * 1_000 * noise).astype(np.int64)
    util = np.zeros(n, dtype=np.int64)
    mem_util = np.zeros(n, dtype=np.int16)
    memory_mib = np.full(n, BASE_MEMORY_MIB, dtype=np.int32)
    clock = np.full(n, IDLE_SM_CLOCK_MHZ, dtype=np.int16)
    dynamic = np.zeros((len(tenants), n), dtype=np.int64)
    active = np.zeros((len(tenants), n), dtype=bool)
    signals = np.zeros((len(tenants), len(SIGNALS), n))
    flop_rate = np.zeros((len(tenants), n))
    spans, gains = [], []  # gains: (tenant, lo, hi, window_gain) of the bursty tenants
    for j, t in enumerate(tenants):
        lo, hi = max(t.start_step - first_step, 0), min(t.end_step - first_step, n)
        lo = min(lo, hi)
        spans.append((lo, hi))
        if lo >= hi:
            continue
        ctx = RenderContext(spec, steps[lo:hi], t.start_step, idle_mw[lo:hi], t.rng, t.key, t.end_step)
        f = t.workload.render(ctx)
        part = f.power_mw - idle_mw[lo:hi]
        own_mib = f.memory_used_mib
        if t.share != 1.0:
            part = np.rint(part * t.share).astype(np.int64)
            own_mib = np.rint(np.asarray(own_mib) * t.share).astype(np.int32)
        dynamic[j, lo:hi] = part
        active[j, lo:hi] = True
        util[lo:hi] = np.minimum(util[lo:hi] + f.util_pct, 100)
        mem_util[lo:hi] = np.minimum(mem_util[lo:hi] + f.mem_util_pct, 100)
        memory_mib[lo:hi] += own_mib
        clock[lo:hi] = np.maximum(clock[lo:hi], f.sm_clock_mhz)
        for k, name in enumerate(SIGNALS):
            signals[j, k, lo:hi] = getattr(f, name)
        flop_rate[j, lo:hi] = f.flop_rate
        if np.any(np.asarray(f.window_gain) != 1.0):
            gains.append((j, lo, hi, f.window_gain))
    _cap(spec, idle_mw, dynamic, active, tenants)
    device_pct = _combine_activity(signals, flop_rate, tenants)
    power_mw = idle_mw + dynamic.sum(axis=0)
    cum_uj = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(power_mw * STEP_MS, out=cum_uj[1:])
    util_cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(util, out=util_cum[1:])
    dynamic_cum = np.zeros((len(tenants), n + 1), dtype=np.int64)
    np.cumsum(dynamic * STEP_MS, axis=1, out=dynamic_cum[:, 1:])
    activity_cum = np.zeros((len(SIGNALS), n + 1))
    np.cumsum(device_pct, axis=1, out=activity_cum[:, 1:])
    flops_cum = np.zeros((len(tenants), n + 1))
    np.cumsum(flop_rate * _STEP_S, axis=1, out=flops_cum[:, 1:])
    return Chunk(power_mw, cum_uj, util_cum, mem_util, memory_mib, clock, idle_mw, dynamic,
                 dynamic_cum, tuple(spans), activity_cum, flops_cum, _sensed_cum(power_mw, dynamic, gains))  # fmt: skip


def _sensed_cum(power_mw: np.ndarray, dynamic: np.ndarray, gains: list) -> np.ndarray | None:
    """Running sums of what the part-time sensor sees per step (module docstring); None if all is flat."""
    if not gains:
        return None
    sensed = power_mw.copy()
    for j, lo, hi, gain in gains:
        sensed[lo:hi] += np.rint(dynamic[j, lo:hi] * (np.asarray(gain) - 1.0)).astype(np.int64)
    cum = np.zeros(len(power_mw) + 1, dtype=np.int64)
    np.cumsum(np.maximum(sensed, 0), out=cum[1:])
    return cum


def _combine_activity(signals: np.ndarray, flop_rate: np.ndarray, tenants: Sequence[Tenant]) -> np.ndarray:
    """The device-level signals per step, (3, n); scales `flop_rate` in place to the tenants' shares
    and to the tensor pipes their pool can give them (see the module docstring)."""
    device = np.zeros(signals.shape[1:])
    pools: dict[str, list[int]] = {}
    for j, t in enumerate(tenants):
        pools.setdefault(t.pool, []).append(j)
    tensor = SIGNALS.index("tensor_active_pct")
    for rows in pools.values():
        share = tenants[rows[0]].share
        total = signals[rows].sum(axis=0)
        if len(rows) > 1:
            over = total[tensor] > 100
            if over.any():
                flop_rate[np.ix_(rows, np.flatnonzero(over))] *= 100 / total[tensor, over]
        device += np.minimum(total, 100.0) * share
        if share != 1.0:
            flop_rate[rows] *= share
    return device


def _cap(
    spec: GpuSpec, idle_mw: np.ndarray, dynamic: np.ndarray, active: np.ndarray, tenants: Sequence[Tenant],
) -> None:  # fmt: skip
    """In place: where two or more tenants of a pool run at a step, their dynamic parts add up to
    at most the pool's share of (TDP − idle), and all parts together to at most TDP − idle; power
    never goes below 0. A sole tenant is not capped, so a trace replay keeps its measured watts."""
    span_mw = spec.tdp_w * 1_000 - idle_mw
    pools: dict[str, list[int]] = {}
    for j, t in enumerate(tenants):
        pools.setdefault(t.pool, []).append(j)
    groups = [(rows, np.floor(tenants[rows[0]].share * span_mw).astype(np.int64)) for rows in pools.values()]
    if len(pools) > 1:
        groups.append((list(range(len(tenants))), span_mw))
    for rows, room in groups:
        over = (active[rows].sum(axis=0) >= 2) & (dynamic[rows].sum(axis=0) > room)
        _scale(dynamic, active, rows, over, room)
    if tenants:
        rows = list(range(len(tenants)))
        _scale(dynamic, active, rows, idle_mw + dynamic.sum(axis=0) < 0, -idle_mw)


def _scale(dynamic: np.ndarray, active: np.ndarray, rows: list[int], where: np.ndarray, room: np.ndarray) -> None:
    """Scale rows' parts at the steps `where` by one factor per step so they add up to `room`
    exactly: floored to whole mW, the remainder to the first active part."""
    fix = np.flatnonzero(where)
    if not fix.size:
        return
    cells = np.ix_(rows, fix)
    parts = dynamic[cells]
    target = room[fix]
    scaled = np.floor(parts * (target / parts.sum(axis=0))).astype(np.int64)
    first = active[cells].argmax(axis=0)
    scaled[first, np.arange(fix.size)] += target - scaled.sum(axis=0)
    dynamic[cells] = scaled
