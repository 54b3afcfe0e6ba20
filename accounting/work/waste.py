"""Waste and efficiency findings per job over a period, each with its evidence and the energy
at stake.

Read from the ledger's hourly activity sums of each job, not from raw samples, so the findings
stand after the samples expire. `idle-allocated` and `busy-but-useless` look at runs of
consecutive hours of a job that each meet the rule (so a job that trained, then sat idle for
its last hours, is caught for those hours); `low-mfu` and `memory-bound` at the job's whole
period. A job may carry several findings, but a `low-mfu` one is not added to a job that already
carries a waste finding: that one claims its energy, and explains the low MFU.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session

from accounting.clock import US_PER_HOUR, US_PER_S, Clock, to_datetime, to_us
from accounting.jobs.models import JobKind
from accounting.ledger.grouping import GroupBy

from .efficiency import MIXED, JobEfficiency, LedgerSums, collect, evaluate, group_key


@dataclass(frozen=True)
class Thresholds:
    """The rules' thresholds, with why."""

    # Ten minutes: shorter quiet spells are start-up, data loading, checkpoints and queue hand-offs,
    # not an allocation someone forgot. Also the least GPU time a memory-bound insight rests on.
    min_span_s: float = 600
    # NVML's duty cycle is a 1/6 s sample of "any kernel running": a held but unused GPU reads
    # 0–3 % (monitoring agents, the odd memcpy); 5 % leaves room for those and nothing more.
    idle_max_duty_cycle_pct: float = 5.0
    # With GPM, a GPU that does real work shows tensor activity; under 1 % it is noise.
    idle_max_tensor_active_pct: float = 1.0
    # "Looks busy": a duty cycle that anybody would read as a GPU in use.
    busy_min_duty_cycle_pct: float = 80.0
    # A tiny kernel in a loop keeps the duty cycle at 100 % at near-idle power; real training draws
    # 60–90 % of the dynamic range (TDP − idle) and inference bursts well over 20 %.
    busy_max_power_fraction: float = 0.20
    # Where GPM is read it must agree: SMs and tensor pipes (nearly) unused.
    busy_max_sm_active_pct: float = 10.0
    busy_max_tensor_active_pct: float = 10.0
    # A job that says it trains, reports no work and runs no tensor instructions for half an hour
    # (longer than any checkpoint or evaluation pause) does no training.
    no_work_min_s: float = 1800
    no_work_max_tensor_active_pct: float = 1.0
    # Half the median of comparable jobs: MFU varies by model size and parallelism, so a 2× gap to
    # the peers' median is a real difference, not the spread of healthy jobs.
    low_mfu_fraction_of_peer_median: float = 0.5
    # A median of fewer than three peers is one or two other jobs, not a norm.
    low_mfu_min_peers: int = 3
    # DRAM bandwidth in use most of the time while tensor pipes idle: the memory-bound regime of
    # LLM decoding, an insight into the job (bandwidth, not FLOPs, sets its pace), not a fault.
    memory_bound_min_dram_bw_pct: float = 60.0
    memory_bound_max_tensor_active_pct: float = 15.0


class FindingKind(StrEnum):
    idle_allocated = "idle-allocated"
    busy_but_useless = "busy-but-useless"
    low_mfu = "low-mfu"
    memory_bound = "memory-bound"


class Severity(StrEnum):
    waste = "waste"  # energy spent for nothing
    efficiency = "efficiency"  # work done, at a cost well above its peers'
    info = "info"  # an insight into the job, not a fault


@dataclass
class Finding:
    kind: FindingKind
    severity: Severity
    job_id: int
    external_id: str
    source: str
    team: str
    start: datetime  # the span the finding covers
    end: datetime
    rule: str  # the rule that fired, in words
    evidence: dict[str, float | int | str | None]  # signal → value, the unit in the key
    energy_at_stake_j: float
    cost: float | None = None  # money at stake: left for chargeback to fill in


@dataclass
class _Run:
    start_us: int
    end_us: int
    sums: LedgerSums = field(default_factory=LedgerSums)


