"""What runs on a simulated GPU: workload classes and how each renders into per-step power,
utilization, memory, clocks, GPM activity and true useful work (how a GPU's tenants combine into
one chunk of steps is chunks.py's).

A workload renders a run of 100 ms steps of one assignment at a time (the simulated fleet asks
chunk by chunk). Everything that spans steps — training checkpoints, inference bursts, trace
positions — is a function of the step's offset from the assignment's start, and per-step noise
comes from the generator the fleet passes in (power, duty cycle) or from hash_uniform (GPM
activity, which draws nothing from the generator so that power renders as it did before GPM), so
any chunk renders the same on its own.

GPM activity and useful work, per workload (percent of the tenant's own part of the GPU):

| workload                  | SM active        | tensor active          | DRAM bandwidth | FLOP/s       |
|---------------------------|------------------|------------------------|----------------|--------------|
| Training, computing       | 90–98            | rate ÷ peak ÷ 0.85     | 30–50          | see Training |
| Training, checkpointing   | 0–2              | 0                      | 0–1            | 0            |
| Inference, memory-bound   | 38–67            | 5–12                   | 60–90          | from tensor  |
| Inference, compute-bound  | 63–92            | 29–61                  | 23–47          | from tensor  |
| Inference, between bursts | 0                | 0                      | 0              | 0            |
| FakeBusy                  | 1–3              | 0                      | 0–1            | 0            |
| IdleAllocated, no tenant  | 0                | 0                      | 0              | 0            |
| TracePower                | 0.95 × duty      | tensor_per_util × duty | 0.4 × duty     | from tensor  |

"From tensor" is the one rule that ties tensor activity to useful work everywhere: useful FLOP/s =
TENSOR_EFFICIENCY × tensor activity × the spec's peak dense BF16 FLOP/s.

Within a step. A step's power is the mean over its 100 ms, which is all the energy counter, the
1 s average and the ground truth ever see. Only the part-time sensor (specs.PowerSensor
"part-time-25") looks inside a step, at its first SENSOR_SLICE_MS: a Frame's `window_gain` is the
tenant's mean dynamic power over that slice ÷ its mean over the step (1: flat). KernelBursts wraps
any workload in a train of kernel bursts shorter than a step, whose phase drifts against the slice
or, for request-driven serving, is drawn afresh each step; it changes nothing but that gain.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from accounting.gpu.specs import GpuSpec
from accounting.gpu.trace import PowerTrace

STEP_MS = 100
STEP_US = STEP_MS * 1_000
STEPS_PER_S = 1_000 // STEP_MS
SENSOR_SLICE_MS = 25  # the part-time sensor averages the first 25 ms of every 100 ms step
BASE_MEMORY_MIB = 17  # driver reservation with no process (the real H100 trace's GPUs 1–7)
CONTEXT_MEMORY_MIB = 512  # one CUDA context
IDLE_SM_CLOCK_MHZ = 210
# Max boost SM clocks (vendor figures, for plausible readings only).
BOOST_SM_CLOCK_MHZ = {
    "V100 SXM": 1530, "A100 SXM": 1410, "A100 SXM 40GB": 1410, "H100 SXM": 1980,
    "H100 PCIe": 1755, "H200 SXM": 1980, "L40S": 2520, "L4": 2040, "B200": 1965,
    "GB200": 2062, "MI300X": 2100,
}  # fmt: skip

# Tensor pipes are never 100 % efficient: pipeline bubbles, operand loads and the non-matmul work
# between GEMMs keep them busy longer than the useful FLOPs need at peak rate. The simulator assumes
# useful FLOP/s = 0.85 × tensor activity × peak, so a run at MFU m shows tensor activity m ÷ 0.85.
TENSOR_EFFICIENCY = 0.85
# Training without an explicit mfu: mfu = 0.47 × power_fraction (the default 0.85 gives 0.40, the
# practical target of DESIGN.md; a lighter load does proportionally less useful work).
MFU_PER_POWER_FRACTION = 0.47
_U64 = (1 << 64) - 1
_ACTIVITY_SALT = 101  # hash_uniform salts 101.. for GPM jitter (1 and 2 are Inference's bursts)


@dataclass(frozen=True, slots=True)
class RenderContext:
    spec: GpuSpec
    steps: np.ndarray  # int64 absolute step indices (step k covers [k·100 ms, (k+1)·100 ms))
    start_step: int  # the assignment's first step
    idle_mw: np.ndarray  # int64: what the GPU would draw at these steps if nothing ran
    rng: np.random.Generator  # per (seed, GPU, chunk, assignment)
    key: int  # per (seed, GPU, assignment): seeds structure that spans chunks
    end_step: int  # the assignment's end (exclusive)

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
    # GPM activity in percent of the tenant's part of the GPU (the whole GPU, or its MIG instance)
    sm_active_pct: np.ndarray | float = 0.0
    tensor_active_pct: np.ndarray | float = 0.0
    dram_bw_pct: np.ndarray | float = 0.0
    flop_rate: np.ndarray | float = 0.0  # true useful FLOP/s, at the whole GPU's scale (chunks.py scales it)
    # Mean dynamic power over the step's first SENSOR_SLICE_MS ÷ over the whole step (module docstring)
    window_gain: np.ndarray | float = 1.0


class Workload(Protocol):
    """What the fleet renders. A workload that models tokens also has `tokens_per_flop` (float or
    None); the ground truth counts tokens of those only."""

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


def _jitter(ctx: RenderContext, k: int) -> np.ndarray:
    """The k-th per-step uniform [0, 1) of a run's GPM noise (see the module docstring)."""
    return hash_uniform(ctx.key, _ACTIVITY_SALT + k, ctx.steps)


