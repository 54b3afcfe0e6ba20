"""Split one measured interval's energy over hours and accounts, exactly, in integer mJ.

Every time piece of an interval [t0, t1) with energy E is F(b) − F(a) with
F(t) = ⌊E·(t − t0) / (t1 − t0)⌋. The pieces telescope, so however an interval is cut (by
hour boundaries, by allocation starts and ends) they add up to E with no rounding residue,
and a piece is the same whichever recomputation asks for it. Inside a piece, energy is
divided among accounts by integer largest-remainder splits, which are exact too.

Policy (DESIGN.md, "Attribution"):
- one holder (a job, or nobody = IDLE) and no one else's processes: it pays all (`exclusive`);
- co-tenants on one GPU: the idle baseline is split evenly among the jobs holding it; the
  active rest by per-process SM utilization (`sm-share`), or evenly without it (`even`);
  processes that map to no job take their SM share to UNATTRIBUTED;
- MIG: the parent's baseline by slice size, its active rest by per-instance activity
  (`mig-activity`) or by slice size (`mig-slice`); slices nobody holds go to IDLE;
- an interval whose energy was estimated keeps its method (`power-integral`, `missing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from accounting.clock import US_PER_HOUR

from .models import Method


@dataclass(frozen=True, slots=True)
class Tenancy:
    """A job holding a GPU over [start_us, end_us); end_us None = still running."""

    job_id: int
    start_us: int
    end_us: int | None

    def covers(self, a: int, b: int) -> bool:
        return self.start_us <= a and (self.end_us is None or self.end_us >= b)


@dataclass(frozen=True, slots=True)
class ProcessUse:
    """A process seen on the GPU during the interval. job_id None: it maps to no known job."""

    job_id: int | None
    pid: int
    user: str | None
    sm_pct: float
    job_key: str | None = None


@dataclass(frozen=True, slots=True)
class MigSlot:
    """One MIG instance of the parent GPU: its slices, who holds it, its activity (or None)."""

    slices: int
    tenancies: tuple[Tenancy, ...]
    activity_pct: float | None = None


@dataclass(frozen=True, slots=True)
class GpuSignals:
    """What is known about the GPU during one interval besides its energy."""

    baseline_mw: int = 0  # idle power of the GPU model; 0 when the model is unknown
    processes: tuple[ProcessUse, ...] = ()
    mig: tuple[MigSlot, ...] = ()
    total_slices: int = 7


class Share(NamedTuple):  # a tuple: made for every interval, so it must be cheap to make
    hour_us: int  # start of the UTC hour
    job_id: int | None  # None and pid None: IDLE; None with a pid: UNATTRIBUTED
    method: str
    energy_mj: int
    gpu_us: int
    pid: int | None = None
    user: str | None = None
    job_key: str | None = None


NO_SIGNALS = GpuSignals()
# Plain strings of the methods the common case uses (a StrEnum's str() is a Python call).
EXCLUSIVE, EVEN = Method.exclusive.value, Method.even.value


def split_weighted(amount: int, weights: Sequence[float]) -> list[int]:
    """Integer parts proportional to `weights` that add up to `amount` exactly (largest remainder)."""
    total = sum(weights)
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    raw = [amount * w / total for w in weights]
    parts = [int(r) for r in raw]
    left = amount - sum(parts)
    for i in sorted(range(len(raw)), key=lambda i: (parts[i] - raw[i], i))[:left]:
        parts[i] += 1
    return parts


def split_evenly(amount: int, ways: int) -> list[int]:
    base, extra = divmod(amount, ways)
    return [base + (1 if i < extra else 0) for i in range(ways)]


def _cut_points(t0: int, t1: int, tenancies: Sequence[Tenancy]) -> list[int]:
    points = {t0, t1}
    hour = t0 - t0 % US_PER_HOUR + US_PER_HOUR
    while hour < t1:
        points.add(hour)
        hour += US_PER_HOUR
    for tenancy in tenancies:
        for edge in (tenancy.start_us, tenancy.end_us):
            if edge is not None and t0 < edge < t1:
                points.add(edge)
    return sorted(points)


@dataclass
class _Piece:
    """One time piece of an interval, being divided among accounts."""

    hour_us: int
    duration_us: int
    estimated: str | None  # the interval's method when it was estimated
    shares: list[Share] = field(default_factory=list)

    def give(self, job_id: int | None, method: str, energy_mj: int, gpu_us: int = 0, process=None) -> None:
        method = self.estimated or method
        if process is not None:
            self.shares.append(Share(self.hour_us, job_id, method, energy_mj, gpu_us,
                                     None if job_id else process.pid, None if job_id else process.user,
                                     None if job_id else process.job_key))
        else:
            self.shares.append(Share(self.hour_us, job_id, method, energy_mj, gpu_us))

    def evenly(self, holders: list[int], method: str, energy_mj: int, gpu_us: int) -> None:
        if not holders:
            self.give(None, Method.exclusive, energy_mj, gpu_us)
            return
        for job_id, part, time_part in zip(
            holders, split_evenly(energy_mj, len(holders)), split_evenly(gpu_us, len(holders)), strict=True
        ):
            self.give(job_id, method, part, time_part)


def _whole_gpu_hour(hour_us: int, energy: int, cuts: list[int], tenancies: Sequence[Tenancy],
                    signals: GpuSignals, estimated: str | None) -> list[Share]:
    """One hour's part of an interval on a GPU without MIG, cut into pieces by allocations.

    With per-process SM utilization, the idle baseline is spread over the pieces by time and the
    active rest goes where the processes ran: a job that held the GPU for part of the interval did
    its work in that part. Without it, each piece gets the energy of its time.
    """
    allocated = {t.job_id for t in tenancies}
    pieces = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        holders = sorted(t.job_id for t in tenancies if t.covers(a, b))
        # A registered job's process counts only in the pieces its allocation covers.
        running = [p for p in signals.processes if p.sm_pct > 0 and
                   (p.job_id is None or p.job_id not in allocated or p.job_id in holders)]
        parties = set(holders) | {p.job_id for p in running}
        pieces.append((_Piece(hour_us, b - a, estimated), holders, running,
                       len(parties) <= 1 and None not in parties))
    durations = [piece.duration_us for piece, *_ in pieces]
    pairs = [(k, p) for k, (_, _, running, _) in enumerate(pieces) for p in running]
    if pairs:
        baseline = min(energy, signals.baseline_mw * sum(durations) // 1_000_000)
        base_parts = split_weighted(baseline, durations)
        active_parts = split_weighted(energy - baseline, [p.sm_pct * durations[k] for k, p in pairs])
    else:
        base_parts, active_parts = split_weighted(energy, durations), []
    for k, (piece, holders, _, alone) in enumerate(pieces):
        piece.evenly(holders or [p.job_id for p in pieces[k][2]][:1], Method.exclusive if alone else Method.even,
                     base_parts[k], piece.duration_us)
    for (k, process), part in zip(pairs, active_parts, strict=True):
        piece, _, _, alone = pieces[k]
        piece.give(process.job_id, Method.exclusive if alone else Method.sm_share, part, process=process)
    return [share for piece, *_ in pieces for share in _merged(piece.shares)]


def _mig_gpu(piece: _Piece, energy: int, a: int, b: int, signals: GpuSignals) -> None:
    slots = signals.mig
    free_slices = max(0, signals.total_slices - sum(s.slices for s in slots))
    holders = [sorted(t.job_id for t in s.tenancies if t.covers(a, b)) for s in slots]
    weights = [s.slices for s in slots] + [free_slices]
    if sum(weights) == 0:
        weights[-1] = 1
    activity = [(s.activity_pct or 0.0) * s.slices for s in slots]
    if all(s.activity_pct is not None for s in slots):
        # The activity signal exists; when it says nobody was active, the rest splits like the baseline.
        baseline = min(energy, signals.baseline_mw * piece.duration_us // 1_000_000)
        method = Method.mig_activity
        active_parts = split_weighted(energy - baseline, [*activity, 0] if sum(activity) > 0 else weights)
    else:
        baseline, method = energy, Method.mig_slice
        active_parts = [0] * (len(slots) + 1)
    base_parts = split_weighted(baseline, weights)
    time_parts = split_weighted(piece.duration_us, weights)
    for i, slot_holders in enumerate([*holders, []]):
        piece.evenly(slot_holders, method, base_parts[i] + active_parts[i], time_parts[i])


def attribute_interval(
    start_us: int,
    end_us: int,
    energy_mj: int,
    source_method: str,
    tenancies: Sequence[Tenancy],
    signals: GpuSignals = NO_SIGNALS,
) -> list[Share]:
    """The shares of one interval; Σ share.energy_mj == energy_mj exactly."""
    if end_us <= start_us:
        raise ValueError("an interval must end after it starts")
    if energy_mj < 0:
        raise ValueError("energy of an interval cannot be negative")
    if not signals.processes and not signals.mig:
        shares = _one_piece(start_us, end_us, energy_mj, source_method, tenancies)
        if shares is not None:
            return shares
    return _pieces(start_us, end_us, energy_mj, source_method, tenancies, signals)


def whole_piece_holders(start_us: int, end_us: int, tenancies: Sequence[Tenancy]) -> list[int] | None:
    """The jobs holding the GPU over all of an interval that is one piece: within one hour, and
    no allocation starting or ending inside it. None when the interval is not one piece."""
    if end_us - (start_us - start_us % US_PER_HOUR) > US_PER_HOUR:
        return None
    holders = []
    for t in tenancies:
        if t.start_us <= start_us and (t.end_us is None or t.end_us >= end_us):
            holders.append(t.job_id)
        elif start_us < t.start_us < end_us or (t.end_us is not None and start_us < t.end_us < end_us):
            return None  # an allocation edge cuts the interval
    return holders


def _one_piece(start_us: int, end_us: int, energy_mj: int, source_method: str,
               tenancies: Sequence[Tenancy]) -> list[Share] | None:
    """The common case in one step (None when it is not that case): an interval that is one
    piece, with no process or MIG detail, is shared evenly by its holders (or IDLE takes it).
    `_pieces` gives the very same shares."""
    holders = whole_piece_holders(start_us, end_us, tenancies)
    if holders is None or len(set(holders)) < len(holders):
        return None  # (a job holding the GPU twice over: rare, left to the general case)
    hour_us, duration = start_us - start_us % US_PER_HOUR, end_us - start_us
    estimated = None if source_method == "counter" else Method(source_method).value
    if len(holders) <= 1:
        return [Share(hour_us, holders[0] if holders else None, estimated or EXCLUSIVE, energy_mj, duration)]
    holders.sort()
    return [Share(hour_us, job_id, estimated or EVEN, part, time_part)
            for job_id, part, time_part in zip(holders, split_evenly(energy_mj, len(holders)),
                                               split_evenly(duration, len(holders)), strict=True)]


def _pieces(start_us: int, end_us: int, energy_mj: int, source_method: str, tenancies: Sequence[Tenancy],
            signals: GpuSignals) -> list[Share]:
    """The general case: the interval cut at hour and allocation edges, each piece divided."""
    duration = end_us - start_us

    def cumulative(t: int) -> int:
        return energy_mj * (t - start_us) // duration

    estimated = None if source_method == "counter" else str(Method(source_method))
    every_tenancy = [*tenancies, *(t for slot in signals.mig for t in slot.tenancies)]
    points = _cut_points(start_us, end_us, every_tenancy)
    signals = _concentrated(signals, tenancies, start_us, end_us)
    shares: list[Share] = []
    hour_cuts: list[int] = [points[0]]
    for a, b in zip(points, points[1:], strict=False):
        hour_cuts.append(b)
        if b % US_PER_HOUR and b != end_us:
            continue  # the hour goes on: gather its pieces
        hour_us = a - a % US_PER_HOUR
        energy = cumulative(b) - cumulative(hour_cuts[0])
        if signals.mig:
            for c, d in zip(hour_cuts, hour_cuts[1:], strict=False):
                piece = _Piece(hour_us, d - c, estimated)
                _mig_gpu(piece, cumulative(d) - cumulative(c), c, d, signals)
                shares.extend(_merged(piece.shares))
        else:
            shares.extend(_whole_gpu_hour(hour_us, energy, hour_cuts, tenancies, signals, estimated))
        hour_cuts = [b]
    return shares


def _concentrated(signals: GpuSignals, tenancies: Sequence[Tenancy], t0: int, t1: int) -> GpuSignals:
    """A process's SM utilization is a mean over the whole interval; a registered job that held
    the GPU for part of it did all its work in that part, so its weight there is scaled up."""
    if not signals.processes:
        return signals
    held: dict[int, int] = {}
    for t in tenancies:
        overlap = min(t1, t.end_us if t.end_us is not None else t1) - max(t0, t.start_us)
        if overlap > 0:
            held[t.job_id] = held.get(t.job_id, 0) + overlap
    duration = t1 - t0
    scaled = tuple(
        replace(p, sm_pct=p.sm_pct * duration / min(duration, held[p.job_id]))
        if p.job_id in held and held[p.job_id] < duration else p
        for p in signals.processes
    )
    return replace(signals, processes=scaled)


def _merged(shares: list[Share]) -> list[Share]:
    """One share per account and method within a piece (a baseline and an active part, say)."""
    merged: dict[tuple, Share] = {}
    for share in shares:
        key = (share.job_id, share.method, share.pid, share.user, share.job_key)
        if key in merged:
            old = merged[key]
            share = Share(old.hour_us, old.job_id, old.method, old.energy_mj + share.energy_mj,
                          old.gpu_us + share.gpu_us, old.pid, old.user, old.job_key)
        merged[key] = share
    return list(merged.values())
