"""Accuracy of per-job energy: our counter-based attribution against power polling, on a simulated
fleet with bursty loads, for each power-sensor kind (issue 9, part 4).

The fleet: GPUs of two nodes (H100 SXM and A100 SXM), each running single-GPU jobs one after
another with idle gaps, from 20 s to 30 min long. Training has checkpoint pauses and kernel bursts
in a steady train shorter than a step (workloads.KernelBursts; some periods divide 100 ms and stay
locked against the part-time sensor's slice, others drift through it); inference has request
bursts with kernel trains at a new phase each step. The same fleet (same seed, so the same true
power) is built once per sensor — "average-1s", "part-time-25", "instant" — for every GPU.

Per job, against the fleet's truth (true_account_energies_j):
- counter: the real pipeline, as bench/alibaba_replay.py runs it: a Sampler per node reading at
  1 Hz (the sampler's default), batches every 60 s through ledger.ingest.ingest_batch into a
  temporary SQLite ledger, the job's energy from ledger.reports.job_energy. It reads no power (no
  counter resets here; checked), so one run holds for every sensor;
- poll P s, P in 1, 5, 15, 30 (Kepler's default interval, CodeCarbon's, DCGM's and Slurm's): the
  power reading every P s on a grid of the GPU's own phase, integrated two ways. Rectangles: each
  reading times the P s it ends (the last reading × the interval, as those tools do); trapezoids:
  the readings joined by straight lines. Either way the job gets exactly the part inside its run:
  every second is covered and no reading is dropped, so the errors are the readings' own — sampling
  bursty power, the part-time sensor's blind 75 %, and near a job's ends readings of idle time
  (the negative bias) — not bookkeeping.

    python -m bench accuracy [--hours 1.5] [--seed 7] [--min-job-s 600]   (or python bench/accuracy.py …)
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/accuracy.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from accounting import migrations
from accounting.clock import US_PER_S, FakeClock
from accounting.db import make_engine
from accounting.demo.alibaba import FleetGpu, FleetScenario, ScenarioJob, replay
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.specs import PowerSensor
from accounting.gpu.workloads import STEP_US, Inference, KernelBursts, Training, Workload
from accounting.jobs.models import JobKind
from accounting.ledger.reports import job_energy

START_US = 1_785_110_400 * US_PER_S  # 2026-07-27 00:00 UTC, an hour boundary
SENSORS: tuple[PowerSensor, ...] = ("average-1s", "part-time-25", "instant")
POLL_S = (1, 5, 15, 30)
RULES = ("rectangle", "trapezoid")
NODES = (("n0", "H100 SXM"), ("n1", "A100 SXM"))
LOCKED_PERIODS_MS = (20, 50)  # divide 100 ms: a fixed phase against the sensor's slice
DRIFTING_PERIODS_MS = (37, 43, 61, 83)


@dataclass
class SensorScenario(FleetScenario):
    """A FleetScenario whose fleet has one power sensor on every GPU."""

    power_sensor: PowerSensor | None = None

    def build_fleet(self, clock: FakeClock) -> SimulatedFleet:
        fleet = SimulatedFleet([SimGpu(g.uuid, g.model, g.index) for g in self.gpus], clock=clock, seed=self.seed,
                               power_sensor=self.power_sensor)  # fmt: skip
        for job in self.jobs:
            for uuid in job.gpu_uuids:
                fleet.assign(uuid, job.start_us, job.end_us, job.workload, tenant=job.tenant)
        return fleet


def bursty_workload(rng: random.Random) -> tuple[JobKind, Workload]:
    """A training run with checkpoints, or a serving process with request bursts; kernel trains inside."""
    if rng.random() < 0.5:
        inner = Training(power_fraction=rng.uniform(0.6, 0.95), checkpoint_every_s=rng.choice((60, 120, 300)),
                         checkpoint_s=rng.choice((5, 10, 20)))  # fmt: skip
        period = rng.choice(LOCKED_PERIODS_MS + DRIFTING_PERIODS_MS)
        return JobKind.training, KernelBursts(inner, period_ms=period, duty=rng.uniform(0.4, 0.8))
    inner = Inference(mean_load=rng.uniform(0.2, 0.8), burst_s=rng.choice((0.3, 0.5, 1.0, 2.0)))
    return JobKind.inference, KernelBursts(inner, period_ms=rng.uniform(15, 60), duty=rng.uniform(0.2, 0.6),
                                           random_phase=True)  # fmt: skip


def plan(*, gpus_per_node: int, hours: float, seed: int) -> SensorScenario:
    """Jobs one after another on every GPU, on 100 ms steps, from START_US for `hours`."""
    rng = random.Random(seed)
    end_us = START_US + round(hours * 3_600) * US_PER_S
    gpus = [FleetGpu(f"GPU-acc-{node}-{i}", model, node, i, model)
            for node, model in NODES for i in range(gpus_per_node)]  # fmt: skip
    jobs = []
    for gpu in gpus:
        t_us = START_US + rng.randint(10, 120) * US_PER_S
        while True:
            length_s = rng.choice((rng.uniform(20, 120), rng.uniform(120, 600), rng.uniform(600, 1_800)))
            job_end = t_us + round(length_s * US_PER_S / STEP_US) * STEP_US
            if job_end > end_us - 30 * US_PER_S:
                break
            kind, workload = bursty_workload(rng)
            jobs.append(ScenarioJob(f"{gpu.uuid[8:]}-{len(jobs)}", "bench", kind, (gpu.uuid,), t_us, job_end,
                                    workload, 1_000, False))  # fmt: skip
            t_us = job_end + round(rng.uniform(10, 120) * US_PER_S / STEP_US) * STEP_US
    duration_s = (end_us - START_US) / US_PER_S
    return SensorScenario(START_US, duration_s, 0, round(duration_s), 1.0, seed, gpus, jobs)


def counter_energies_j(scenario: SensorScenario) -> tuple[dict[str, float], dict[str, float]]:
    """Per job key: (the ledger's energy through the real pipeline, the fleet's truth), in J. The
    path reads no power unless a counter resets (none does here): checked, so one run serves every sensor."""
    with tempfile.TemporaryDirectory(prefix="wl-accuracy-") as home:
        url = f"sqlite:///{home}/ledger.db"
        migrations.upgrade(url)
        engine = make_engine(url)
        with Session(engine) as session:
            result = replay(scenario, session=session, clock=FakeClock(scenario.start_us),
                            spool_dir=Path(home) / "spool", sample_s=1.0, batch_s=60.0,
                            after_batch=session.commit)  # fmt: skip
            session.commit()
            truth = result.fleet.true_account_energies_j(scenario.start_us, scenario.end_us)
            energies = {j.tenant: job_energy(session, result.job_ids[j.external_id]) for j in scenario.jobs}
        engine.dispose()
    if any(e.estimated for e in energies.values()):
        raise RuntimeError("some ledger energy was integrated from power: the counter row would depend on the sensor")
    return {key: e.energy_mj / 1_000 for key, e in energies.items()}, {key: truth[key] for key in energies}


def polled_energies_j(scenario: SensorScenario, seed: int) -> dict[tuple[int, str], dict[str, float]]:
    """Per (poll interval, rule), per job key: the integral of power read every P s (module docstring)."""
    clock = FakeClock(scenario.start_us - 60 * US_PER_S)
    fleet = scenario.build_fleet(clock)
    rng = random.Random(seed + 1)
    lcm_us = 30 * US_PER_S  # every poll grid is a subset of the 1 s one, all with the GPU's phase
    base = np.arange(scenario.start_us - lcm_us, scenario.end_us + lcm_us, US_PER_S)
    phases_us = [rng.randrange(0, US_PER_S, 1_000) for _ in scenario.gpus]
    power_mw = np.empty((len(scenario.gpus), len(base)))
    for k, t in enumerate(base.tolist()):  # the clock only goes forward: GPUs in order of their phase
        for g in sorted(range(len(scenario.gpus)), key=phases_us.__getitem__):
            clock.set(t + phases_us[g])
            power_mw[g, k] = fleet.read(scenario.gpus[g].uuid).power_mw
    out: dict[tuple[int, str], dict[str, float]] = {(p, rule): {} for p in POLL_S for rule in RULES}
    for g, gpu in enumerate(scenario.gpus):
        for p in POLL_S:
            t_us, p_mw = base[::p] + phases_us[g], power_mw[g, ::p]
            for job in (j for j in scenario.jobs if gpu.uuid in j.gpu_uuids):
                out[p, "rectangle"][job.tenant] = _rectangles_j(t_us, p_mw, p * US_PER_S, job.start_us, job.end_us)
                out[p, "trapezoid"][job.tenant] = _trapezoids_j(t_us, p_mw, job.start_us, job.end_us)
    return out


def _rectangles_j(t_us: np.ndarray, p_mw: np.ndarray, period_us: int, start_us: int, end_us: int) -> float:
    """Each reading × the period it ends, over the part of that period inside [start, end)."""
    inside_us = np.clip(np.minimum(t_us, end_us) - np.maximum(t_us - period_us, start_us), 0, None)
    return float(np.dot(p_mw, inside_us)) / 1e9  # mW × µs → J


def _trapezoids_j(t_us: np.ndarray, p_mw: np.ndarray, start_us: int, end_us: int) -> float:
    """The integral over [start, end) of the readings joined by straight lines."""
    a, b = np.maximum(t_us[:-1], start_us), np.minimum(t_us[1:], end_us)
    keep = b > a
    a, b = a[keep], b[keep]
    mean_mw = (np.interp(a, t_us, p_mw) + np.interp(b, t_us, p_mw)) / 2
    return float(np.dot(mean_mw, b - a)) / 1e9


def error_row(estimates: dict[str, float], truth: dict[str, float]) -> tuple[float, float, float]:
    """(mean |error|, max |error|, mean signed error = bias) over the jobs, in %."""
    errors = [100 * (estimates[key] / truth[key] - 1) for key in truth]
    return statistics.fmean(abs(e) for e in errors), max(abs(e) for e in errors), statistics.fmean(errors)


def accuracy(
    hours: float = typer.Option(1.5, help="Simulated hours of jobs per GPU."),
    gpus_per_node: int = typer.Option(4, help="GPUs per node (two nodes: H100 SXM, A100 SXM)."),
    seed: int = typer.Option(7, help="Seeds the jobs, their workloads and the fleet."),
    min_job_s: float = typer.Option(0.0, help="Count only jobs at least this long (all are run)."),
) -> None:
    """Per-job energy error: counter-based attribution vs power polling at 1/5/15/30 s, per sensor."""
    console = Console(width=132)
    began = time.perf_counter()
    scenario = plan(gpus_per_node=gpus_per_node, hours=hours, seed=seed)
    counted = {j.tenant for j in scenario.jobs if (j.end_us - j.start_us) / US_PER_S >= min_job_s}
    lengths = sorted((j.end_us - j.start_us) / US_PER_S for j in scenario.jobs if j.tenant in counted)
    if not counted:
        raise typer.BadParameter("no job is that long", param_hint="--min-job-s")
    ledger, truth = counter_energies_j(scenario)
    truth = {key: truth[key] for key in counted}
    table = Table(title=f"Per-job energy error vs truth, % — {len(counted)} jobs on {len(scenario.gpus)} GPUs, "
                  f"{hours:g} simulated h, seed {seed}")  # fmt: skip
    table.add_column("sensor")
    table.add_column("method")
    for rule in RULES:
        for stat in ("mean |err|", "max |err|", "bias"):
            table.add_column(f"{rule}\n{stat}", justify="right")
    counter = [f"{v:.3f}" for v in error_row(ledger, truth)]
    table.add_row("any (reads no power)", "counter → ledger", *counter, "", "", "")
    table.add_section()
    for sensor in SENSORS:
        scenario.power_sensor = sensor
        polled = polled_energies_j(scenario, seed)
        for p in POLL_S:
            cells = [f"{v:.3f}" for rule in RULES for v in error_row(polled[p, rule], truth)]
            table.add_row(sensor, f"poll {p} s", *cells)
        table.add_section()
    console.print(table)
    console.print(f"jobs counted: {len(lengths)}, {lengths[0]:.0f}–{lengths[-1]:.0f} s long, median "
                  f"{statistics.median(lengths):.0f} s; bias = mean signed error; "
                  f"wall time {time.perf_counter() - began:.1f} s")  # fmt: skip


if __name__ == "__main__":
    typer.run(accuracy)
