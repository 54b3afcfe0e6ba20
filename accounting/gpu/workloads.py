"""What runs on a simulated GPU: workload classes, how each renders into per-step power,
utilization, memory and clocks, and how a GPU's tenants combine into one chunk of steps.

A workload renders a run of 100 ms steps of one assignment at a time (the simulated fleet asks
chunk by chunk). Everything that spans steps — training checkpoints, inference bursts, trace
positions — is a function of the step's offset from the assignment's start, and per-step noise
comes from the generator the fleet passes in, so any chunk renders the same on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from accounting.gpu.specs import GpuSpec
from accounting.gpu.trace import PowerTrace

STEP_MS = 100
STEP_US = STEP_MS * 1_000
STEPS_PER_S = 1_000 // STEP_MS
BASE_MEMORY_MIB = 17  # driver reservation with no process (the real H100 trace's GPUs 1–7)
CONTEXT_MEMORY_MIB = 512  # one CUDA context
IDLE_SM_CLOCK_MHZ = 210
# Max boost SM clocks (vendor figures, for plausible readings only).
BOOST_SM_CLOCK_MHZ = {
    "V100 SXM": 1530, "A100 SXM": 1410, "A100 SXM 40GB": 1410, "H100 SXM": 1980,
    "H100 PCIe": 1755, "H200 SXM": 1980, "L40S": 2520, "L4": 2040, "B200": 1965,
    "GB200": 2062, "MI300X": 2100,
}  # fmt: skip

_IDLE_NOISE = 0.003  # relative sd of idle draw per step (the real trace idles within ±0.1 W)
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RenderContext:
    spec: GpuSpec
    steps: np.ndarray  # int64 absolute step indices (step k covers [k·100 ms, (k+1)·100 ms))
    start_step: int  # the assignment's first step
    idle_mw: np.ndarray  # int64: what the GPU would draw at these steps if nothing ran
    rng: np.random.Generator  # per (seed, GPU, chunk, assignment)
    key: int  # per (seed, GPU, assignment): seeds structure that spans chunks

    def offsets(self) -> np.ndarray:
        """Steps since the assignment started."""
        return self.steps - self.start_step


@dataclass(frozen=True, slots=True)
class Frame:
    """Per-step values for a sole tenant; arrays match ctx.steps, scalars broadcast."""

    power_mw: np.ndarray  # int64, absolute (idle included)
    util_pct: np.ndarray | int
    mem_util_pct: np.ndarray | int
    memory_used_mib: np.ndarray | int  # the workload's own memory, on top of the driver's
    sm_clock_mhz: np.ndarray | int


class Workload(Protocol):
    pids: tuple[int, ...]

    def render(self, ctx: RenderContext) -> Frame: ...


def hash_uniform(key: int, salt: int, idx: np.ndarray) -> np.ndarray:
    """Deterministic uniforms in [0, 1) for integer indices (splitmix64): randomness that
    depends only on (key, salt, index), whichever chunk asks."""
    base = np.uint64((key * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & _U64)
    x = idx.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03) ^ base
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _to_mw(watts: np.ndarray, spec: GpuSpec) -> np.ndarray:
    return np.rint(np.clip(watts, 0.0, spec.tdp_w) * 1_000).astype(np.int64)


def _boost(spec: GpuSpec) -> int:
    return BOOST_SM_CLOCK_MHZ.get(spec.model, 1500)


@dataclass(frozen=True)
class Training:
    """Steady heavy load at `power_fraction` of the dynamic range, with checkpoint pauses of
    `checkpoint_s` at the end of every `checkpoint_every_s` (0 disables them)."""

    power_fraction: float = 0.85
    checkpoint_every_s: float = 600
    checkpoint_s: float = 20
    noise: float = 0.03  # relative sd of per-step power
    pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.power_fraction <= 1:
            raise ValueError("power_fraction must be in (0, 1]")
        if self.checkpoint_every_s and not 0 <= self.checkpoint_s < self.checkpoint_every_s:
            raise ValueError("checkpoint_s must be in [0, checkpoint_every_s)")

    def render(self, ctx: RenderContext) -> Frame:
        spec, n = ctx.spec, len(ctx.steps)
        dynamic_w = spec.tdp_w - spec.idle_w
        every = round(self.checkpoint_every_s * STEPS_PER_S)
        if every:
            pausing = ctx.offsets() % every >= every - round(self.checkpoint_s * STEPS_PER_S)
        else:
            pausing = np.zeros(n, dtype=bool)
        level = np.where(pausing, 0.04, self.power_fraction)  # checkpoint: GPUs wait on I/O
        jitter = 1 + self.noise * ctx.rng.standard_normal(n)
        power_mw = _to_mw(spec.idle_w + level * dynamic_w * jitter, spec)
        util = np.where(pausing, ctx.rng.integers(0, 4, n), ctx.rng.integers(95, 101, n))
        mem_util = np.where(pausing, 1, ctx.rng.integers(35, 51, n))
        memory_mib = int(spec.memory_gib * 1024 * 0.85)
        return Frame(power_mw, util, mem_util, memory_mib, _boost(spec))


@dataclass(frozen=True)
class Inference:
    """A serving process: load arrives in bursts of `burst_s`; each burst is on with
    probability `mean_load` and runs at a random level up to ~0.7 TDP."""

    mean_load: float = 0.4
    burst_s: float = 2.0
    pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.mean_load <= 1:
            raise ValueError("mean_load must be in [0, 1]")
        if self.burst_s < STEP_MS / 1_000:
            raise ValueError("burst_s must be at least one 100 ms step")

    def render(self, ctx: RenderContext) -> Frame:
        spec, n = ctx.spec, len(ctx.steps)
        burst = ctx.offsets() // round(self.burst_s * STEPS_PER_S)
        on = hash_uniform(ctx.key, 1, burst) < self.mean_load
        level = np.where(on, 0.4 + 0.6 * hash_uniform(ctx.key, 2, burst), 0.0)
        jitter = 1 + 0.02 * ctx.rng.standard_normal(n)
        peak_w = 0.7 * spec.tdp_w - spec.idle_w
        power_mw = np.where(on, _to_mw(spec.idle_w + level * peak_w * jitter, spec), ctx.idle_mw)
        util = np.rint(level * 100).astype(np.int64)
        mem_util = np.rint(level * 60).astype(np.int64)
        memory_mib = int(spec.memory_gib * 1024 * 0.9)  # servers reserve most memory up front
        clock = np.where(on, _boost(spec), IDLE_SM_CLOCK_MHZ)
        return Frame(power_mw, util, mem_util, memory_mib, clock)


@dataclass(frozen=True)
class FakeBusy:
    """A tiny kernel in a loop: the duty cycle reads 100 % while power stays near idle."""

    pids: tuple[int, ...] = ()

    def render(self, ctx: RenderContext) -> Frame:
        spec, n = ctx.spec, len(ctx.steps)
        jitter = 1 + 0.02 * ctx.rng.standard_normal(n)
        power_mw = _to_mw(spec.idle_w + 0.1 * (spec.tdp_w - spec.idle_w) * jitter, spec)
        return Frame(power_mw, 100, 0, CONTEXT_MEMORY_MIB, _boost(spec))


@dataclass(frozen=True)
class IdleAllocated:
    """Allocated, nothing runs: idle power, 0 % duty cycle (a process may hold a context)."""

    pids: tuple[int, ...] = ()

    def render(self, ctx: RenderContext) -> Frame:
        memory_mib = CONTEXT_MEMORY_MIB if self.pids else 0
        return Frame(ctx.idle_mw.copy(), 0, 0, memory_mib, IDLE_SM_CLOCK_MHZ)


@dataclass(frozen=True)
class TracePower:
    """Replays one GPU column of a real trace as the true power and duty cycle, starting
    `offset_s` into the trace and looping when the assignment outlasts it."""

    trace: PowerTrace
    column: int
    offset_s: float = 0.0
    pids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.trace.step_ms != STEP_MS:
            raise ValueError(f"the trace must be on a {STEP_MS} ms grid")
        if not 0 <= self.column < self.trace.n_gpus:
            raise ValueError(f"column {self.column} not in a {self.trace.n_gpus}-GPU trace")

    def render(self, ctx: RenderContext) -> Frame:
        n_steps = self.trace.n_steps
        idx = (ctx.offsets() + round(self.offset_s * STEPS_PER_S)) % n_steps
        # The trace is not clipped to this GPU's TDP: replay means the measured watts.
        power_mw = np.rint(self.trace.watts[self.column, idx] * 1_000).astype(np.int64)
        util = np.rint(self.trace.util_pct[self.column, idx]).astype(np.int64)
        memory_mib = np.rint(self.trace.memory_used_mib[self.column, idx]).astype(np.int64)
        memory_mib = np.maximum(memory_mib - BASE_MEMORY_MIB, 0)
        clock = np.where(util > 0, _boost(ctx.spec), IDLE_SM_CLOCK_MHZ)
        return Frame(power_mw, util, util * 2 // 5, memory_mib, clock)


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


def render_chunk(
    spec: GpuSpec, first_step: int, n: int, idle_rng: np.random.Generator,
    tenants: Sequence[Tenant],
) -> Chunk:  # fmt: skip
    """Steps [first_step, first_step + n): the idle baseline, with each tenant's workload
    rendered over its part of the run.

    Co-tenants add their dynamic power over the one shared baseline, within limits (see _cap).
    A tenant with share < 1 (on a MIG instance) has its dynamic power and memory scaled to that
    share of the GPU.
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
    spans = []
    for j, t in enumerate(tenants):
        lo, hi = max(t.start_step - first_step, 0), min(t.end_step - first_step, n)
        lo = min(lo, hi)
        spans.append((lo, hi))
        if lo >= hi:
            continue
        ctx = RenderContext(spec, steps[lo:hi], t.start_step, idle_mw[lo:hi], t.rng, t.key)
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
    _cap(spec, idle_mw, dynamic, active, tenants)
    power_mw = idle_mw + dynamic.sum(axis=0)
    cum_uj = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(power_mw * STEP_MS, out=cum_uj[1:])
    util_cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(util, out=util_cum[1:])
    dynamic_cum = np.zeros((len(tenants), n + 1), dtype=np.int64)
    np.cumsum(dynamic * STEP_MS, axis=1, out=dynamic_cum[:, 1:])
    return Chunk(power_mw, cum_uj, util_cum, mem_util, memory_mib, clock, idle_mw, dynamic,
                 dynamic_cum, tuple(spans))  # fmt: skip


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
