"""Who runs on a simulated GPU and who pays for it: assignments and their tenants, the account
keys of the ground truth, process owners, and the split of a rendered chunk into accounts.

The split is the attribution policy of DESIGN.md applied to the simulator's exact parts, per
100 ms step: each pool (the whole GPU, or one MIG instance holding `share` of it) has a baseline
of idle power × share, split evenly among its active assignments whose tenant is not None (none
active: the IDLE account); MIG slices no instance holds are IDLE too; each assignment's dynamic
power (above the baseline, after the caps of workloads._cap) goes to its tenant, or UNATTRIBUTED
for tenant None.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from accounting.gpu.backend import GpuProcess, MigActivity, ProcessOwner
from accounting.gpu.chunks import Chunk
from accounting.gpu.mig import MigInstance
from accounting.gpu.specs import MIG_SLICES, GpuSpec
from accounting.gpu.workloads import STEP_US, Workload

IDLE = "idle"
UNATTRIBUTED = "unattributed"
RESERVED_ACCOUNTS = (IDLE, UNATTRIBUTED)
UNKNOWN_USER = "mallory"  # who runs the processes that belong to no job
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
          "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter")  # fmt: skip


class _Exclusive(enum.Enum):
    EXCLUSIVE = "exclusive"


# `assign`'s default tenant: the workload holds its GPU (or MIG instance) alone, as before shared
# GPUs existed. Its account is legacy_account(...), its processes belong to no known job.
EXCLUSIVE = _Exclusive.EXCLUSIVE
TenantArg = str | None | _Exclusive


def legacy_account(target_uuid: str, start_us: int) -> str:
    """The account of an exclusive assignment: unique, since exclusive ones never overlap."""
    return f"legacy:{target_uuid}@{start_us}"


def check_tenant(tenant: TenantArg) -> None:
    if tenant is EXCLUSIVE or tenant is None:
        return
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"a tenant is a job key string, None or EXCLUSIVE, not {tenant!r}")
    if tenant in RESERVED_ACCOUNTS or tenant.startswith("legacy:"):
        raise ValueError(f"{tenant!r} is reserved for the simulator's own accounts")


def user_of(tenant: str) -> str:
    """A stable user name per job key."""
    h = int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big")
    return _USERS[h % len(_USERS)]


@dataclass(frozen=True, slots=True, eq=False)  # identity: two runs of the same thing differ
class Assignment:
    target: str  # the physical GPU's uuid, or the MIG instance's
    start_us: int
    end_us: int
    start_step: int  # steps whose start lies in [start_us, end_us)
    end_step: int
    workload: Workload
    tenant: TenantArg
    serial: int  # per GPU, in the order assigned
    pids: tuple[int, ...]  # what NVML lists while it runs
    share: float = 1.0  # a MIG instance's slices / 7

    @property
    def exclusive(self) -> bool:
        return self.tenant is EXCLUSIVE

    @property
    def account(self) -> str:
        if self.tenant is EXCLUSIVE:
            return legacy_account(self.target, self.start_us)
        return UNATTRIBUTED if self.tenant is None else self.tenant

    @property
    def pays_baseline(self) -> bool:
        return self.tenant is not None

    @property
    def seed_salt(self) -> tuple[int, ...]:
        """What tells its random streams apart from others starting at the same step; empty for
        an exclusive whole-GPU run, so legacy scenarios render exactly as they always did."""
        return () if self.exclusive and self.share == 1.0 else (self.serial,)

    def owner(self) -> ProcessOwner:
        if self.tenant is EXCLUSIVE:
            return ProcessOwner(None)  # the allocation, not the simulator, knows its job
        if self.tenant is None:
            return ProcessOwner(None, UNKNOWN_USER)
        return ProcessOwner(self.tenant, user_of(self.tenant))


def check_free(assignments: Sequence[Assignment], target: str, start_us: int, end_us: int,
               tenant: TenantArg) -> None:  # fmt: skip
    """ValueError if a run on `target` over [start_us, end_us) would overlap an exclusive one, or be
    exclusive and overlap any."""
    for a in assignments:
        if a.target == target and a.start_us < end_us and start_us < a.end_us and (a.exclusive or tenant is EXCLUSIVE):
            raise ValueError(f"{target} already runs an exclusive workload in that time")


def overlapping(assignments: Sequence[Assignment], longest_steps: int, lo_step: int,
                hi_step: int) -> tuple[Assignment, ...]:  # fmt: skip
    """The non-empty runs with steps in [lo_step, hi_step), of runs sorted by start_step; none that
    starts before lo_step - longest_steps can reach lo_step."""
    k = bisect.bisect_left(assignments, lo_step - longest_steps, key=lambda a: a.start_step)
    out = []
    for a in assignments[k:]:
        if a.start_step >= hi_step:
            break
        if a.end_step > lo_step and a.end_step > a.start_step:
            out.append(a)
    return tuple(out)


class OwnerRegistry:
    """Who ran each pid, and when: pids are reused over time."""

    def __init__(self) -> None:
        self._runs: dict[int, list[tuple[int, int, ProcessOwner]]] = {}  # pid → (from, to, owner)

    def fresh_pid(self, key: int) -> int:
        """A pid no run has used yet, derived from `key`."""
        pid = 2_000 + key % 4_000_000
        while pid in self._runs:
            pid += 1
        return pid

    def register(self, pid: int, start_us: int, end_us: int, owner: ProcessOwner) -> None:
        runs = self._runs.setdefault(pid, [])
        runs.append((start_us, end_us, owner))
        runs.sort(key=lambda r: r[0])

    def owner(self, pid: int, now_us: int) -> ProcessOwner:
        """The owner of the run of `pid` active at now_us, else of the latest one started before
        it, else of its first; a pid never seen belongs to nobody."""
        runs = self._runs.get(pid)
        if not runs:
            return ProcessOwner(None)
        started = [r for r in runs if r[0] <= now_us] or runs[:1]
        active = [r for r in started if now_us < r[1]]
        return (active or started)[-1][2]


@dataclass(frozen=True, slots=True)
class Pool:
    """A part of the GPU whose idle baseline its tenants share: the whole GPU, or a MIG instance."""

    share: float
    members: tuple[int, ...]  # indices into the chunk's assignments


def split_accounts(chunk: Chunk, assignments: Sequence[Assignment], pools: Sequence[Pool],
                   spare_share: float) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-step power in mW (float) of every account with a part in the chunk; the accounts add up
    to chunk.power_mw (to float precision). `spare_share` of the baseline (MIG slices no instance
    holds) is IDLE."""
    idle = chunk.idle_mw.astype(np.float64)
    n = len(idle)
    out: dict[str, np.ndarray] = {}

    def add(account: str, lo: int, hi: int, values: np.ndarray) -> None:
        series = out.get(account)
        if series is None:
            series = out[account] = np.zeros(n)
        series[lo:hi] += values

    for pool in pools:
        payers = [j for j in pool.members if assignments[j].pays_baseline]
        count = np.zeros(n)
        for j in payers:
            lo, hi = chunk.spans[j]
            count[lo:hi] += 1
        baseline = idle * pool.share
        add(IDLE, 0, n, np.where(count == 0, baseline, 0.0))
        each = np.divide(baseline, count, out=np.zeros(n), where=count > 0)
        for j in payers:
            lo, hi = chunk.spans[j]
            add(assignments[j].account, lo, hi, each[lo:hi])
    if spare_share:
        add(IDLE, 0, n, idle * spare_share)
    for j, a in enumerate(assignments):
        lo, hi = chunk.spans[j]
        if lo < hi:
            add(a.account, lo, hi, chunk.dynamic_mw[j, lo:hi])
    return out


