"""Split one measured interval's energy over hours and accounts, exactly, in integer mJ.

Every piece of an interval [t0, t1) with energy E is F(b) − F(a) with
F(t) = ⌊E·(t − t0) / (t1 − t0)⌋. The pieces telescope, so however an interval is cut (by
hour boundaries, by allocation starts and ends) they add up to E with no rounding residue,
and a piece is the same whichever recomputation asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from accounting.clock import US_PER_HOUR

from .models import Method


@dataclass(frozen=True, slots=True)
class Tenancy:
    """A job holding a GPU over [start_us, end_us); end_us None = still running."""

    job_id: int
    start_us: int
    end_us: int | None


@dataclass(frozen=True, slots=True)
class Share:
    hour_us: int  # start of the UTC hour
    job_id: int | None  # None = the GPU's IDLE account
    method: str
    energy_mj: int
    gpu_us: int


def _cut_points(t0: int, t1: int, tenancies: Iterable[Tenancy]) -> list[int]:
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


def _split_evenly(amount: int, ways: int) -> list[int]:
    base, extra = divmod(amount, ways)
    return [base + (1 if i < extra else 0) for i in range(ways)]


def attribute_interval(
    start_us: int,
    end_us: int,
    energy_mj: int,
    source_method: str,
    tenancies: Sequence[Tenancy],
) -> list[Share]:
    """The shares of one interval; Σ share.energy_mj == energy_mj exactly.

    Time with no tenant goes to IDLE; one tenant pays all of it (idle baseline included);
    several co-tenants split it evenly, the remainder going to the lowest job ids.
    """
    if end_us <= start_us:
        raise ValueError("an interval must end after it starts")
    if energy_mj < 0:
        raise ValueError("energy of an interval cannot be negative")
    duration = end_us - start_us

    def cumulative(t: int) -> int:
        return energy_mj * (t - start_us) // duration

    shares: list[Share] = []
    points = _cut_points(start_us, end_us, tenancies)
    for a, b in zip(points, points[1:], strict=False):
        energy = cumulative(b) - cumulative(a)
        hour = a - a % US_PER_HOUR
        holders = sorted(
            t.job_id for t in tenancies if t.start_us <= a and (t.end_us is None or t.end_us >= b)
        )
        if source_method == "counter":
            method = Method.exclusive if len(holders) <= 1 else Method.even
        else:
            method = Method(source_method)
        if not holders:
            shares.append(Share(hour, None, method, energy, b - a))
            continue
        for job_id, part, time_part in zip(
            holders,
            _split_evenly(energy, len(holders)),
            _split_evenly(b - a, len(holders)),
            strict=True,
        ):
            shares.append(Share(hour, job_id, method, part, time_part))
    return shares
