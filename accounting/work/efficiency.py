"""Useful work per joule and per GPU-second, per job and per group, over a period.

Sources: energy and activity from the hourly ledger (so answers outlive the raw samples),
allocated time and peak capacity from allocations, work from the jobs' work reports.

- Period: the ledger is hourly, so a period is widened to whole UTC hours, [⌊from⌋, ⌈to⌉), for
  energy and allocated time alike: both then cover the same time.
- Allocated GPU-seconds: allocations clipped to the period (and to now); a MIG instance counts
  slices/7 of its parent, whose model it has.
- FLOPs, by provenance: `reported` when the job reported FLOPs; else `model-estimate` from the
  tokens it reported; else `hardware-estimate`, the ledger's tensor-active time × peak FLOP/s.
- Work in a period: a report is an increment with no start, so a job whose allocations reach
  outside the period counts the part of its reported work that its allocated time in the period
  is of all its allocated time (`work_share`; 1 when it ran wholly inside).
- MFU = FLOPs ÷ Σ (peak FLOP/s at the job's precision × allocated s). A GPU of unknown model, or
  a chip without that precision, gives no MFU rather than a wrong one.
- A group's ratio takes numerator and denominator over the same jobs: MFU over the jobs with
  FLOPs and a known peak, FLOP/J over those with FLOPs, tokens/J over those that reported tokens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import datetime
from fractions import Fraction

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, US_PER_S, Clock, hour_floor_us, to_datetime, to_us
from accounting.gpu.specs import MIG_SLICES, SPECS
from accounting.jobs.models import Allocation, Gpu, Job
from accounting.ledger.grouping import UNKNOWN, GroupBy
from accounting.ledger.models import LedgerEntry
from accounting.ledger.service import SUMMED

from .estimates import hardware_estimate_flops, model_estimate_flops, peak_flops_per_s
from .models import Provenance
from .service import WorkTotals, work_totals

MIXED = "(mixed)"  # a job on GPUs of several models, grouped by model


@dataclass
class LedgerSums:
    """Additive ledger sums of some job-hours; means are ratios of them."""

    energy_mj: int = 0
    gpu_us: int = 0
    util_known_us: int = 0
    busy_us: int = 0
    gpm_known_us: int = 0
    sm_active_us: int = 0
    tensor_active_us: int = 0
    dram_active_us: int = 0
    rated_us: int = 0  # GPU time on a catalogued model: the time idle and TDP watts are known over
    idle_w_us: float = 0.0  # Σ idle W × µs
    tdp_w_us: float = 0.0  # Σ TDP W × µs

    def add(self, other: LedgerSums) -> LedgerSums:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def _pct(self, part: str, known: str) -> float | None:
        known_us = getattr(self, known)
        return 100 * getattr(self, part) / known_us if known_us else None

    duty_cycle_pct = property(lambda self: self._pct("busy_us", "util_known_us"))
    sm_active_pct = property(lambda self: self._pct("sm_active_us", "gpm_known_us"))
    tensor_active_pct = property(lambda self: self._pct("tensor_active_us", "gpm_known_us"))
    dram_bw_pct = property(lambda self: self._pct("dram_active_us", "gpm_known_us"))
    mean_power_w = property(lambda self: self.energy_mj * 1_000 / self.gpu_us if self.gpu_us else None)  # mJ/µs=kW
    idle_power_w = property(lambda self: self.idle_w_us / self.rated_us if self.rated_us else None)
    tdp_w = property(lambda self: self.tdp_w_us / self.rated_us if self.rated_us else None)


@dataclass
class JobUsage:
    """What the ledger and the allocations say about one job over a period."""

    job: Job
    start_us: int
    end_us: int
    ledger: LedgerSums = field(default_factory=LedgerSums)
    hours: dict[int, LedgerSums] = field(default_factory=dict)  # hour start µs → sums (by_hour only)
    tensor_us_by_model: dict[str | None, int] = field(default_factory=dict)  # where GPM was read
    slice_us: int = 0  # allocated time in the period, in 1/7 GPU-µs (a whole GPU counts 7)
    life_slice_us: int = 0  # the same over the job's whole allocated life
    capacity_flop: float | None = 0.0  # Σ peak FLOP/s × allocated s; None: some GPU has no peak
    tdp_energy_j: float | None = 0.0  # Σ TDP W × allocated s, on the same GPUs
    peak_per_gpu: dict[int, float | None] = field(default_factory=dict)  # GPU id → peak × slices/7
    models: set[str | None] = field(default_factory=set)
    spans_us: list[tuple[int, int]] = field(default_factory=list)  # allocations clipped to the period

    @property
    def work_share(self) -> Fraction:
        return Fraction(self.slice_us, self.life_slice_us) if self.life_slice_us else Fraction(1)

    @property
    def peak_flop_per_s(self) -> float | None:
        peaks = list(self.peak_per_gpu.values())
        return None if not peaks or None in peaks else sum(peaks)


@dataclass
class Efficiency:
    """The figures of a job or a group. Units are in the names; mfu and realized_vs_spec are
    fractions (0–1 and a ratio); None where the inputs are not known."""

    energy_j: float
    metered_gpu_s: float  # GPU time the ledger has energy for
    allocated_gpu_s: float
    capacity_flop: float | None  # MFU's denominator: peak FLOP/s × allocated s
    flops: int | None
    tokens: int | None
    samples: int | None
    mfu: float | None
    flop_per_j: float | None
    tokens_per_j: float | None
    j_per_token: float | None
    samples_per_j: float | None
    spec_flop_per_j: float | None  # the chips' peak FLOP/s ÷ TDP
    realized_vs_spec: float | None  # flop_per_j ÷ spec_flop_per_j
    duty_cycle_pct: float | None
    sm_active_pct: float | None
    tensor_active_pct: float | None
    dram_bw_pct: float | None
    mean_power_w: float | None


@dataclass
class JobEfficiency:
    usage: JobUsage  # the job, its period, its ledger sums and allocations
    flops_provenance: str | None
    work: WorkTotals  # everything the job reported, over its whole life
    figures: Efficiency

    @property
    def job(self) -> Job:
        return self.usage.job

    @property
    def gpu_models(self) -> list[str | None]:
        return sorted(self.usage.models, key=lambda m: (m is None, m or ""))


@dataclass
class GroupEfficiency:
    group: str
    jobs: int
    mfu_jobs: int  # jobs whose FLOPs and peak are known: MFU, spec and realized-vs-spec cover these
    flops_by_provenance: dict[str, int]
    figures: Efficiency


@dataclass
class _Totals:
    """Additive sums behind the figures; each ratio's two sides cover the same jobs."""

    ledger: LedgerSums = field(default_factory=LedgerSums)
    slice_us: int = 0
    flops: int | None = None
    flops_mj: int = 0
    tokens: int | None = None
    tokens_mj: int = 0
    samples: int | None = None
    samples_mj: int = 0
    rated_flops: int = 0  # jobs with FLOPs and a known peak
    rated_mj: int = 0
    rated_capacity: float = 0.0
    rated_tdp_j: float = 0.0
    rated_jobs: int = 0
    capacity: float = 0.0  # jobs with a known peak, work or not: the spec efficiency
    tdp_j: float = 0.0

    def add(self, usage: JobUsage, flops: int | None, tokens: int | None, samples: int | None) -> None:
        energy = usage.ledger.energy_mj
        self.ledger.add(usage.ledger)
        self.slice_us += usage.slice_us
        if flops is not None:
            self.flops, self.flops_mj = (self.flops or 0) + flops, self.flops_mj + energy
        if tokens is not None:
            self.tokens, self.tokens_mj = (self.tokens or 0) + tokens, self.tokens_mj + energy
        if samples is not None:
            self.samples, self.samples_mj = (self.samples or 0) + samples, self.samples_mj + energy
        if usage.capacity_flop and usage.tdp_energy_j:
            self.capacity += usage.capacity_flop
            self.tdp_j += usage.tdp_energy_j
            if flops is not None:
                self.rated_flops += flops
                self.rated_mj += energy
                self.rated_capacity += usage.capacity_flop
                self.rated_tdp_j += usage.tdp_energy_j
                self.rated_jobs += 1

    def figures(self) -> Efficiency:
        def per_j(amount: int | None, energy_mj: int) -> float | None:
            return amount * 1_000 / energy_mj if amount is not None and energy_mj else None

        rated_per_j = per_j(self.rated_flops, self.rated_mj) if self.rated_jobs else None
        rated_spec = self.rated_capacity / self.rated_tdp_j if self.rated_jobs else None
        ledger = self.ledger
        return Efficiency(
            energy_j=ledger.energy_mj / 1_000,
            metered_gpu_s=ledger.gpu_us / US_PER_S,
            allocated_gpu_s=self.slice_us / MIG_SLICES / US_PER_S,
            capacity_flop=self.rated_capacity if self.rated_jobs else None,
            flops=self.flops, tokens=self.tokens, samples=self.samples,
            mfu=self.rated_flops / self.rated_capacity if self.rated_jobs else None,
            flop_per_j=per_j(self.flops, self.flops_mj),
            tokens_per_j=per_j(self.tokens, self.tokens_mj),
            j_per_token=self.tokens_mj / 1_000 / self.tokens if self.tokens else None,
            samples_per_j=per_j(self.samples, self.samples_mj),
            spec_flop_per_j=self.capacity / self.tdp_j if self.tdp_j else None,
            realized_vs_spec=rated_per_j / rated_spec if rated_per_j is not None and rated_spec else None,
            duty_cycle_pct=ledger.duty_cycle_pct, sm_active_pct=ledger.sm_active_pct,
            tensor_active_pct=ledger.tensor_active_pct, dram_bw_pct=ledger.dram_bw_pct,
            mean_power_w=ledger.mean_power_w,
        )