class Segment(NamedTuple):
    """The part [lo_us, hi_us) (µs from its start) of one rendered chunk that a window covers."""

    chunk: Chunk
    assignments: tuple[Assignment, ...]  # of the chunk's dynamic rows
    lo_us: int
    hi_us: int


def dynamic_nj(segments: Iterable[Segment]) -> dict[Assignment, int]:
    """Each run's dynamic energy over the segments, exact, in nJ."""
    out: dict[Assignment, int] = {}
    for seg in segments:
        if seg.assignments:
            parts = _dynamic_at(seg.chunk, seg.hi_us) - _dynamic_at(seg.chunk, seg.lo_us)
            for a, nj in zip(seg.assignments, parts.tolist(), strict=True):
                out[a] = out.get(a, 0) + nj
    return out


def account_nj(segments: Iterable[Segment], mig: Sequence[MigInstance]) -> dict[str, float]:
    """Every account's energy over the segments of one GPU (MIG layout `mig`), in nJ."""
    out: dict[str, float] = {}
    for seg in segments:
        if mig:
            pools = [Pool(i.share, tuple(j for j, a in enumerate(seg.assignments) if a.target == i.uuid))
                     for i in mig]  # fmt: skip
            spare = (MIG_SLICES - sum(i.slices for i in mig)) / MIG_SLICES
        else:
            pools, spare = [Pool(1.0, tuple(range(len(seg.assignments))))], 0.0
        for account, power_mw in split_accounts(seg.chunk, seg.assignments, pools, spare).items():
            out[account] = out.get(account, 0.0) + _integral_nj(power_mw, seg.lo_us, seg.hi_us)
    return out


