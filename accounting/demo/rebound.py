"""The rebound demo: a baseline quarter of 7B-parameter training on A100s, a current quarter of
70B-parameter training on H200s, metered by the simulated fleet and ingested into a ledger.

Newer chips do more FLOPs per joule (a negative chip-intensity effect), but the bigger model
does far more work (a larger positive scale effect): energy goes up. Sampling is every 10 min —
the energy counter makes the energy exact at any sampling rate — so two quarters take about a
minute on a laptop-class CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock, to_datetime, to_us
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.specs import get_spec
from accounting.gpu.workloads import Training
from accounting.work.models import WorkReportCreate
from accounting.work.service import record_work

from .replay import ReplayJob, replay

BASELINE = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))
CURRENT = (datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
DAY_S = 86_400


@dataclass(frozen=True)
class Quarter:
    name: str
    period: tuple[datetime, datetime]
    model: str
    gpus: int
    params: int
    mfu: float
    power_fraction: float
    team: str


QUARTERS = (
    Quarter("baseline", BASELINE, "A100 SXM", 2, 7_000_000_000, 0.40, 0.75, "llm"),
    Quarter("current", CURRENT, "H200 SXM", 2, 70_000_000_000, 0.38, 0.80, "llm"),
)


def _runs(q: Quarter) -> list[tuple[int, int]]:
    """Training runs of 12 days with a 2-day gap, over the quarter (seconds from its start)."""
    length_s = int((q.period[1] - q.period[0]).total_seconds())
    runs, t = [], DAY_S
    while t + 12 * DAY_S <= length_s:
        runs.append((t, t + 12 * DAY_S))
        t += 14 * DAY_S
    return runs


def run_rebound_demo(session: Session, spool_dir: Path, *, on_day: Callable[[str, int], None] | None = None) -> None:
    """Meter both quarters into the session's ledger, with each run's FLOPs reported at its end."""
    for q in QUARTERS:
        start_us = to_us(q.period[0])
        clock = FakeClock(start_us)
        node = f"rebound-{q.name}"
        gpus = [SimGpu(f"GPU-{node}-{i}", q.model, i) for i in range(q.gpus)]
        fleet = SimulatedFleet(gpus, clock=clock, seed=17)
        jobs = []
        for n, (a, b) in enumerate(_runs(q)):
            job = ReplayJob(f"{q.name}-{q.params // 10**9}b-run{n}", q.team, tuple(g.uuid for g in gpus),
                            start_us + a * US_PER_S, start_us + b * US_PER_S, source="rebound-demo", kind="training")
            for g in gpus:
                fleet.assign(g.uuid, job.start_us, job.end_us,
                             Training(power_fraction=q.power_fraction, mfu=q.mfu, params=q.params), tenant=job.key)
            jobs.append(job)
        duration_s = int((q.period[1] - q.period[0]).total_seconds())
        ids = replay(session, fleet, clock, jobs, spool_dir=spool_dir / q.name, start_us=start_us,
                     duration_s=duration_s, sample_s=600, flush_s=DAY_S, node=node,
                     on_tick=(lambda s, name=q.name: on_day(name, s // DAY_S)) if on_day else None)
        peak_flop_per_s = get_spec(q.model).peak_bf16_tflops * 1e12
        for job in jobs:
            # The simulator's definition of a Training run's work (fleet.true_work gives the same,
            # but re-renders the quarter to integrate it): mfu × peak × time, on every GPU.
            flops = round(q.mfu * peak_flop_per_s * (job.end_us - job.start_us) / US_PER_S * q.gpus)
            record_work(session, ids[job.key], WorkReportCreate(
                key="total", flops=flops, tokens=flops // (6 * q.params), at=to_datetime(job.end_us),
            ), clock=clock)
        session.commit()
