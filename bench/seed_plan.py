"""The planned fleet of the query benchmark: `gpus` GPUs on nodes of 8 over `days` days, kept busy by
jobs drawn from the Alibaba openb trace's job mix, and what each GPU drew minute by minute.

- Jobs: each draws (GPU count, run length, QoS, name) from the trace's GPU tasks (shared/data
  README, section 3): GPU counts 1/2/4/8 as the trace has them, run lengths from
  deletion − scheduled time clipped to [2 min, 7 days] (the trace's long tail is right-censored).
  Fractional GPU requests (gpu_milli < 1000) take a whole GPU here: time slicing is not modelled.
  Team from the pod name's hash (the trace has none, as accounting.demo.alibaba does), kind by
  its rule (several GPUs, or a non-LS task of an hour or more: training; else inference).
- Placement: per node, a job takes the k GPUs that free up first, after a gap drawn from an
  exponential of mean `gap_min` minutes (queueing, drains); a multi-GPU job whose GPUs would
  wait over MAX_WAIT_MIN for each other is drawn again (backfill). About 75 % GPU-time in jobs.
  Jobs start and end on whole minutes; a job still running at the window's end ends there.
- Power: idle draw of the GPU's model when no job holds it; a job draws idle + f·(TDP − idle),
  f drawn per job (training 0.6–0.95, inference 0.2–0.7), with 2 % noise per minute. A few idle
  spells carry a stray process (the UNATTRIBUTED account): 0.5 % of GPU-hours, 10 minutes each.
- One GPU-hour in a thousand has its energy "estimated by power integration" (a counter reset):
  every row of that GPU-hour carries method power-integral.

Energy is integer mJ per minute (W × 60 s × 1000); ledger rows, and the samples of the retained
window, are sums of the same minutes, so Σ accounts of a GPU-hour = Σ its samples exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from accounting.demo.alibaba import gpu_tasks, load_pods, team_of
from accounting.gpu.specs import GPM_MODELS, SPECS

GPUS_PER_NODE = 8
MODELS = ("H100 SXM", "A100 SXM", "H200 SXM")  # one model per node, cycling (as bench.fleet)
MIN_RUN_S, MAX_RUN_S = 120, 7 * 86_400
MAX_WAIT_MIN = 120  # a multi-GPU job never keeps GPUs idle longer, waiting for its gang
IDLE, UNATTRIBUTED = -1, -2  # holder codes of a minute nobody's job holds
US_PER_MIN = 60_000_000


@dataclass
class SeedJob:
    index: int  # 0-based; the job's id is index + 1
    name: str
    team: str
    kind: str  # training | inference
    node: int
    gpus: list[int]  # global GPU indexes (0-based; the GPU's id is index + 1)
    start_min: int
    end_min: int
    power_fraction: float
    duty_pct: int
    mfu: float | None


@dataclass
class Plan:
    gpus: int
    days: int
    seed: int
    jobs: list[SeedJob] = field(default_factory=list)

    @property
    def minutes(self) -> int:
        return self.days * 1_440

    @property
    def hours(self) -> int:
        return self.days * 24

    def model_of(self, gpu: int) -> str:
        return MODELS[(gpu // GPUS_PER_NODE) % len(MODELS)]


def trace_mix() -> list[tuple[int, int, str, str]]:
    """(GPU count, run length s, qos, name) of every GPU task of the trace."""
    return [(p.num_gpu, min(max(p.deletion_s - p.scheduled_s, MIN_RUN_S), MAX_RUN_S), p.qos, p.name)
            for p in gpu_tasks(load_pods())]


def plan(gpus: int, days: int, *, seed: int = 7, gap_min: float = 40.0) -> Plan:
    if gpus < GPUS_PER_NODE or gpus % GPUS_PER_NODE:
        raise ValueError(f"gpus must be a positive multiple of {GPUS_PER_NODE}")
    mix, rng = trace_mix(), random.Random(seed)
    result = Plan(gpus, days, seed)
    total = result.minutes
    for node in range(gpus // GPUS_PER_NODE):
        free = [rng.randrange(0, 60) for _ in range(GPUS_PER_NODE)]
        while min(free) < total:
            k, run_s, qos, name = rng.choice(mix)
            chosen = sorted(range(GPUS_PER_NODE), key=lambda g: free[g])[:k]
            if max(free[g] for g in chosen) - min(free[g] for g in chosen) > MAX_WAIT_MIN:
                continue  # no gang of k GPUs frees up together soon: draw another job (backfill)
            start = max(free[g] for g in chosen) + round(rng.expovariate(1 / gap_min))
            if start >= total:
                for g in chosen:
                    free[g] = total
                continue
            end = min(start + math.ceil(run_s / 60), total)
            training = k > 1 or (qos != "LS" and run_s >= 3_600)
            job = SeedJob(len(result.jobs), f"{name}-{len(result.jobs)}", team_of(name),
                          "training" if training else "inference", node,
                          [node * GPUS_PER_NODE + g for g in chosen], start, end,
                          rng.uniform(0.6, 0.95) if training else rng.uniform(0.2, 0.7),
                          rng.randrange(90, 101) if training else rng.randrange(30, 81),
                          round(rng.uniform(0.15, 0.5), 3) if training else None)
            result.jobs.append(job)
            for g in chosen:
                free[g] = end
    return result


@dataclass
class GpuMinutes:
    """One GPU's minutes: who held it, the energy (mJ) and busy time (µs) of each."""

    holder: np.ndarray  # job index, IDLE or UNATTRIBUTED
    energy_mj: np.ndarray
    busy_us: np.ndarray
    estimated_hours: set[int]


