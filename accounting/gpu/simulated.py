"""The simulated fleet: a deterministic fake of NVML for machines without a GPU.

It owns the ground truth of every simulated GPU — true power as 100 ms step means in integer mW —
and derives from it what NVML would report: the total-energy counter (exact integer µJ inside,
floored to mJ, advancing at each step boundary, restarting at driver resets), the power sensor (a
1 s mean on Hopper and newer, the current step's on A100 and older, or, with
`power_sensor="part-time-25"`, the mean of the first 25 ms of each of the last 10 steps: it sees
inside a step where a workload has kernel bursts, workloads.py KernelBursts; the counter and the
truth never depend on the sensor), duty cycles, memory, clocks, processes and, on Hopper and newer
only (GpuSpec.has_gpm), GPM's SM, tensor and DRAM-bandwidth activity as means since the previous
read (workloads.py says what each workload shows; chunks.py how co-tenants and MIG instances
combine). Readings are taken at `clock.now_us()`.

Shared GPUs: runs with a tenant may overlap, adding dynamic power over one idle baseline (capped
at TDP together); MIG instances (`enable_mig`) run scaled to their slices, metered only as a whole.
Accounts, process owners and per-process / per-instance activity (SM activity there tracks the
dynamic energy a process or instance causes) are defined in sharing.py; the ground-truth queries
(energy, per-account energy, useful work) in truth.py.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from accounting.clock import Clock
from accounting.errors import GpuError, GpuLost, GpuNotSupported
from accounting.gpu import mig as mig_layout
from accounting.gpu import sharing
from accounting.gpu.backend import GpuInfo, GpuProcess, GpuReading, MigActivity, ProcessOwner
from accounting.gpu.chunks import CHUNK_STEPS, SIGNALS, Chunk, Tenant, render_chunk
from accounting.gpu.mig import MigInstance
from accounting.gpu.sharing import Assignment, Segment, dynamic_nj
from accounting.gpu.specs import POWER_SENSORS, GpuSpec, PowerSensor, get_spec
from accounting.gpu.truth import GroundTruth
from accounting.gpu.workloads import BASE_MEMORY_MIB, SENSOR_SLICE_MS, STEP_US, Workload

CHUNK_US = CHUNK_STEPS * STEP_US
SENSOR_WINDOW_US = 1_000_000  # nvmlDeviceGetPowerUsage averages over 1 s on Hopper and newer
UTIL_WINDOW_STEPS = 10  # duty cycles, and the part-time sensor, cover the last second's completed steps
GPM_MIN_WINDOW_US = 100_000  # NVML's GPM needs samples more than 100 ms apart
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


@dataclass(slots=True)
class _Gpu:
    sim: SimGpu
    spec: GpuSpec
    key: int
    assignments: list[Assignment] = field(default_factory=list)  # sorted by start_step
    longest_steps: int = 0  # of any assignment: bounds the search for those overlapping a chunk
    next_serial: int = 0
    mig: tuple[MigInstance, ...] = ()
    last_read_us: int | None = None  # per-process and per-instance activity cover the time since
    gpm_since_us: int | None = None  # GPM means cover the time since (the last read that gave them)
    lost: list[tuple[int, int]] = field(default_factory=list)
    # Counter epochs, sorted: (from_us, first counted step, counter µJ at that step).
    epochs: list[tuple[int, int, int]] = field(default_factory=list)
    checkpoints: dict[int, int] = field(default_factory=dict)  # chunk → cum µJ at its start
    epoch_cum_uj: dict[int, int] = field(default_factory=dict)  # step → cum µJ (cache)


class SimulatedFleet(GroundTruth):
    """A GpuBackend over simulated GPUs; see the module docstring. Ground truth: truth.py."""

    kind = "simulated"

    def __init__(self, gpus: list[SimGpu], *, clock: Clock, seed: int = 0,
                 power_sensor: PowerSensor | None = None) -> None:  # fmt: skip
        """`power_sensor`, when given, replaces every GPU's catalog sensor (specs.PowerSensor)."""
        if power_sensor is not None and power_sensor not in POWER_SENSORS:
            raise ValueError(f"power_sensor must be one of {POWER_SENSORS}")
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
            spec = spec if power_sensor is None else replace(spec, power_sensor=power_sensor)
            g = _Gpu(sim, spec, _hash64(seed, sim.uuid))
            hours = 2 + 46 * (g.key % 10_000) / 10_000
            typical_w = spec.idle_w + 0.3 * (spec.tdp_w - spec.idle_w)
            offset_uj = int(hours * 3_600 * typical_w) * 10**6  # whole mJ
            g.epochs.append((boot_us, _ceil_step(boot_us), offset_uj))
            g.checkpoints[self._origin_chunk] = 0
            self._gpus[sim.uuid] = g
        self._instances: dict[str, tuple[_Gpu, MigInstance]] = {}
        self._owners = sharing.OwnerRegistry()
        self._chunks: OrderedDict[tuple[str, int], tuple[Chunk, tuple[Assignment, ...]]] = OrderedDict()
        self._max_chunks = _CHUNKS_PER_GPU * max(len(self._gpus), 1) + 8

    @classmethod
    def build(cls, models: list[str], *, clock: Clock, seed: int = 0, node: str = "sim",
              power_sensor: PowerSensor | None = None) -> SimulatedFleet:  # fmt: skip
        """GPUs 0..n-1 of `node` with deterministic uuids, unique across nodes."""
        gpus = [
            SimGpu(f"GPU-sim-{node}-{i}-{_hash64(node, i, m) & 0xFFFFFFFF:08x}", m, i)
            for i, m in enumerate(models)
        ]
        return cls(gpus, clock=clock, seed=seed, power_sensor=power_sensor)

    # GpuBackend ---------------------------------------------------------------------------
    def gpus(self) -> list[GpuInfo]:
        """The physical GPUs; MIG instances are listed by `mig_instances`."""
        return [GpuInfo(g.sim.uuid, g.spec.nvml_name, g.sim.index) for g in self._gpus.values()]

    def mig_instances(self, uuid: str) -> list[GpuInfo]:
        with self._lock:
            if uuid in self._instances:
                return []
            g = self._gpu(uuid)
            return [inst.info(g.spec.nvml_name) for inst in g.mig]

    def read(self, uuid: str) -> GpuReading:
        """What NVML would report for `uuid` at the clock's now_us(). On a MIG-enabled GPU the
        duty cycles and processes are unsupported (None, ()) and `mig` carries each instance's
        activity; a MIG instance itself has no energy or power to read (GpuNotSupported)."""
        with self._lock:
            if uuid in self._instances:
                raise GpuNotSupported(f"{uuid} is a MIG instance: NVML meters its parent only", uuid=uuid)
            g = self._gpu(uuid)
            t_us = self._clock.now_us()
            if any(start <= t_us < end for start, end in g.lost):
                raise GpuLost(f"GPU {uuid} is lost", uuid=uuid)
            step = t_us // STEP_US
            c, i = divmod(step, CHUNK_STEPS)
            chunk, assignments = self._rendered(g, c)
            if g.spec.power_sensor == "average-1s":
                window_nj = self._energy_nj(g, t_us) - self._energy_nj(g, t_us - SENSOR_WINDOW_US)
                power_mw = round(window_nj / SENSOR_WINDOW_US)  # nJ / µs = mW
            elif g.spec.power_sensor == "part-time-25":  # the last second's slices that have ended
                end = (t_us - SENSOR_SLICE_MS * 1_000) // STEP_US + 1
                power_mw = round(self._window_sum(g, end, Chunk.sensed_mw_sum) / UTIL_WINDOW_STEPS)
            else:
                power_mw = int(chunk.power_mw[i])
            n_used = int(chunk.memory_used_mib[i])
            # Per-process and per-instance activity cover the time since this GPU's last read.
            since_us = g.last_read_us if g.last_read_us is not None and g.last_read_us < t_us else None
            window = (t_us - SENSOR_WINDOW_US if since_us is None else since_us, t_us)
            g.last_read_us = t_us
            segments = list(self._segments(g, *window))
            util_pct = mem_util_pct = None  # NVML: no duty cycles and no per-process utilization on MIG
            processes: tuple[GpuProcess, ...] = ()
            mig: tuple[MigActivity, ...] = ()
            if g.mig:
                mig = sharing.mig_activity(g.mig, dynamic_nj(segments), g.spec, window[1] - window[0])
            else:
                # Like nvmlDeviceGetProcessUtilization: every run active in the window, exited ones too.
                seen = sharing.seen(segments, assignments, step, window[0])
                if seen:
                    used_bytes = max(n_used - BASE_MEMORY_MIB, 0) * _MIB
                    processes = sharing.processes(seen, step, dynamic_nj(segments), g.spec, window[1] - window[0],
                                                  used_bytes)  # fmt: skip
                util_pct = round(self._window_sum(g, step, Chunk.util_sum) / UTIL_WINDOW_STEPS)
                mem_util_pct = int(chunk.mem_util_pct[i])
            sm_active, tensor_active, dram_bw = self._gpm_means(g, window, segments)
            return GpuReading(
                uuid=uuid, timestamp_us=t_us, energy_mj=self._counter_mj(g, t_us), power_mw=power_mw,
                gpu_util_pct=util_pct, memory_util_pct=mem_util_pct, memory_used_bytes=n_used * _MIB,
                sm_clock_mhz=int(chunk.sm_clock_mhz[i]), processes=processes, mig=mig,
                sm_active_pct=sm_active, tensor_active_pct=tensor_active, dram_bw_pct=dram_bw,
            )  # fmt: skip

    def _gpm_means(self, g: _Gpu, window: tuple[int, int], segments: list[Segment]) -> tuple[float | None, ...]:
        """GPM means (sm, tensor, dram) since the previous read that gave them, or over the last second
        at the first; all None on a GPU without GPM, or within 100 ms of that read, when NVML too keeps
        the older sample for next time. `segments` cut `window`, the one since the last read of any kind."""
        t_us = window[1]
        since = g.gpm_since_us
        lo = since if since is not None and since < t_us else t_us - SENSOR_WINDOW_US
        if not g.spec.has_gpm or t_us - lo < GPM_MIN_WINDOW_US:
            return (None,) * len(SIGNALS)
        g.gpm_since_us = t_us
        segments = segments if lo == window[0] else list(self._segments(g, lo, t_us))
        total = sum(seg.chunk.activity_pct_steps(seg.lo_us, seg.hi_us) for seg in segments)
        scale = STEP_US / (t_us - lo)  # % × steps → %
        return tuple(min(max(v * scale, 0.0), 100.0) for v in total.tolist())

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()

    # ProcessResolver -----------------------------------------------------------------------
    def owner(self, pid: int) -> ProcessOwner:
        """Who runs `pid` on this node: the tenant's job key and a user; a pid the fleet never
        started, or an exclusive assignment's, maps to no job. A pid reused over time resolves to
        the run active at now_us(), else the latest started before it."""
        with self._lock:
            return self._owners.owner(pid, self._clock.now_us())

    # Scenario ------------------------------------------------------------------------------
    def assign(self, uuid: str, start_us: int, end_us: int, workload: Workload, *,
               tenant: sharing.TenantArg = sharing.EXCLUSIVE) -> None:  # fmt: skip
        """Run `workload` on a GPU or MIG instance over [start_us, end_us); power changes at step
        boundaries.

        `tenant` is the job key ("<source>:<external id>") the run belongs to, or None for a process
        of no job; such runs may overlap others on the same GPU or instance. Left out, the run is
        exclusive (the legacy behaviour): it overlaps nothing, its account is
        sharing.legacy_account(uuid, start_us), and it lists only the workload's own pids (a
        tenant's run with no pids gets one derived pid). Assigning into time already read rewrites
        that history (the fleet is a pure function of its scenario); callers driving a live fleet
        assign from now on.
        """
        if end_us <= start_us:
            raise ValueError("an assignment needs end_us > start_us")
        sharing.check_tenant(tenant)
        with self._lock:
            g, inst = self._target(uuid)
            if inst is None and g.mig:
                raise ValueError(f"GPU {uuid} runs MIG: assign to one of its instances")
            sharing.check_free(g.assignments, uuid, start_us, end_us, tenant)
            serial, g.next_serial = g.next_serial, g.next_serial + 1
            pids = tuple(workload.pids)
            if not pids and tenant is not sharing.EXCLUSIVE:
                pids = (self._owners.fresh_pid(_hash64(self._seed, uuid, start_us, serial)),)
            new = Assignment(uuid, start_us, end_us, _ceil_step(start_us), _ceil_step(end_us), workload,
                             tenant, serial, pids, 1.0 if inst is None else inst.share)  # fmt: skip
            bisect.insort(g.assignments, new, key=lambda a: a.start_step)
            g.longest_steps = max(g.longest_steps, new.end_step - new.start_step)
            for pid in pids:
                self._owners.register(pid, start_us, end_us, new.owner())
            if new.end_step > new.start_step:
                self._invalidate(g, new.start_step // CHUNK_STEPS, (new.end_step - 1) // CHUNK_STEPS)

    def enable_mig(self, uuid: str, profiles: Sequence[str]) -> list[str]:
        """Split a GPU into MIG instances, one per profile (e.g. ["3g.40gb", "2g.20gb"]), for its
        whole timeline; returns their uuids. ValueError if the model has no MIG, a profile is
        unknown, the slices exceed 7, MIG is already on, or the GPU already has assignments."""
        with self._lock:
            if uuid in self._instances:
                raise ValueError(f"{uuid} is a MIG instance already")
            g = self._gpu(uuid)
            if g.mig:
                raise ValueError(f"GPU {uuid} already runs MIG")
            if g.assignments:
                raise ValueError(f"GPU {uuid} has assignments: enable MIG before assigning")
            g.mig = mig_layout.layout(uuid, g.sim.model, profiles)
            for inst in g.mig:
                self._instances[inst.uuid] = (g, inst)
            return [inst.uuid for inst in g.mig]

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

    # Internals -------------------------------------------------------------------------------
    def _gpu(self, uuid: str) -> _Gpu:
        try:
            return self._gpus[uuid]
        except KeyError:
            raise GpuError(f"no simulated GPU {uuid!r}", uuid=uuid) from None

    def _target(self, uuid: str) -> tuple[_Gpu, MigInstance | None]:
        if uuid in self._instances:
            return self._instances[uuid]
        return self._gpu(uuid), None

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

    def _window_sum(self, g: _Gpu, end_step: int, part: Callable[[Chunk, int, int], int]) -> int:
        """Σ of a per-step series (`part(chunk, lo, hi)`) over the UTIL_WINDOW_STEPS steps before end_step."""
        total, lo = 0, end_step - UTIL_WINDOW_STEPS
        while lo < end_step:
            c, i = divmod(lo, CHUNK_STEPS)
            j = min(i + end_step - lo, CHUNK_STEPS)
            total += part(self._chunk(g, c), i, j)
            lo += j - i
        return total

    def _segments(self, g: _Gpu, t0_us: int, t1_us: int) -> Iterator[Segment]:
        """[t0, t1) cut at chunk edges: each chunk, its assignments, and the part of it covered."""
        for c in range(t0_us // CHUNK_US, (t1_us - 1) // CHUNK_US + 1):
            chunk, assignments = self._rendered(g, c)
            base = c * CHUNK_US
            yield Segment(chunk, assignments, max(t0_us, base) - base, min(t1_us, base + CHUNK_US) - base)

    def _invalidate(self, g: _Gpu, first_chunk: int, last_chunk: int) -> None:
        for c in range(first_chunk, last_chunk + 1):
            self._chunks.pop((g.sim.uuid, c), None)
        for c in [c for c in g.checkpoints if c > first_chunk and c != self._origin_chunk]:
            del g.checkpoints[c]
        g.epoch_cum_uj.clear()

    def _chunk(self, g: _Gpu, c: int) -> Chunk:
        return self._rendered(g, c)[0]

    def _rendered(self, g: _Gpu, c: int) -> tuple[Chunk, tuple[Assignment, ...]]:
        """Chunk c of the GPU and the assignments of its dynamic rows, cached."""
        cache_key = (g.sim.uuid, c)
        rendered = self._chunks.get(cache_key)
        if rendered is None:
            rendered = self._chunks[cache_key] = self._render(g, c)
            if len(self._chunks) > self._max_chunks:
                self._chunks.popitem(last=False)
        elif next(reversed(self._chunks)) != cache_key:
            self._chunks.move_to_end(cache_key)
        return rendered

    def _render(self, g: _Gpu, c: int) -> tuple[Chunk, tuple[Assignment, ...]]:
        first = c * CHUNK_STEPS
        assignments = sharing.overlapping(g.assignments, g.longest_steps, first, first + CHUNK_STEPS)
        tenants = [
            Tenant(a.start_step, a.end_step, a.workload,
                   np.random.default_rng((self._seed, g.key, c, a.start_step, *a.seed_salt)),
                   _hash64(self._seed, g.key, a.start_step, *a.seed_salt), a.share, a.target)
            for a in assignments
        ]  # fmt: skip
        idle_rng = np.random.default_rng((self._seed, g.key, c))
        return render_chunk(g.spec, first, CHUNK_STEPS, idle_rng, tenants), assignments