def _flop_rate(tensor_pct: np.ndarray | float, spec: GpuSpec) -> np.ndarray | float:
    return TENSOR_EFFICIENCY * np.asarray(tensor_pct) / 100 * spec.peak_bf16_flops


def _check_params(params: float | None) -> None:
    if params is not None and not params > 0:
        raise ValueError("params (the model's parameter count) must be positive")


@dataclass(frozen=True)
class Training:
    """Steady heavy load at `power_fraction` of the dynamic range, with checkpoint pauses of
    `checkpoint_s` at the end of every `checkpoint_every_s` (0 disables them).

    Useful work: `mfu` is the model-FLOPs utilization over the whole assignment, checkpoint pauses
    included, so a run does exactly mfu × peak BF16 FLOP/s × its rendered time (whole 100 ms steps)
    — all of it while computing, at the rate that makes up for the pauses (0 while pausing). Tensor
    activity follows that rate (÷ TENSOR_EFFICIENCY), so its mean over the run is mfu ÷ 0.85; None
    implies mfu = MFU_PER_POWER_FRACTION × power_fraction. (Near mfu 0.85 with pauses, the rate while
    computing asks for more than 100 % tensor activity: the reading saturates, the FLOPs do not.) With
    `params` (N, the model's parameters) the run also processes FLOPs ÷ 6N tokens (DESIGN's
    6·N·tokens, attention left out).
    """

    power_fraction: float = 0.85
    checkpoint_every_s: float = 600
    checkpoint_s: float = 20
    noise: float = 0.03  # relative sd of per-step power
    pids: tuple[int, ...] = ()
    mfu: float | None = None
    params: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.power_fraction <= 1:
            raise ValueError("power_fraction must be in (0, 1]")
        if self.checkpoint_every_s and not 0 <= self.checkpoint_s < self.checkpoint_every_s:
            raise ValueError("checkpoint_s must be in [0, checkpoint_every_s)")
        if self.mfu is not None and not 0 < self.mfu <= TENSOR_EFFICIENCY:
            raise ValueError(f"mfu must be in (0, {TENSOR_EFFICIENCY}]: the tensor pipes' efficiency bounds it")
        _check_params(self.params)

    @property
    def tokens_per_flop(self) -> float | None:
        return None if self.params is None else 1 / (6 * self.params)

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
        rate = self._computing_rate(ctx.end_step - ctx.start_step, every)
        u_sm, u_dram = _jitter(ctx, 0), _jitter(ctx, 2)
        sm = np.where(pausing, 2 * u_sm, 90 + 8 * u_sm)
        tensor = np.minimum(100 * rate / TENSOR_EFFICIENCY * (0.99 + 0.02 * _jitter(ctx, 1)), 100.0)
        dram = np.where(pausing, u_dram, 30 + 20 * u_dram)
        return Frame(power_mw, util, mem_util, memory_mib, _boost(spec), sm, np.where(pausing, 0.0, tensor), dram,
                     np.where(pausing, 0.0, rate * spec.peak_bf16_flops))  # fmt: skip

    def _computing_rate(self, total_steps: int, every: int) -> float:
        """The FLOP rate, as a fraction of peak, that does mfu × peak over a run of `total_steps`
        in its computing steps (those not in a checkpoint pause)."""
        pausing = 0
        if every:
            pause = round(self.checkpoint_s * STEPS_PER_S)
            pausing = total_steps // every * pause + max(total_steps % every - (every - pause), 0)
        mfu = self.mfu if self.mfu is not None else MFU_PER_POWER_FRACTION * self.power_fraction
        return mfu * total_steps / max(total_steps - pausing, 1)  # a run starts computing: never 0 in practice