def gpu_minutes(p: Plan, gpu: int, jobs: list[SeedJob]) -> GpuMinutes:
    """The minutes of one GPU, from the jobs that held it (seeded by the plan's seed and the GPU)."""
    rng = np.random.default_rng([p.seed, gpu])
    spec = SPECS[p.model_of(gpu)]
    holder = np.full(p.minutes, IDLE, dtype=np.int64)
    power_w = np.full(p.minutes, spec.idle_w)
    duty = np.zeros(p.minutes)
    for job in jobs:
        holder[job.start_min:job.end_min] = job.index
        power_w[job.start_min:job.end_min] = spec.idle_w + job.power_fraction * (spec.tdp_w - spec.idle_w)
        duty[job.start_min:job.end_min] = job.duty_pct
    for hour in np.flatnonzero(rng.random(p.hours) < 0.005):  # stray processes on idle GPUs
        span = slice(hour * 60 + 20, hour * 60 + 30)
        stray = holder[span] == IDLE
        holder[span][stray] = UNATTRIBUTED
        power_w[span][stray] = spec.idle_w + 0.3 * (spec.tdp_w - spec.idle_w)
        duty[span][stray] = 40
    power_w = power_w * (1 + 0.02 * rng.standard_normal(p.minutes))
    energy = np.rint(power_w * 60_000).astype(np.int64)  # W × 60 s × 1000 mJ/J
    busy = np.rint(duty * (US_PER_MIN / 100)).astype(np.int64)
    estimated = {int(h) for h in np.flatnonzero(rng.random(p.hours) < 0.001)}
    return GpuMinutes(holder, energy, busy, estimated)


@dataclass
class HourRow:
    hour: int
    holder: int
    energy_mj: int
    gpu_us: int
    busy_us: int


def hour_rows(minutes: GpuMinutes) -> list[HourRow]:
    """Σ per (hour, holder): the GPU's ledger rows, in hour order."""
    hour = np.arange(len(minutes.holder)) // 60
    key = hour * (1 << 32) + (minutes.holder + 2)
    keys, inverse = np.unique(key, return_inverse=True)
    energy = np.bincount(inverse, weights=minutes.energy_mj).astype(np.int64)  # < 2^53: exact
    busy = np.bincount(inverse, weights=minutes.busy_us).astype(np.int64)
    count = np.bincount(inverse)
    return [HourRow(int(k >> 32), int((k & 0xFFFFFFFF) - 2), int(e), int(c) * US_PER_MIN, int(b))
            for k, e, c, b in zip(keys, energy, count, busy, strict=True)]


def has_gpm(model: str) -> bool:
    return model in GPM_MODELS
