"""Shared-GPU scenarios with ground truth, through sampler and ingest (PostgreSQL and SQLite):
3 co-tenants with unequal load, a 7-way MIG H100 with uneven activity, an unknown process.
Every job within 2 % of its true energy; conservation exact."""

from __future__ import annotations

import pytest

from accounting.clock import US_PER_S, FakeClock
from accounting.demo.replay import ReplayJob, replay
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.workloads import Inference, Training
from accounting.ledger.reports import conservation_errors, fleet_totals, job_energy
from tests.conftest import T0_US

MIN = 60 * US_PER_S


def check(session, fleet, jobs, ids, start_us, end_us, tolerance=0.02):
    errors = {}
    for job in jobs:
        truth_j = fleet.true_account_energy_j(job.key, start_us, end_us)
        got_j = job_energy(session, ids[job.key]).energy_mj / 1000
        errors[job.external_id] = (got_j - truth_j) / truth_j
    assert max(abs(e) for e in errors.values()) < tolerance, errors
    totals = fleet_totals(session)
    truth = fleet.true_account_energies_j(start_us, end_us)
    assert totals.unattributed_mj / 1000 == pytest.approx(truth.get("unattributed", 0.0), rel=tolerance, abs=1.0)
    assert totals.balanced and conservation_errors(session) == []
    return errors


def test_three_co_tenants_and_an_unknown_process_on_one_time_sliced_gpu(session, tmp_path):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet([SimGpu("GPU-ts", "H100 SXM", 0)], clock=clock, seed=5)
    jobs = [
        ReplayJob("heavy", "nlp", ("GPU-ts",), T0_US, T0_US + 20 * MIN),
        ReplayJob("medium", "vision", ("GPU-ts",), T0_US + 2 * MIN, T0_US + 18 * MIN),
        ReplayJob("light", "search", ("GPU-ts",), T0_US + 4 * MIN, T0_US + 20 * MIN),
    ]
    loads = {"heavy": Training(power_fraction=0.5, checkpoint_every_s=0), "medium": Inference(mean_load=0.6),
             "light": Inference(mean_load=0.2)}
    for job in jobs:
        fleet.assign("GPU-ts", job.start_us, job.end_us, loads[job.external_id], tenant=job.key)
    fleet.assign("GPU-ts", T0_US + 6 * MIN, T0_US + 12 * MIN, Inference(mean_load=0.3), tenant=None)  # a stranger
    ids = replay(session, fleet, clock, jobs, spool_dir=tmp_path, start_us=T0_US, duration_s=20 * 60)
    errors = check(session, fleet, jobs, ids, T0_US, T0_US + 20 * MIN)
    assert fleet_totals(session).unattributed_mj > 0
    print("co-tenant errors:", {k: f"{v:+.4%}" for k, v in errors.items()})


def test_a_seven_way_mig_h100_with_uneven_activity(session, tmp_path):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet([SimGpu("GPU-mig", "H100 SXM", 0)], clock=clock, seed=9)
    instances = fleet.enable_mig("GPU-mig", ["1g.10gb"] * 7)
    jobs = [ReplayJob(f"slice-{i}", "research", (uuid,), T0_US + i * MIN, T0_US + 20 * MIN)
            for i, uuid in enumerate(instances[:6])]  # the 7th instance stays free: its share is idle
    for i, job in enumerate(jobs):
        workload = Training(power_fraction=0.3 + 0.1 * i, checkpoint_every_s=0) if i % 2 else Inference(0.2 + 0.1 * i)
        fleet.assign(job.gpu_uuids[0], job.start_us, job.end_us, workload, tenant=job.key)
    ids = replay(session, fleet, clock, jobs, spool_dir=tmp_path, start_us=T0_US, duration_s=20 * 60)
    errors = check(session, fleet, jobs, ids, T0_US, T0_US + 20 * MIN)
    assert {m for j in jobs for m in job_energy(session, ids[j.key]).by_method_mj} == {"mig-activity"}
    print("MIG errors:", {k: f"{v:+.4%}" for k, v in errors.items()})


def test_mig_3g_plus_two_2g_layout(session, tmp_path):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet([SimGpu("GPU-mig2", "H100 SXM", 0)], clock=clock, seed=2)
    big, mid_a, mid_b = fleet.enable_mig("GPU-mig2", ["3g.40gb", "2g.20gb", "2g.20gb"])
    jobs = [ReplayJob("big", "nlp", (big,), T0_US, T0_US + 10 * MIN),
            ReplayJob("mid", "vision", (mid_a,), T0_US + MIN, T0_US + 9 * MIN)]
    fleet.assign(big, T0_US, T0_US + 10 * MIN, Training(power_fraction=0.8, checkpoint_every_s=0), tenant=jobs[0].key)
    fleet.assign(mid_a, T0_US + MIN, T0_US + 9 * MIN, Inference(mean_load=0.5), tenant=jobs[1].key)
    ids = replay(session, fleet, clock, jobs, spool_dir=tmp_path, start_us=T0_US, duration_s=10 * 60)
    check(session, fleet, jobs, ids, T0_US, T0_US + 10 * MIN)
    assert mid_b  # held by nobody: its slices' share of the baseline is idle
    assert fleet_totals(session).idle_mj > 0