@dataclass(frozen=True)
class Inference:
    """A serving process: load arrives in bursts of `burst_s`; each burst is on with
    probability `mean_load` and runs at a random level up to ~0.7 TDP.

    `memory_bound` (decode-heavy serving, the common case: weights and KV cache stream from DRAM
    for a few FLOPs per byte) shows high DRAM bandwidth and little tensor activity while serving;
    False is compute-bound serving (large batches, long prefills). Both rise with the burst's
    level. Useful FLOP/s follow tensor activity; with `params` (N) that is FLOPs ÷ 2N tokens.
    """

    mean_load: float = 0.4
    burst_s: float = 2.0
    pids: tuple[int, ...] = ()
    memory_bound: bool = True
    params: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.mean_load <= 1:
            raise ValueError("mean_load must be in [0, 1]")
        if self.burst_s < STEP_MS / 1_000:
            raise ValueError("burst_s must be at least one 100 ms step")
        _check_params(self.params)

    @property
    def tokens_per_flop(self) -> float | None:
        return None if self.params is None else 1 / (2 * self.params)

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
        x = (level - 0.4) / 0.6  # the burst's level within [0.4, 1)
        if self.memory_bound:
            sm, tensor, dram = 40 + 25 * x, 5.5 + 6 * x, 62 + 26 * x
            bounds = ((38, 67), (5, 12), (60, 90))
        else:
            sm, tensor, dram = 65 + 25 * x, 30 + 30 * x, 25 + 20 * x
            bounds = ((63, 92), (29, 61), (23, 47))
        sm, tensor, dram = (np.where(on, np.clip(v + spread * (_jitter(ctx, k) - 0.5), *bounds[k]), 0.0)
                            for k, (v, spread) in enumerate(((sm, 4), (tensor, 1), (dram, 4))))  # fmt: skip
        return Frame(power_mw, util, mem_util, memory_mib, clock, sm, tensor, dram, _flop_rate(tensor, spec))


@dataclass(frozen=True)
class FakeBusy:
    """A tiny kernel in a loop: the duty cycle reads 100 % while power stays near idle, SM activity
    is 1–3 %, the tensor pipes idle and no useful work is done."""

    pids: tuple[int, ...] = ()

    def render(self, ctx: RenderContext) -> Frame:
        spec, n = ctx.spec, len(ctx.steps)
        jitter = 1 + 0.02 * ctx.rng.standard_normal(n)
        power_mw = _to_mw(spec.idle_w + 0.1 * (spec.tdp_w - spec.idle_w) * jitter, spec)
        # One tiny kernel keeps a few SMs busy and never touches the tensor pipes.
        sm, dram = 1 + 2 * _jitter(ctx, 0), _jitter(ctx, 2)
        return Frame(power_mw, 100, 0, CONTEXT_MEMORY_MIB, _boost(spec), sm, 0.0, dram)


@dataclass(frozen=True)
class IdleAllocated:
    """Allocated, nothing runs: idle power, 0 % duty cycle and no GPM activity (a process may hold
    a context)."""

    pids: tuple[int, ...] = ()

    def render(self, ctx: RenderContext) -> Frame:
        memory_mib = CONTEXT_MEMORY_MIB if self.pids else 0
        return Frame(ctx.idle_mw.copy(), 0, 0, memory_mib, IDLE_SM_CLOCK_MHZ)


