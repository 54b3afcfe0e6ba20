"""Shared GPUs, MIG and unattributed processes through ingest, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest

from accounting.clock import US_PER_HOUR, US_PER_S, to_datetime
from accounting.jobs.service import create_job, list_gpus
from accounting.ledger.grouping import GroupBy, IdlePolicy, energy_by_group
from accounting.ledger.ingest import ingest_batch
from accounting.ledger.reports import conservation_errors, fleet_totals, job_energy
from tests.conftest import T0_US
from tests.factories import batch, job

S = US_PER_S
H100 = "NVIDIA H100 80GB HBM3"  # idles at 70 W in the spec catalog


def shared_batch(seq, start_us, seconds, processes, *, mj_per_s=500_000, mig=None, gpus=None):
    raw = batch("n1", seq, "GPU-p", start_us, seconds, mj_per_s=mj_per_s, name=H100)
    for interval in raw["intervals"]:
        interval["processes"] = processes
        interval["mig"] = mig or []
    if gpus:
        raw["gpus"] += gpus
    return raw


def test_an_unknown_process_is_unattributed_until_its_job_registers(session, clock):
    procs = [{"pid": 11, "sm_pct": 75.0, "job_key": "slurm:5", "user": "ann"},
             {"pid": 12, "sm_pct": 25.0, "job_key": None, "user": "mallory"}]
    ingest_batch(session, shared_batch(1, T0_US, 10, procs), clock=clock)
    totals = fleet_totals(session)
    # nobody holds the GPU: the 70 W baseline is idle, the active rest goes to the two unknowns
    assert totals.idle_mj == 10 * 70_000
    assert totals.unattributed_mj == 10 * 500_000 - 10 * 70_000 + 45  # + the factory's k mJ
    late = create_job(session, job("5", ["GPU-p"], T0_US, source="slurm"), clock=clock)
    # re-attribution: ann's process is now slurm job 5, which holds the GPU (baseline and 75 %)
    energy = job_energy(session, late.id).energy_mj
    active = 10 * (500_000 - 70_000) + 45
    assert energy == pytest.approx(10 * 70_000 + active * 0.75, abs=10)  # ≤ 1 mJ rounding per interval
    assert fleet_totals(session).unattributed_mj == 10 * 500_000 + 45 - energy
    assert conservation_errors(session) == []


def test_a_mig_instance_job_is_metered_on_its_parent(session, clock):
    gpus = [{"uuid": f"MIG-p-{i}", "name": f"{H100} MIG 1g.10gb", "index": i, "parent_uuid": "GPU-p",
             "mig_profile": "1g.10gb", "mig_slices": 1} for i in range(7)]
    mig = [{"uuid": f"MIG-p-{i}", "activity_pct": 90.0 if i == 0 else 10.0} for i in range(7)]
    ingest_batch(session, shared_batch(1, T0_US, 1, [], gpus=gpus, mig=mig), clock=clock)  # describes the layout
    j0 = create_job(session, job("m0", ["MIG-p-0"], T0_US + S), clock=clock)
    j1 = create_job(session, job("m1", ["MIG-p-1"], T0_US + S), clock=clock)
    ingest_batch(session, shared_batch(2, T0_US + S, 10, [], mig=mig), clock=clock)
    e0, e1 = job_energy(session, j0.id), job_energy(session, j1.id)
    assert set(e0.per_gpu_mj) == {"GPU-p"} and set(e0.by_method_mj) == {"mig-activity"}
    # weights 90 : 10 ×5 others (only instance 1 of those held); baseline 70 W / 7 each
    assert e0.energy_mj > 5 * e1.energy_mj > 0
    assert fleet_totals(session).balanced and conservation_errors(session) == []
    assert {g.uuid: g.parent_uuid for g in list_gpus(session)}["MIG-p-3"] == "GPU-p"


@pytest.mark.parametrize("policy", list(IdlePolicy))
def test_the_total_is_the_same_under_every_idle_policy(session, clock, policy):
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 20), clock=clock)
    ingest_batch(session, batch("n1", 2, "GPU-b", T0_US, 20), clock=clock)
    create_job(session, job("a1", ["GPU-a"], T0_US + 5 * S, team="nlp"), clock=clock)
    create_job(session, job("a2", ["GPU-a"], T0_US + 10 * S, team="vision"), clock=clock)
    report = energy_by_group(session, group_by=GroupBy.team, idle_policy=policy,
                             start=to_datetime(T0_US), end=to_datetime(T0_US + US_PER_HOUR))
    measured = fleet_totals(session).measured_mj
    assert report.total_mj == measured
    carried = sum(g.energy_mj for g in report.groups) + report.unallocated_idle_mj + 0
    assert carried == measured
    groups = {g.key: g for g in report.groups}
    if policy == IdlePolicy.separate:
        assert groups["(idle)"].energy_mj == report.idle_mj and report.unallocated_idle_mj == 0
    elif policy == IdlePolicy.proportional:
        # GPU-a's first 5 s of idle spread over nlp and vision; GPU-b had no users: stays unallocated
        assert report.unallocated_idle_mj == sum(300_000 + k for k in range(20))
        assert groups["nlp"].idle_mj + groups["vision"].idle_mj == sum(300_000 + k for k in range(5))
    else:
        assert report.unallocated_idle_mj == report.idle_mj and "(idle)" not in groups


def test_proportional_idle_gives_a_team_the_same_energy_in_api_and_statement(session, clock):
    from accounting.chargeback.statements import build_statement

    # idle in two different hours of one GPU: only the team that used the GPU in that hour takes it
    ingest_batch(session, batch("n1", 1, "GPU-a", T0_US + US_PER_HOUR - 20 * S, 40), clock=clock)
    nlp = create_job(session, job("a1", ["GPU-a"], T0_US + US_PER_HOUR - 10 * S, team="nlp"), clock=clock)
    from accounting.jobs.service import finish_job

    finish_job(session, nlp.id, to_datetime(T0_US + US_PER_HOUR), clock=clock)
    create_job(session, job("a2", ["GPU-a"], T0_US + US_PER_HOUR + 10 * S, team="vision"), clock=clock)
    report = energy_by_group(session, group_by=GroupBy.team, idle_policy=IdlePolicy.proportional,
                             start=to_datetime(T0_US), end=to_datetime(T0_US + 2 * US_PER_HOUR))
    by_api = {g.key: g.energy_mj for g in report.groups}
    period = to_datetime(T0_US).strftime("%Y-%m")
    statement = build_statement(session, period=period, group_by="team", idle_policy="proportional", clock=clock)
    by_statement = {line["group"]: line["energy_mj"] for line in statement["lines"] if line["kind"] == "group"}
    assert by_api == by_statement
    # the first hour's 10 s of idle went to nlp only, the second hour's 10 s to vision only
    assert by_api["nlp"] == sum(300_000 + k for k in range(20))
    assert by_api["vision"] == sum(300_000 + k for k in range(20, 40))
