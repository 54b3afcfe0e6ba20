"""The simulated fleet: a deterministic fake of NVML for machines without a GPU.

It owns the ground truth of every simulated GPU — true power, piecewise constant on a 100 ms
grid in integer mW — and derives from it what NVML would report: the total-energy counter
(exact integer µJ inside, floored to mJ, advancing at each step boundary, restarting at
driver resets), the power sensor (a 1 s mean on Hopper and newer, instantaneous on A100 and
older), duty cycles, memory, clocks and processes. Readings are taken at `clock.now_us()`.

True power is a pure function of (seed, GPU, assignments): it is rendered lazily in 10-minute
chunks with a per-(seed, GPU, chunk) generator, so any chunk is reproducible on its own and
time can run for as long as the `up` command lives. Memory stays bounded: a few recent chunks
per GPU, plus cumulative energy at chunk starts (sparse once old).
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from accounting.clock import Clock
from accounting.errors import GpuError, GpuLost
from accounting.gpu.backend import GpuInfo, GpuProcess, GpuReading
from accounting.gpu.specs import GpuSpec, get_spec
from accounting.gpu.workloads import (
    BASE_MEMORY_MIB,
    STEP_MS,
    Chunk,
    Tenant,
    Workload,
    render_chunk,
)

STEP_US = STEP_MS * 1_000
CHUNK_STEPS = 6_000  # 10 simulated minutes
SENSOR_WINDOW_US = 1_000_000  # nvmlDeviceGetPowerUsage averages over 1 s on Hopper and newer
UTIL_WINDOW_STEPS = 10  # duty cycles cover the last second's completed steps
_CHUNKS_PER_GPU = 4  # cache: the current and previous chunks, with room for a look back
_DENSE_CHECKPOINTS = 16  # keep every recent chunk start; older ones only every 64th
_MIB = 1 << 20


def _hash64(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def _ceil_step(t_us: int) -> int:
    return -(-t_us // STEP_US)


@dataclass(frozen=True, slots=True)
class SimGpu:
    uuid: str
    model: str  # a catalog key of accounting.gpu.specs
    index: int


@dataclass(frozen=True, slots=True)
class _Assignment:
    start_us: int
    end_us: int
    start_step: int  # steps whose start lies in [start_us, end_us)
    end_step: int
    workload: Workload


@dataclass(slots=True)
class _Gpu:
    sim: SimGpu
    spec: GpuSpec
    key: int
    assignments: list[_Assignment] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)
    # Counter epochs, sorted: (from_us, first counted step, counter µJ at that step).
    epochs: list[tuple[int, int, int]] = field(default_factory=list)
    checkpoints: dict[int, int] = field(default_factory=dict)  # chunk → cum µJ at its start
    epoch_cum_uj: dict[int, int] = field(default_factory=dict)  # step → cum µJ (cache)


class SimulatedFleet:
    """A GpuBackend over simulated GPUs; see the module docstring."""

    kind = "simulated"

    def __init__(self, gpus: list[SimGpu], *, clock: Clock, seed: int = 0) -> None:
        self._clock = clock
        self._seed = seed & 0xFFFF_FFFF_FFFF_FFFF  # numpy seeds must be non-negative
        self._lock = threading.RLock()
        boot_us = clock.now_us()  # the driver "loaded" before we came: a nonzero counter
        self._origin_chunk = _ceil_step(boot_us) // CHUNK_STEPS  # cum energy counts from here
        self._gpus: dict[str, _Gpu] = {}
        for sim in gpus:
            if sim.uuid in self._gpus:
                raise ValueError(f"duplicate GPU uuid {sim.uuid!r}")
            spec = get_spec(sim.model)
            g = _Gpu(sim, spec, _hash64(seed, sim.uuid))
            hours = 2 + 46 * (g.key % 10_000) / 10_000
            typical_w = spec.idle_w + 0.3 * (spec.tdp_w - spec.idle_w)
            offset_uj = int(hours * 3_600 * typical_w) * 10**6  # whole mJ
            g.epochs.append((boot_us, _ceil_step(boot_us), offset_uj))
            g.checkpoints[self._origin_chunk] = 0
            self._gpus[sim.uuid] = g
        self._chunks: OrderedDict[tuple[str, int], Chunk] = OrderedDict()
        self._max_chunks = _CHUNKS_PER_GPU * max(len(self._gpus), 1) + 8

    @classmethod
    def build(
        cls, models: list[str], *, clock: Clock, seed: int = 0, node: str = "sim"
    ) -> SimulatedFleet:
        """GPUs 0..n-1 of `node` with deterministic uuids, unique across nodes."""
        gpus = [
            SimGpu(f"GPU-sim-{node}-{i}-{_hash64(node, i, m) & 0xFFFFFFFF:08x}", m, i)
            for i, m in enumerate(models)
        ]
        return cls(gpus, clock=clock, seed=seed)

    # GpuBackend ---------------------------------------------------------------------------
    def gpus(self) -> list[GpuInfo]:
        return [GpuInfo(g.sim.uuid, g.spec.nvml_name, g.sim.index) for g in self._gpus.values()]

    def read(self, uuid: str) -> GpuReading:
        """What NVML would report for `uuid` at the clock's now_us()."""
        with self._lock:
            g = self._gpu(uuid)
            t_us = self._clock.now_us()
            if any(start <= t_us < end for start, end in g.lost):
                raise GpuLost(f"GPU {uuid} is lost", uuid=uuid)
            step = t_us // STEP_US
            c, i = divmod(step, CHUNK_STEPS)
            chunk = self._chunk(g, c)
            if g.spec.power_sensor == "average-1s":
                window_nj = self._energy_nj(g, t_us) - self._energy_nj(g, t_us - SENSOR_WINDOW_US)
                power_mw = round(window_nj / SENSOR_WINDOW_US)  # nJ / µs = mW
            else:
                power_mw = int(chunk.power_mw[i])
            n_used = int(chunk.memory_used_mib[i])
            return GpuReading(
                uuid=uuid,
                timestamp_us=t_us,
                energy_mj=self._counter_mj(g, t_us),
                power_mw=power_mw,
                gpu_util_pct=round(self._util_sum(g, step) / UTIL_WINDOW_STEPS),
                memory_util_pct=int(chunk.mem_util_pct[i]),
                memory_used_bytes=n_used * _MIB,
                sm_clock_mhz=int(chunk.sm_clock_mhz[i]),
                processes=self._processes(g, step, n_used),
            )

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()

    # Scenario ------------------------------------------------------------------------------
    def assign(self, uuid: str, start_us: int, end_us: int, workload: Workload) -> None:
        """Run `workload` on the GPU over [start_us, end_us); power changes at step boundaries.

        Assigning into time already read rewrites that history (the fleet is a pure function
        of its scenario); callers driving a live fleet assign from now on.
        """
        if end_us <= start_us:
            raise ValueError("an assignment needs end_us > start_us")
        with self._lock:
            g = self._gpu(uuid)
            for a in g.assignments:
                if a.start_us < end_us and start_us < a.end_us:
                    # Shared GPUs come later; render_chunk already sums co-tenants' power.
                    raise ValueError(f"GPU {uuid} already runs a workload in that time")
            new = _Assignment(start_us, end_us, _ceil_step(start_us), _ceil_step(end_us), workload)
            bisect.insort(g.assignments, new, key=lambda a: a.start_us)
            self._invalidate(g, new.start_step // CHUNK_STEPS, (new.end_step - 1) // CHUNK_STEPS)

    def reset_counter(self, uuid: str, at_us: int) -> None:
        """Driver reload / GPU reset: the counter restarts from 0 at `at_us` and counts the
        steps that start at or after it."""
        with self._lock:
            g = self._gpu(uuid)
            bisect.insort(g.epochs, (at_us, _ceil_step(at_us), 0))

    def lose(self, uuid: str, start_us: int, end_us: int) -> None:
        """The GPU stops answering over [start_us, end_us) but keeps drawing power; the driver
        comes back at end_us with the counter restarted from 0."""
        if end_us <= start_us:
            raise ValueError("a loss needs end_us > start_us")
        with self._lock:
            self._gpu(uuid).lost.append((start_us, end_us))
            self.reset_counter(uuid, end_us)

    # Ground truth ----------------------------------------------------------------------------
    def true_energy_j(self, uuid: str, start_us: int, end_us: int) -> float:
        """The exact integral of true power over [start_us, end_us), partial steps included."""
        with self._lock:
            g = self._gpu(uuid)
            return (self._energy_nj(g, end_us) - self._energy_nj(g, start_us)) / 1e9

    def true_power_w(self, uuid: str, t_us: int) -> float:
        with self._lock:
            c, i = divmod(t_us // STEP_US, CHUNK_STEPS)
            return int(self._chunk(self._gpu(uuid), c).power_mw[i]) / 1_000

    # Internals -------------------------------------------------------------------------------
    def _gpu(self, uuid: str) -> _Gpu:
        try:
            return self._gpus[uuid]
        except KeyError:
            raise GpuError(f"no simulated GPU {uuid!r}", uuid=uuid) from None

    def _counter_mj(self, g: _Gpu, t_us: int) -> int:
        """The counter at t: the epoch's start value plus the energy of every step that
        ended by t (never negative energy: a reset mid-step counts from the next step)."""
        k = max(bisect.bisect_right(g.epochs, (t_us, 1 << 62)) - 1, 0)  # before boot: boot's
        _, first_step, start_uj = g.epochs[k]
        if first_step not in g.epoch_cum_uj:
            g.epoch_cum_uj[first_step] = self._cum_uj(g, first_step)
        counted_uj = self._cum_uj(g, t_us // STEP_US) - g.epoch_cum_uj[first_step]
        return (start_uj + max(counted_uj, 0)) // 1_000

    def _energy_nj(self, g: _Gpu, t_us: int) -> int:
        """Energy from the origin chunk's start to t, in nJ (mW × µs), exact."""
        step = t_us // STEP_US
        c, i = divmod(step, CHUNK_STEPS)
        partial_nj = int(self._chunk(g, c).power_mw[i]) * (t_us - step * STEP_US)
        return self._cum_uj(g, step) * 1_000 + partial_nj

    def _cum_uj(self, g: _Gpu, step: int) -> int:
        """Energy of the steps from the origin chunk's start up to (not including) `step`."""
        c, i = divmod(step, CHUNK_STEPS)
        return self._checkpoint_uj(g, c) + int(self._chunk(g, c).cum_uj[i])

    def _checkpoint_uj(self, g: _Gpu, c: int) -> int:
        cps = g.checkpoints
        if c in cps:
            return cps[c]
        if c < self._origin_chunk:  # before boot: rare (ground-truth queries), not stored
            return -sum(self._chunk_total_uj(g, j) for j in range(c, self._origin_chunk))
        k = max(j for j in cps if j < c)
        value = cps[k]
        for j in range(k, c):
            value += self._chunk_total_uj(g, j)
            cps[j + 1] = value
        if len(cps) > 4 * _DENSE_CHECKPOINTS:  # keep recent ones, and every 64th for history
            newest = max(cps)
            for j in [j for j in cps if j < newest - _DENSE_CHECKPOINTS and j % 64]:
                if j != self._origin_chunk:
                    del cps[j]
        return value

    def _chunk_total_uj(self, g: _Gpu, c: int) -> int:
        return int(self._chunk(g, c).cum_uj[-1])

    def _util_sum(self, g: _Gpu, end_step: int) -> int:
        """Σ duty cycle over the UTIL_WINDOW_STEPS steps before end_step."""
        total, lo = 0, end_step - UTIL_WINDOW_STEPS
        while lo < end_step:
            c, i = divmod(lo, CHUNK_STEPS)
            j = min(i + end_step - lo, CHUNK_STEPS)
            ucum = self._chunk(g, c).util_cum
            total += int(ucum[j]) - int(ucum[i])
            lo += j - i
        return total

    def _processes(self, g: _Gpu, step: int, used_mib: int) -> tuple[GpuProcess, ...]:
        k = bisect.bisect_right(g.assignments, step, key=lambda a: a.start_step) - 1
        if k < 0 or step >= g.assignments[k].end_step or not g.assignments[k].workload.pids:
            return ()
        pids = g.assignments[k].workload.pids
        each = max(used_mib - BASE_MEMORY_MIB, 0) * _MIB // len(pids)
        return tuple(GpuProcess(pid, each) for pid in pids)

    def _invalidate(self, g: _Gpu, first_chunk: int, last_chunk: int) -> None:
        for c in range(first_chunk, last_chunk + 1):
            self._chunks.pop((g.sim.uuid, c), None)
        for c in [c for c in g.checkpoints if c > first_chunk and c != self._origin_chunk]:
            del g.checkpoints[c]
        g.epoch_cum_uj.clear()

    def _chunk(self, g: _Gpu, c: int) -> Chunk:
        cache_key = (g.sim.uuid, c)
        chunk = self._chunks.get(cache_key)
        if chunk is None:
            chunk = self._chunks[cache_key] = self._render(g, c)
            if len(self._chunks) > self._max_chunks:
                self._chunks.popitem(last=False)
        elif next(reversed(self._chunks)) != cache_key:
            self._chunks.move_to_end(cache_key)
        return chunk

    def _render(self, g: _Gpu, c: int) -> Chunk:
        first = c * CHUNK_STEPS
        tenants = [
            Tenant(a.start_step, a.end_step, a.workload,
                   np.random.default_rng((self._seed, g.key, c, a.start_step)),
                   _hash64(self._seed, g.key, a.start_step))
            for a in self._overlapping(g, first, first + CHUNK_STEPS)
        ]  # fmt: skip
        idle_rng = np.random.default_rng((self._seed, g.key, c))
        return render_chunk(g.spec, first, CHUNK_STEPS, idle_rng, tenants)

    def _overlapping(self, g: _Gpu, lo_step: int, hi_step: int) -> list[_Assignment]:
        # Assignments never overlap, so sorted by start they are sorted by end too.
        k = bisect.bisect_right(g.assignments, lo_step, key=lambda a: a.end_step)
        out = []
        for a in g.assignments[k:]:
            if a.start_step >= hi_step:
                break
            if a.end_step > a.start_step:
                out.append(a)
        return out