@dataclass(frozen=True)
class TracePower:
    """Replays one GPU column of a real trace as the true power and duty cycle, starting
    `offset_s` into the trace and looping when the assignment outlasts it.

    A trace has no GPM columns. Assumed: tensor activity is proportional to the duty cycle,
    `tensor_per_util` of it (0.5: a busy LLM-training step keeps the tensor pipes half the time,
    ~0.42 MFU at TENSOR_EFFICIENCY), SM activity is 0.95 × and DRAM bandwidth 0.4 × the duty cycle.
    """

    trace: PowerTrace
    column: int
    offset_s: float = 0.0
    pids: tuple[int, ...] = ()
    tensor_per_util: float = 0.5

    def __post_init__(self) -> None:
        if self.trace.step_ms != STEP_MS:
            raise ValueError(f"the trace must be on a {STEP_MS} ms grid")
        if not 0 <= self.column < self.trace.n_gpus:
            raise ValueError(f"column {self.column} not in a {self.trace.n_gpus}-GPU trace")
        if not 0 <= self.tensor_per_util <= 1:
            raise ValueError("tensor_per_util must be in [0, 1]")

    def render(self, ctx: RenderContext) -> Frame:
        n_steps = self.trace.n_steps
        idx = (ctx.offsets() + round(self.offset_s * STEPS_PER_S)) % n_steps
        # The trace is not clipped to this GPU's TDP: replay means the measured watts.
        power_mw = np.rint(self.trace.watts[self.column, idx] * 1_000).astype(np.int64)
        util = np.rint(self.trace.util_pct[self.column, idx]).astype(np.int64)
        memory_mib = np.rint(self.trace.memory_used_mib[self.column, idx]).astype(np.int64)
        memory_mib = np.maximum(memory_mib - BASE_MEMORY_MIB, 0)
        clock = np.where(util > 0, _boost(ctx.spec), IDLE_SM_CLOCK_MHZ)
        tensor = self.tensor_per_util * util
        return Frame(power_mw, util, util * 2 // 5, memory_mib, clock, 0.95 * util, tensor, 0.4 * util,
                     _flop_rate(tensor, ctx.spec))  # fmt: skip


@dataclass(frozen=True)
class KernelBursts:
    """`inner` as its kernels really run: each step's dynamic power comes in a train of bursts of
    `period_ms` (≤ one step), the kernels running `duty` of each period and the power between
    bursts at `floor` × the step's mean dynamic power; the step's mean, and so its energy, stays
    what `inner` renders. Only the part-time sensor can tell (the module docstring).

    Steady (`random_phase` False, a training loop): one regular train from the run's start at a
    phase drawn from the run's key; a period that divides 100 ms keeps the same phase against the
    sensor's slice all run long, any other drifts through it. `random_phase` (request-driven
    serving): each step's train starts at a phase of its own.
    """

    inner: Workload
    period_ms: float = 40.0
    duty: float = 0.5
    floor: float = 0.15
    random_phase: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.period_ms <= STEP_MS:
            raise ValueError(f"period_ms must be in (0, {STEP_MS}]: a burst train shorter than a step")
        if not 0 < self.duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        if not 0 <= self.floor <= 1:
            raise ValueError("floor must be in [0, 1]")

    @property
    def pids(self) -> tuple[int, ...]:
        return self.inner.pids

    @property
    def tokens_per_flop(self) -> float | None:
        return getattr(self.inner, "tokens_per_flop", None)

    def render(self, ctx: RenderContext) -> Frame:
        return replace(self.inner.render(ctx), window_gain=self.window_gain(ctx))

    def window_gain(self, ctx: RenderContext) -> np.ndarray:
        """Per step: the mean of the bursty profile over the sensor's slice (the profile's step mean is 1)."""
        period, on = self.period_ms, self.duty * self.period_ms
        # Where in its period the train is as each step starts, ms.
        if self.random_phase:
            start = hash_uniform(ctx.key, 3, ctx.steps) * period
        else:
            start = (ctx.offsets() * STEP_MS + hash_uniform(ctx.key, 3, np.zeros(1))[0] * period) % period

        def on_ms(x: np.ndarray) -> np.ndarray:  # burst time in [0, x) of a train that starts at 0
            return np.floor(x / period) * on + np.minimum(x % period, on)

        step_on = (on_ms(start + STEP_MS) - on_ms(start)) / STEP_MS
        slice_on = (on_ms(start + SENSOR_SLICE_MS) - on_ms(start)) / SENSOR_SLICE_MS
        high = (1 - self.floor * (1 - step_on)) / step_on  # step_on > 0: a step holds a whole period
        return self.floor * (1 - slice_on) + high * slice_on