def _below(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def _is_idle(s: LedgerSums, th: Thresholds) -> bool:
    return (_below(s.duty_cycle_pct, th.idle_max_duty_cycle_pct)
            and (not s.gpm_known_us or _below(s.tensor_active_pct, th.idle_max_tensor_active_pct)))


def _is_fake_busy(s: LedgerSums, th: Thresholds) -> bool:
    """High duty cycle at near-idle power, and (with GPM) SMs and tensor pipes near idle."""
    if s.duty_cycle_pct is None or s.duty_cycle_pct < th.busy_min_duty_cycle_pct or not s.rated_us:
        return False
    limit_w = s.idle_power_w + th.busy_max_power_fraction * (s.tdp_w - s.idle_power_w)
    return _below(s.mean_power_w, limit_w) and (not s.gpm_known_us or (
        _below(s.sm_active_pct, th.busy_max_sm_active_pct)
        and _below(s.tensor_active_pct, th.busy_max_tensor_active_pct)))


def _is_workless_training(e: JobEfficiency, s: LedgerSums, th: Thresholds) -> bool:
    """Claims training, reported no work, ran no tensor instructions (and is not merely idle,
    which idle-allocated covers)."""
    return (e.job.kind == JobKind.training and e.work.reports == 0 and s.gpm_known_us > 0
            and _below(s.tensor_active_pct, th.no_work_max_tensor_active_pct) and not _is_idle(s, th))


def _runs(e: JobEfficiency, holds) -> list[_Run]:
    """Runs of consecutive hours of the job in which `holds(sums)`."""
    runs: list[_Run] = []
    for hour in sorted(e.usage.hours):
        sums = e.usage.hours[hour]
        if not holds(sums):
            continue
        if not runs or runs[-1].end_us != hour:
            runs.append(_Run(hour, hour))
        runs[-1].end_us = hour + US_PER_HOUR
        runs[-1].sums.add(sums)
    return runs


def _allocated(e: JobEfficiency, lo: int, hi: int) -> tuple[int, int, int]:
    """(wall-clock µs some GPU of the job was allocated, first, last µs) within [lo, hi)."""
    spans = sorted((max(a, lo), min(b, hi)) for a, b in e.usage.spans_us if min(b, hi) > max(a, lo))
    covered, reach = 0, lo
    for a, b in spans:
        covered += max(0, b - max(a, reach))
        reach = max(reach, b)
    return (covered, spans[0][0], max(b for _, b in spans)) if spans else (0, lo, lo)


def _evidence(s: LedgerSums, allocated_us: int, **extra) -> dict:
    evidence = {"duty_cycle_pct": s.duty_cycle_pct, "mean_power_w": s.mean_power_w, "idle_power_w": s.idle_power_w,
                "tdp_w": s.tdp_w, "allocated_s": allocated_us / US_PER_S, "energy_j": s.energy_mj / 1_000}
    if s.gpm_known_us:
        evidence |= {"sm_active_pct": s.sm_active_pct, "tensor_active_pct": s.tensor_active_pct,
                     "dram_bw_pct": s.dram_bw_pct}
    return evidence | extra


def _finding(e: JobEfficiency, kind: FindingKind, severity: Severity, span: tuple[int, int], rule: str,
             evidence: dict, energy_j: float) -> Finding:
    job = e.job
    return Finding(kind, severity, job.id, job.external_id, job.source, job.team, to_datetime(span[0]),
                   to_datetime(span[1]), rule, evidence, energy_j)


def _waste(e: JobEfficiency, th: Thresholds) -> list[Finding]:
    found = []
    for run in _runs(e, lambda s: _is_idle(s, th)):
        allocated_us, lo, hi = _allocated(e, run.start_us, run.end_us)
        if allocated_us >= th.min_span_s * US_PER_S and _is_idle(run.sums, th):
            rule = (f"allocated ≥ {th.min_span_s / 60:g} min with a duty cycle under {th.idle_max_duty_cycle_pct:g} %"
                    f" and, where GPM is read, tensor activity under {th.idle_max_tensor_active_pct:g} %")
            found.append(_finding(e, FindingKind.idle_allocated, Severity.waste, (lo, hi), rule,
                                  _evidence(run.sums, allocated_us), run.sums.energy_mj / 1_000))
    for run in _runs(e, lambda s: _is_fake_busy(s, th) or _is_workless_training(e, s, th)):
        allocated_us, lo, hi = _allocated(e, run.start_us, run.end_us)
        if allocated_us >= th.min_span_s * US_PER_S and _is_fake_busy(run.sums, th):
            rule = (f"duty cycle ≥ {th.busy_min_duty_cycle_pct:g} % at a mean power under idle + "
                    f"{th.busy_max_power_fraction:.0%} of (TDP − idle), SM and tensor activity near 0")
        elif allocated_us >= th.no_work_min_s * US_PER_S and _is_workless_training(e, run.sums, th):
            rule = (f"a training job with no work reported and tensor activity under "
                    f"{th.no_work_max_tensor_active_pct:g} % for ≥ {th.no_work_min_s / 60:g} min")
        else:
            continue
        found.append(_finding(e, FindingKind.busy_but_useless, Severity.waste, (lo, hi), rule,
                              _evidence(run.sums, allocated_us, work_reports=e.work.reports),
                              run.sums.energy_mj / 1_000))
    return found


def _whole_span(e: JobEfficiency) -> tuple[int, int, int]:
    return _allocated(e, e.usage.start_us, e.usage.end_us)


def _memory_bound(e: JobEfficiency, th: Thresholds) -> Finding | None:
    s = e.usage.ledger
    if (s.gpm_known_us < th.min_span_s * US_PER_S or s.dram_bw_pct is None
            or s.dram_bw_pct < th.memory_bound_min_dram_bw_pct
            or not _below(s.tensor_active_pct, th.memory_bound_max_tensor_active_pct)):
        return None
    allocated_us, lo, hi = _whole_span(e)
    if hi <= lo:
        lo, hi = e.usage.start_us, e.usage.end_us
    rule = (f"DRAM bandwidth ≥ {th.memory_bound_min_dram_bw_pct:g} % of peak with tensor activity under "
            f"{th.memory_bound_max_tensor_active_pct:g} %: memory bandwidth, not FLOPs, sets the pace")
    return _finding(e, FindingKind.memory_bound, Severity.info, (lo, hi), rule, _evidence(s, allocated_us), 0.0)


def _median_without(ordered: list[float], value: float) -> float:
    """statistics.median of the ascending `ordered` with one `value` taken out (any equal one: same
    multiset), read off by index."""
    i, n = bisect.bisect_left(ordered, value), len(ordered) - 1

    def at(k: int) -> float:
        return ordered[k] if k < i else ordered[k + 1]
    return at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2


def _low_mfu(jobs: list[JobEfficiency], wasteful: set[int], th: Thresholds) -> list[Finding]:
    """MFU under a fraction of the median of peers: same GPU model and job kind, with an MFU,
    carrying no waste finding (a forgotten allocation is no norm to compare with)."""
    cohorts: dict[tuple[str, str], list[JobEfficiency]] = defaultdict(list)
    for e in jobs:
        model = group_key(GroupBy.gpu_model, e)
        if e.figures.mfu is not None and model != MIXED and e.job.id not in wasteful:
            cohorts[(model, str(e.job.kind))].append(e)
    found = []
    for cohort in cohorts.values():
        ordered = sorted(e.figures.mfu for e in cohort)  # once per cohort: O(n log n), not O(n²)
        for e in cohort:
            peers = len(ordered) - 1
            if peers < th.low_mfu_min_peers:
                continue
            median, mfu = _median_without(ordered, e.figures.mfu), e.figures.mfu
            if not mfu < th.low_mfu_fraction_of_peer_median * median:
                continue
            allocated_us, lo, hi = _whole_span(e)
            s = e.usage.ledger
            rule = (f"MFU under {th.low_mfu_fraction_of_peer_median:g} × the median of {peers} peers "
                    f"(same GPU model and job kind)")
            evidence = _evidence(s, allocated_us, mfu=mfu, peer_median_mfu=median, peer_jobs=peers,
                                 flops_provenance=e.flops_provenance)
            # Had it run at its peers' MFU, the same work would have taken mfu/median of the time.
            found.append(_finding(e, FindingKind.low_mfu, Severity.efficiency, (lo, hi), rule, evidence,
                                  s.energy_mj / 1_000 * (1 - mfu / median)))
    return found


def find_waste(session: Session, start: datetime, end: datetime, *, thresholds: Thresholds = Thresholds(),
               clock: Clock | None = None) -> list[Finding]:
    """Every finding in [start, end) widened to whole hours, the largest energy at stake first.
    With a clock, open allocations end now; without one, at the period's end."""
    usages = collect(session, to_us(start), to_us(end), now_us=clock.now_us() if clock else None, by_hour=True)
    findings = judge(evaluate(session, usages), thresholds)
    return sorted(findings, key=lambda f: (-f.energy_at_stake_j, f.job_id, f.kind, f.start))


def judge(jobs: list[JobEfficiency], thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """The findings of jobs already evaluated (the statement evaluates a month's jobs once for
    its work figures and its waste)."""
    findings = [f for e in jobs for f in _waste(e, thresholds)]
    wasteful = {f.job_id for f in findings}
    findings.extend(_low_mfu(jobs, wasteful, thresholds))
    findings.extend(f for e in jobs if (f := _memory_bound(e, thresholds)) is not None)
    return findings