def seen(segments: Sequence[Segment], current: Sequence[Assignment], step: int,
         since_us: int) -> tuple[Assignment, ...]:  # fmt: skip
    """The runs with pids that a read at `step` lists for the window [since_us, now) cut into
    `segments`: those running at `step` (in `current`, the assignments of its chunk) and those that
    ran at any time in the window and have exited since, as NVML's buffered utilization samples
    still show them. Sorted by start step, in the order assigned."""
    out: dict[Assignment, None] = {}
    for group in (*(seg.assignments for seg in segments), current):
        for a in group:
            if a.pids and a.start_step <= step and a.end_step * STEP_US > since_us:
                out[a] = None
    return tuple(out)


def processes(seen: Sequence[Assignment], step: int, dynamic: dict[Assignment, int], spec: GpuSpec,
              window_us: int, used_bytes: int) -> tuple[GpuProcess, ...]:  # fmt: skip
    """The pids of the runs `seen` in the window of a read at `step`. A run's SM utilization is its
    mean dynamic power over the whole window as a percent of the GPU's dynamic range (TDP − idle),
    clipped to [0, 100] and split evenly among its pids; the memory above the driver's is split
    evenly among the pids still running at `step`, and an exited run's pids have none (None): NVML's
    compute-process list no longer has them."""
    full_nj = (spec.tdp_w - spec.idle_w) * 1_000 * window_us  # mW × µs
    running = [a for a in seen if step < a.end_step]
    each_bytes = used_bytes // sum(len(a.pids) for a in running) if running else 0
    out: list[GpuProcess] = []
    for a in seen:
        pct = min(max(100 * dynamic.get(a, 0) / full_nj, 0.0), 100.0) / len(a.pids)
        memory = each_bytes if step < a.end_step else None
        out += [GpuProcess(pid, memory, pct) for pid in a.pids]
    return tuple(out)


def mig_activity(mig: Sequence[MigInstance], dynamic: dict[Assignment, int], spec: GpuSpec,
                 window_us: int) -> tuple[MigActivity, ...]:  # fmt: skip
    """Each instance's mean dynamic power over the window as a percent of its capacity,
    (TDP − idle) × slices / 7, clipped to [0, 100]."""
    full_nj = (spec.tdp_w - spec.idle_w) * 1_000 * window_us
    out = []
    for inst in mig:
        nj = sum(v for a, v in dynamic.items() if a.target == inst.uuid)
        out.append(MigActivity(inst.uuid, min(max(100 * nj / (full_nj * inst.share), 0.0), 100.0)))
    return tuple(out)


def _dynamic_at(chunk: Chunk, x_us: int) -> np.ndarray:
    """Each row's dynamic energy from the chunk's start to x µs into it, in nJ (int64)."""
    i, r = divmod(x_us, STEP_US)
    at = chunk.dynamic_cum_uj[:, i] * 1_000
    return at + chunk.dynamic_mw[:, i] * r if r else at


def _integral_nj(power_mw: np.ndarray, lo_us: int, hi_us: int) -> float:
    """∫ of a per-step series over [lo, hi) µs from its start, in nJ."""
    i0, r0 = divmod(lo_us, STEP_US)
    i1, r1 = divmod(hi_us, STEP_US)
    total = float(power_mw[i0:i1].sum()) * STEP_US
    if r0:
        total -= float(power_mw[i0]) * r0
    if r1:
        total += float(power_mw[i1]) * r1
    return total