def whole_hours(start_us: int, end_us: int) -> tuple[int, int]:
    """[start, end) widened to whole UTC hours."""
    return hour_floor_us(start_us), -(-end_us // US_PER_HOUR) * US_PER_HOUR


def _int(value) -> int:
    return int(value or 0)  # PostgreSQL sums bigints into numerics


def _add_ledger(session: Session, usages: dict[int, JobUsage], ids, start_us: int, end_us: int, by_hour: bool) -> None:
    t, g = LedgerEntry.__table__, Gpu.__table__
    keys = [t.c.job_id, g.c.model, *([t.c.hour] if by_hour else [])]
    query = (
        sa.select(*keys, *(sa.func.sum(t.c[name]) for name in SUMMED))
        .join(g, g.c.id == t.c.gpu_id)
        .where(t.c.job_id.in_(ids), t.c.hour >= to_datetime(start_us), t.c.hour < to_datetime(end_us))
        .group_by(*keys)
    )
    for row in session.execute(query):
        job_id, model = row[0], row[1]
        sums = LedgerSums(**{name: _int(v) for name, v in zip(SUMMED, row[len(keys):], strict=True)})
        spec = SPECS.get(model) if model else None
        if spec is not None:
            sums.rated_us = sums.gpu_us
            sums.idle_w_us, sums.tdp_w_us = spec.idle_w * sums.gpu_us, spec.tdp_w * sums.gpu_us
        usage = usages[job_id]
        usage.ledger.add(sums)
        if by_hour:
            usage.hours.setdefault(to_us(row[2]), LedgerSums()).add(sums)
        if sums.gpm_known_us:
            usage.tensor_us_by_model[model] = usage.tensor_us_by_model.get(model, 0) + sums.tensor_active_us
        usage.models.add(model)


def _add_allocations(session: Session, usages: dict[int, JobUsage], ids, now_us: int | None) -> None:
    a, g = Allocation.__table__, Gpu.__table__
    parent = g.alias("parent")
    rows = session.execute(
        sa.select(a.c.job_id, a.c.gpu_id, a.c.start_at, a.c.end_at, g.c.mig_slices, g.c.parent_id,
                  sa.func.coalesce(parent.c.model, g.c.model))
        .join(g, g.c.id == a.c.gpu_id)
        .outerjoin(parent, parent.c.id == g.c.parent_id)
        .where(a.c.job_id.in_(ids))
    ).all()
    for job_id, gpu_id, start_at, end_at, slices, parent_id, model in rows:
        usage = usages[job_id]
        begin = to_us(start_at)
        end = to_us(end_at) if end_at is not None else max(now_us or usage.end_us, begin)
        weight = (slices or 1) if parent_id is not None else MIG_SLICES
        lo, hi = max(begin, usage.start_us), min(end, usage.end_us, end if now_us is None else now_us)
        usage.life_slice_us += weight * (end - begin)
        usage.models.add(model)
        if hi <= lo:
            continue
        usage.slice_us += weight * (hi - lo)
        usage.spans_us.append((lo, hi))
        spec = SPECS.get(model) if model else None
        peak = peak_flops_per_s(spec, usage.job.precision) if spec else None
        gpu_s = weight * (hi - lo) / MIG_SLICES / US_PER_S
        usage.peak_per_gpu[gpu_id] = None if peak is None else peak * weight / MIG_SLICES
        if peak is None or usage.capacity_flop is None:
            usage.capacity_flop = usage.tdp_energy_j = None
        else:
            usage.capacity_flop += peak * gpu_s
            usage.tdp_energy_j += spec.tdp_w * gpu_s


def collect(session: Session, start_us: int, end_us: int, *, job_ids: list[int] | None = None,
            now_us: int | None = None, by_hour: bool = False) -> list[JobUsage]:
    """The usage of the jobs that held a GPU or drew energy in [start, end) widened to whole
    hours (or of `job_ids`), ordered by job id. Open allocations run to now when now_us is given."""
    start_us, end_us = whole_hours(start_us, end_us)
    start, end = to_datetime(start_us), to_datetime(end_us)
    ids: list[int] | sa.Select = list(job_ids or [])
    if job_ids is None:  # a subquery, not a list of binds: a month of a large fleet has many jobs
        a, t = Allocation.__table__, LedgerEntry.__table__
        allocated = sa.select(a.c.job_id).where(a.c.start_at < end, sa.or_(a.c.end_at.is_(None), a.c.end_at > start))
        metered = sa.select(t.c.job_id).where(t.c.job_id.is_not(None), t.c.hour >= start, t.c.hour < end)
        wanted = sa.union(allocated, metered).subquery()
        ids = sa.select(wanted.c.job_id)
    jobs = session.execute(sa.select(Job).where(Job.id.in_(ids)).order_by(Job.id)).scalars().all()
    if not jobs:
        return []
    usages = {job.id: JobUsage(job, start_us, end_us) for job in jobs}
    _add_ledger(session, usages, ids, start_us, end_us, by_hour)
    _add_allocations(session, usages, ids, now_us)
    return list(usages.values())


def _hardware_flops(usage: JobUsage) -> int | None:
    if not usage.tensor_us_by_model:
        return None
    total = 0
    for model, tensor_us in usage.tensor_us_by_model.items():
        spec = SPECS.get(model) if model else None
        peak = peak_flops_per_s(spec, usage.job.precision) if spec else None
        if peak is None:
            return None
        total += hardware_estimate_flops(tensor_us, peak)
    return total


def _work(usage: JobUsage, work: WorkTotals) -> tuple[int | None, str | None, int | None, int | None]:
    """(FLOPs, provenance, tokens, samples) of the job in the period."""
    share = usage.work_share

    def part(figure: str) -> int | None:
        return int(getattr(work, figure) * share) if figure in work.figures else None

    flops, tokens = part("flops"), part("tokens")
    if flops is not None:
        return flops, Provenance.reported.value, tokens, part("samples")
    estimate = model_estimate_flops(usage.job, tokens)
    if estimate is not None:
        return estimate, Provenance.model_estimate.value, tokens, part("samples")
    estimate = _hardware_flops(usage)
    return estimate, (Provenance.hardware_estimate.value if estimate is not None else None), tokens, part("samples")


def evaluate(session: Session, usages: list[JobUsage]) -> list[JobEfficiency]:
    work: dict[int, WorkTotals] = {}
    for k in range(0, len(usages), 10_000):  # bounded IN lists
        work |= work_totals(session, [u.job.id for u in usages[k:k + 10_000]])
    result = []
    for usage in usages:
        flops, provenance, tokens, samples = _work(usage, work[usage.job.id])
        totals = _Totals()
        totals.add(usage, flops, tokens, samples)
        result.append(JobEfficiency(usage, provenance, work[usage.job.id], totals.figures()))
    return result


def job_efficiency(session: Session, job: Job, *, clock: Clock, start: datetime | None = None,
                   end: datetime | None = None) -> JobEfficiency:
    """One job's efficiency over [start, end), by default its life (to now while it runs)."""
    now_us = clock.now_us()
    start_us = to_us(start or job.started_at)
    end_us = to_us(end or job.ended_at) if (end or job.ended_at) else max(now_us, start_us)
    end_us = max(end_us, start_us + 1)  # a job that ended as it started still has its hour
    return evaluate(session, collect(session, start_us, end_us, job_ids=[job.id], now_us=now_us))[0]


def group_key(group_by: GroupBy, e: JobEfficiency) -> str:
    job = e.job
    if group_by == GroupBy.job:
        return f"{job.source}:{job.external_id}"
    if group_by == GroupBy.team:
        return job.team
    if group_by == GroupBy.project:
        return job.project or UNKNOWN
    models = set(e.gpu_models)
    return MIXED if len(models) > 1 else (next(iter(models)) or UNKNOWN) if models else UNKNOWN


def efficiency_by(session: Session, *, group_by: GroupBy, start: datetime, end: datetime,
                  clock: Clock | None = None, team: str | None = None) -> list[GroupEfficiency]:
    """Σ FLOPs, energy, GPU-seconds, capacity, tokens per group → the same ratios as a job's,
    largest energy first. A job on GPUs of several models is grouped by model as MIXED. With a
    clock, open allocations end now; without one, at the period's end. `team`: its jobs only."""
    totals: dict[str, _Totals] = defaultdict(_Totals)
    jobs: dict[str, int] = defaultdict(int)
    provenance: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    usages = collect(session, to_us(start), to_us(end), now_us=clock.now_us() if clock else None)
    for e in evaluate(session, [u for u in usages if team is None or u.job.team == team]):
        key = group_key(group_by, e)
        f = e.figures
        totals[key].add(e.usage, f.flops, f.tokens, f.samples)
        jobs[key] += 1
        if e.flops_provenance is not None:
            provenance[key][e.flops_provenance] += f.flops or 0
    groups = [GroupEfficiency(key, jobs[key], t.rated_jobs, dict(provenance[key]), t.figures())
              for key, t in totals.items()]
    return sorted(groups, key=lambda g: (-g.figures.energy_j, g.group))
