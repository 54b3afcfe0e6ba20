"""Acceptance: a simulated fleet of 53 jobs with a known mix, run through sampler and ingest, and
the waste findings compared with the truth in a confusion matrix (PostgreSQL and SQLite).

The mix, on H100 SXM and H200 SXM GPUs with GPM: healthy training at MFU 0.35–0.45 (some on 2 or
4 GPUs) that reports its true FLOPs, slow training at MFU 0.10–0.14 that reports them too, busy
memory-bound inference servers, fake-busy jobs (a tiny kernel in a loop) and idle allocations.
Every fake-busy and idle job must be flagged as such, every slow one as low-mfu, every server
as memory-bound (an insight) and no healthy one at all."""

from __future__ import annotations

from collections import Counter

import pytest

from accounting.clock import US_PER_S, FakeClock, to_datetime
from accounting.demo.replay import ReplayJob, replay
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.workloads import FakeBusy, IdleAllocated, Inference, Training
from accounting.ledger.grouping import GroupBy
from accounting.work.efficiency import efficiency_by
from accounting.work.models import WorkReportCreate
from accounting.work.service import record_work
from accounting.work.waste import find_waste
from tests.conftest import T0_US

MIN = 60 * US_PER_S
DURATION_S = 70 * 60  # across an hour boundary
KINDS = ("idle-allocated", "busy-but-useless", "low-mfu", "memory-bound")
EXPECTED = {  # the true class → the findings it must carry, exactly
    "healthy-training": set(), "slow-training": {"low-mfu"}, "memory-bound-inference": {"memory-bound"},
    "fake-busy": {"busy-but-useless"}, "idle-allocated": {"idle-allocated"},
}


def scenario() -> list[tuple[str, str, str, int, object, int, int, str]]:
    """(name, true class, job kind, GPUs, workload, start min, end min, GPU model) per job."""
    jobs = []
    for i in range(20):  # healthy training on H100: 12 on one GPU, 6 on two, 2 on four
        gpus = 1 if i < 12 else 2 if i < 18 else 4
        jobs.append((f"train-{i}", "healthy-training", "training", gpus, Training(mfu=0.35 + 0.005 * i),
                     i % 5, 50 + i % 20, "H100 SXM"))
    for i in range(4):  # healthy training on H200
        jobs.append((f"train-h200-{i}", "healthy-training", "training", 1, Training(mfu=0.38 + 0.01 * i),
                     i, 60, "H200 SXM"))
    for i in range(3):  # slow: less than half its H100 peers' median
        jobs.append((f"slow-{i}", "slow-training", "training", 1, Training(mfu=0.10 + 0.02 * i), 2, 62, "H100 SXM"))
    for i in range(10):
        jobs.append((f"serve-{i}", "memory-bound-inference", "inference", 1, Inference(mean_load=0.9 + 0.01 * i),
                     0, 70, "H100 SXM" if i < 7 else "H200 SXM"))
    for i in range(8):  # half claim training (and report nothing), half do not
        jobs.append((f"fake-{i}", "fake-busy", "training" if i % 2 else "interactive", 1, FakeBusy(),
                     3 * i, 3 * i + 15 + 5 * i, "H100 SXM"))
    for i in range(8):
        jobs.append((f"idle-{i}", "idle-allocated", ("training", "inference", "interactive")[i % 3], 1 + i % 2,
                     IdleAllocated(), 5 + i, 5 + i + 12 + 6 * i, "H100 SXM" if i % 4 else "H200 SXM"))
    return jobs


def run_fleet(session, tmp_path):
    clock = FakeClock(T0_US)
    plan = scenario()
    gpus = [SimGpu(f"GPU-{name}-{k}", model, k) for name, _, _, n, _, _, _, model in plan for k in range(n)]
    fleet = SimulatedFleet(gpus, clock=clock, seed=11)
    jobs, truth = [], {}
    for name, cls, kind, n, workload, start, end, _ in plan:
        job = ReplayJob(name, "team-" + cls.split("-")[0], tuple(f"GPU-{name}-{k}" for k in range(n)),
                        T0_US + start * MIN, T0_US + end * MIN, kind=kind)
        for uuid in job.gpu_uuids:
            fleet.assign(uuid, job.start_us, job.end_us, workload, tenant=job.key)
        jobs.append(job)
        truth[name] = cls
    ids = replay(session, fleet, clock, jobs, spool_dir=tmp_path, start_us=T0_US, duration_s=DURATION_S,
                 sample_s=5)
    for job in jobs:
        if truth[job.external_id].endswith("training"):  # the healthy and the slow report their true FLOPs
            flops = round(fleet.true_flops(job.key, job.start_us, job.end_us))
            record_work(session, ids[job.key], WorkReportCreate(key="done", flops=flops, at=to_datetime(job.end_us)),
                        clock=clock)
    return jobs, ids, truth, fleet


def confusion(truth: dict[str, str], found: dict[str, set[str]]) -> dict[str, Counter]:
    matrix = {cls: Counter() for cls in EXPECTED}
    for name, cls in truth.items():
        matrix[cls].update(found.get(name) or {"(none)"})
    return matrix


def print_matrix(matrix: dict[str, Counter], truth: dict[str, str]) -> None:
    columns = (*KINDS, "(none)")
    print(f"\n{'true class':<24}{'jobs':>5}" + "".join(f"{c:>18}" for c in columns))
    for cls, counts in matrix.items():
        jobs = sum(1 for c in truth.values() if c == cls)
        print(f"{cls:<24}{jobs:>5}" + "".join(f"{counts[c]:>18}" for c in columns))


def test_a_simulated_fleet_is_classified_without_a_miss_or_a_false_alarm(session, tmp_path):
    jobs, ids, truth, fleet = run_fleet(session, tmp_path)
    assert len(jobs) >= 50
    start, end = to_datetime(T0_US), to_datetime(T0_US + DURATION_S * US_PER_S)
    findings = find_waste(session, start, end)
    found: dict[str, set[str]] = {}
    for f in findings:
        found.setdefault(f.external_id, set()).add(f.kind.value)
    matrix = confusion(truth, found)
    print_matrix(matrix, truth)

    wrong = {name: (cls, found.get(name, set())) for name, cls in truth.items()
             if found.get(name, set()) != EXPECTED[cls]}
    assert wrong == {}
    assert matrix["healthy-training"] == Counter({"(none)": 24})
    for f in findings:
        assert f.evidence and f.start < f.end
        if f.kind.value in ("idle-allocated", "busy-but-useless"):
            assert f.energy_at_stake_j > 0 and f.severity.value == "waste"
        if f.kind.value == "memory-bound":
            assert f.severity.value == "info" and f.evidence["dram_bw_pct"] >= 60

    # the healthy jobs' MFU from the ledger and their reports is the one they ran at
    by_job = {g.group: g for g in efficiency_by(session, group_by=GroupBy.job, start=start, end=end)}
    for name, cls, _, _, workload, *_ in scenario():
        if cls == "healthy-training":
            assert by_job[f"demo:{name}"].figures.mfu == pytest.approx(workload.mfu, rel=1e-3), name
    # and FLOP/J within 1 % of the truth: true FLOPs over the energy the job really drew
    for job in jobs:
        if truth[job.external_id].endswith("training"):
            true_flop_per_j = (fleet.true_flops(job.key, job.start_us, job.end_us)
                               / fleet.true_account_energy_j(job.key, job.start_us, job.end_us))
            assert by_job[job.key].figures.flop_per_j == pytest.approx(true_flop_per_j, rel=1e-2), job.key
