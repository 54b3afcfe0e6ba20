"""`wattledger demo`: the foundation scenario through the real pipeline, faster than real time.

sampler (simulated fleet, fake clock) → spool → broker (Celery's SQLAlchemy transport) →
a real `celery worker` process → SQLite ledger → HTTP queries against the API. Prints, per
job, the attributed energy next to the simulated ground truth, and the conservation check.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from accounting import migrations
from accounting.auth.service import create_key
from accounting.clock import FakeClock, SystemClock, to_datetime
from accounting.config import BackendChoice, Settings
from accounting.db import engine_for, session_scope
from accounting.demo.scenario import (
    SOURCE,
    Scenario,
    build_fleet,
    foundation_scenario,
    job_gpu_uuids,
    true_job_energy_j,
)
from accounting.ledger.models import IngestedBatch
from accounting.ledger.reports import conservation_errors
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool

from .celery_app import make_celery
from .demo_chargeback import render_statement, set_up_site, statement
from .demo_work import render_work, work_report
from .processes import ApiServer, batch_sender, start_worker, stop_process

TOLERANCE_PCT = {"exclusive": 0.1, "shared": 2.0}  # promises: whole GPUs 0.1 %, shared ones 2 %


@dataclass
class DemoResult:
    report: dict
    ok: bool


def _drive(scenario: Scenario, fleet, sampler: Sampler, clock: FakeClock, client: httpx.Client, send,
           progress: Progress, sample_s: int = 1, flush_s: int = 60) -> dict[str, int]:
    """Advance simulated time; register and finish jobs over HTTP as a scheduler would."""
    job_ids: dict[str, int] = {}
    starts: dict[int, list] = {}
    ends: dict[int, list] = {}
    for job in scenario.jobs:
        starts.setdefault(job.start_s, []).append(job)
        ends.setdefault(job.end_s, []).append(job)
    task = progress.add_task("simulated seconds", total=scenario.duration_s)
    reported_to: dict[str, int] = {}
    for second in range(0, scenario.duration_s + 1, sample_s):
        clock.set(scenario.at_us(second))
        if second % flush_s == 0 or second in ends:
            _report_work(scenario, fleet, client, job_ids, reported_to, second)
        for job in ends.get(second, []):
            r = client.post(f"/v1/jobs/{job_ids[job.external_id]}/finish",
                            json={"ended_at": to_datetime(scenario.at_us(second)).isoformat()})
            r.raise_for_status()
        for job in starts.get(second, []):
            r = client.post("/v1/jobs", json={
                "external_id": job.external_id, "team": job.team, "project": job.project, "kind": job.kind,
                "gpu_uuids": job_gpu_uuids(fleet, scenario, job),
                "started_at": to_datetime(scenario.at_us(second)).isoformat(),
                "model_parameters": job.model_parameters, "source": SOURCE,
            })
            r.raise_for_status()
            job_ids[job.external_id] = r.json()["id"]
        sampler.sample()
        if second % flush_s == 0 or second == scenario.duration_s:
            sampler.flush()
            sampler.ship(send)
        progress.update(task, completed=second)
    return job_ids


def _report_work(scenario: Scenario, fleet, client: httpx.Client, job_ids: dict[str, int],
                 reported_to: dict[str, int], second: int) -> None:
    """What a training loop's reporter sends: the FLOPs (and tokens) done since its last report.
    The simulated fleet knows the true figures; a real job counts them itself."""
    for job in scenario.jobs:
        if not job.reports_work or not job.start_s < second <= job.end_s:
            continue
        since = reported_to.get(job.external_id, job.start_s)
        work = fleet.true_work(job.key, scenario.at_us(since), scenario.at_us(second))
        body = {"key": f"t{second}", "at": to_datetime(scenario.at_us(second)).isoformat(),
                "flops": round(work["flops"])}
        if work["tokens"] is not None:
            body["tokens"] = round(work["tokens"])
        client.post(f"/v1/jobs/{job_ids[job.external_id]}/work", json=body).raise_for_status()
        reported_to[job.external_id] = second


def _wait_ingested(engine, node: str, expected: int, progress: Progress, timeout_s: float = 90) -> int:
    task = progress.add_task("batches ingested", total=expected)
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            done = session.execute(
                sa.select(sa.func.count()).select_from(IngestedBatch).where(IngestedBatch.node == node)
            ).scalar_one()
        progress.update(task, completed=done)
        if done >= expected:
            break
        time.sleep(0.2)
    return done


def run_demo(home: Path | None = None, *, quiet: bool = False) -> DemoResult:
    home = home or Path(tempfile.mkdtemp(prefix="wattledger-demo-"))
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, gpu_backend=BackendChoice.simulated)
    db_url = settings.resolved_database_url
    migrations.upgrade(db_url)
    engine = engine_for(db_url)
    with session_scope(engine) as session:  # the demo calls its API as an admin would
        _, key = create_key(session, role="admin", name="wattledger demo", clock=SystemClock())
        session.commit()
    scenario = foundation_scenario()
    clock = FakeClock(scenario.start_us)
    fleet = build_fleet(scenario, clock)
    sampler = Sampler(backend=fleet, spool=Spool(settings.resolved_spool_dir), clock=clock, node=scenario.node,
                      resolver=fleet)  # the fleet knows whose processes run on it, as /proc would
    send = batch_sender(make_celery(settings))
    env = {"WATTLEDGER_HOME": str(home.resolve()), "WATTLEDGER_DATABASE_URL": db_url,
           "WATTLEDGER_BROKER_URL": settings.resolved_broker_url}
    worker = start_worker(env, home / "worker.log", queues="ingest")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=Console(stderr=True), disable=quiet)
    from api.main import create_app  # the API is an outer layer; imported where it is served

    try:
        with (
            ApiServer(create_app(settings, engine=engine)) as api,
            httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client,
            progress,
        ):
            set_up_site(engine, client, [g.uuid for g in fleet.gpus()])
            job_ids = _drive(scenario, fleet, sampler, clock, client, send, progress)
            shipped = sampler.next_seq - 1
            done = _wait_ingested(engine, scenario.node, shipped, progress)
            if done < shipped:
                raise RuntimeError(f"only {done} of {shipped} batches were ingested; see {home / 'worker.log'}")
            report = _report(scenario, fleet, client, job_ids, engine)
    finally:
        stop_process(worker)
    report["home"] = str(home)
    return DemoResult(report, report["conservation_exact"] and report["all_within_promise"])


SHARED_METHODS = {"even", "sm-share", "mig-activity", "mig-slice"}


def _report(scenario: Scenario, fleet, client: httpx.Client, job_ids: dict[str, int], engine) -> dict:
    jobs = []
    for job in scenario.jobs:
        energy = client.get(f"/v1/jobs/{job_ids[job.external_id]}/energy", params={"unit": "J"}).json()
        truth_j = true_job_energy_j(fleet, scenario, job)
        methods = sorted(energy["by_method"], key=lambda m: -energy["by_method"][m])
        error_pct = 100 * (energy["energy"] - truth_j) / truth_j
        promise = TOLERANCE_PCT["shared" if SHARED_METHODS & set(methods) else "exclusive"]
        jobs.append({
            "external_id": job.external_id, "team": job.team, "gpus": len(job.gpu_indices),
            "gpu_models": sorted({scenario.models[i] for i in job.gpu_indices}),
            "mig_profile": scenario.mig[job.gpu_indices[0]][job.mig_instance] if job.mig_instance is not None else None,
            "methods": methods, "energy_j": energy["energy"], "energy_kwh": energy["energy"] / 3.6e6,
            "gpu_hours": energy["gpu_hours"], "truth_j": truth_j, "error_pct": error_pct,
            "promise_pct": promise, "within_promise": abs(error_pct) <= promise,
            "estimated_j": sum(e["energy"] for e in energy["estimated"]),
        })
    work = work_report(scenario, fleet, client, job_ids)
    chargeback = statement(client, to_datetime(scenario.start_us).strftime("%Y-%m"))
    totals = client.get("/v1/ledger/totals", params={"unit": "J"}).json()
    truth = fleet.true_account_energies_j(scenario.start_us, scenario.at_us(scenario.duration_s))
    with session_scope(engine) as session:
        problems = conservation_errors(session)
    return {
        "scenario": {"start": to_datetime(scenario.start_us).isoformat(), "duration_s": scenario.duration_s,
                     "gpus": len(scenario.models), "models": sorted(set(scenario.models))},
        "jobs": jobs,
        "measured_j": totals["measured"], "attributed_j": totals["jobs"], "idle_j": totals["idle"],
        "unattributed_j": totals["unattributed"], "unattributed_truth_j": truth.get("unattributed", 0.0),
        "measured_mj": totals["measured_mj"],
        "jobs_plus_idle_equals_measured": totals["balanced"],
        "conservation_exact": totals["balanced"] and not problems,
        "conservation_problems": problems[:10],
        "max_error_pct": max(abs(j["error_pct"]) for j in jobs),
        "all_within_promise": all(j["within_promise"] for j in jobs),
        "efficiency": {"jobs": work["jobs"], "gpu_models": work["gpu_models"]},
        "waste": {"findings": work["findings"], "energy_at_stake_j": work["energy_at_stake_j"]},
        "chargeback": chargeback,
    }


def render(result: DemoResult, console: Console) -> None:
    report = result.report
    table = Table(title=f"WattLedger demo — {report['scenario']['gpus']} simulated GPUs "
                        f"({', '.join(report['scenario']['models'])}), {report['scenario']['duration_s'] / 3600:g} h")
    for column in ("job", "team", "GPUs", "method", "energy (kWh)", "GPU-hours", "truth (kWh)", "error (%)"):
        table.add_column(column, justify="left" if column in ("job", "team", "GPUs", "method") else "right",
                         overflow="fold")
    for job in report["jobs"]:
        gpus = f"{job['gpus']} × {'/'.join(job['gpu_models'])}"
        if job["mig_profile"]:
            gpus = f"MIG {job['mig_profile']} of {job['gpu_models'][0]}"
        table.add_row(job["external_id"], job["team"], gpus, ", ".join(job["methods"]),
                      f"{job['energy_kwh']:.4f}", f"{job['gpu_hours']:.2f}", f"{job['truth_j'] / 3.6e6:.4f}",
                      f"{job['error_pct']:+.4f}")
    console.print(table)
    render_work({**report["efficiency"], **report["waste"]}, console)
    render_statement(report["chargeback"], console)
    kwh = 3.6e6
    console.print(f"measured (counters): {report['measured_j'] / kwh:.4f} kWh   "
                  f"jobs: {report['attributed_j'] / kwh:.4f} kWh   idle: {report['idle_j'] / kwh:.4f} kWh   "
                  f"unattributed: {report['unattributed_j'] / kwh:.4f} kWh "
                  f"(truth {report['unattributed_truth_j'] / kwh:.4f})")
    mark = "[green]exact[/]" if report["conservation_exact"] else "[red]BROKEN[/]"
    console.print(f"conservation (jobs + idle + unattributed = measured, per GPU-hour, in mJ): {mark}; "
                  f"largest job error {report['max_error_pct']:.4f} % (promise: ≤ {TOLERANCE_PCT['exclusive']:g} % "
                  f"on whole GPUs, ≤ {TOLERANCE_PCT['shared']:g} % on shared ones)")


def main(home: Path | None, as_json: bool) -> int:
    result = run_demo(home, quiet=False)
    if as_json:
        print(json.dumps(result.report, indent=2))
    else:
        render(result, Console(width=max(Console().width, 110)))
    return 0 if result.ok else 1
