"""Efficiency per job and per group from hand-built ledger rows, allocations and work reports
(PostgreSQL and SQLite). The figures are written out: an H100 SXM peaks at 989 TFLOP/s dense
BF16, 1978 FP8, and is rated 700 W TDP, 70 W idle."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from accounting.clock import US_PER_HOUR, US_PER_S, FakeClock, to_datetime
from accounting.jobs.models import Allocation, Gpu, Job
from accounting.ledger.grouping import GroupBy
from accounting.ledger.models import LedgerEntry, Sample, job_account
from accounting.work.efficiency import MIXED, efficiency_by, job_efficiency
from accounting.work.models import WorkReportCreate
from accounting.work.service import record_work
from tests.conftest import T0_US

H, S = US_PER_HOUR, US_PER_S
H100 = 989e12
at = to_datetime


# ── builders, shared with test_waste ────────────────────────────────────────────────────

def add_gpu(session, uuid: str, model: str | None = "H100 SXM", *, parent: Gpu | None = None,
            slices: int | None = None) -> Gpu:
    gpu = Gpu(uuid=uuid, model=None if parent else model, parent_id=parent.id if parent else None,
              mig_slices=slices, mig_profile=f"{slices}g.x" if slices else None)
    session.add(gpu)
    session.flush()
    return gpu


def add_job(session, name: str, gpus: list[Gpu], start_us: int, end_us: int | None, *, kind: str = "training",
            precision: str = "bf16", team: str = "nlp", project: str | None = None, **extra) -> Job:
    job = Job(external_id=name, source="test", team=team, project=project, kind=kind, precision=precision,
              started_at=at(start_us), ended_at=at(end_us) if end_us else None, created_at=at(start_us), **extra)
    session.add(job)
    session.flush()
    for gpu in gpus:
        session.add(Allocation(job_id=job.id, gpu_id=gpu.id, start_at=at(start_us),
                               end_at=at(end_us) if end_us else None))
    session.flush()
    return job


def add_hours(session, job: Job, gpu: Gpu, first_hour_us: int, hours: int = 1, *, power_w: float,
              seconds: float = 3600, duty: float | None = None, sm: float | None = None,
              tensor: float | None = None, dram: float | None = None) -> None:
    """Ledger rows of `job` on `gpu` (a MIG instance's rows go on its parent): `seconds` of GPU
    time per hour at `power_w`, with the given mean activity in percent (None: not read)."""
    gpu_us = round(seconds * S)
    gpm = any(x is not None for x in (sm, tensor, dram))

    def weighted(pct: float | None) -> int:
        return round(gpu_us * (pct or 0) / 100)

    for k in range(hours):
        session.add(LedgerEntry(
            gpu_id=gpu.parent_id or gpu.id, hour=at(first_hour_us + k * H), account=job_account(job.id),
            job_id=job.id, method="exclusive", energy_mj=round(power_w * seconds * 1000), gpu_us=gpu_us,
            util_known_us=gpu_us if duty is not None else 0, busy_us=weighted(duty),
            gpm_known_us=gpu_us if gpm else 0, sm_active_us=weighted(sm), tensor_active_us=weighted(tensor),
            dram_active_us=weighted(dram)))
    session.flush()


def report(session, job: Job, at_us: int, key: str = "r1", **figures) -> None:
    record_work(session, job.id, WorkReportCreate(key=key, at=at(at_us), **figures), clock=FakeClock(at_us))


def eight_h100_job(session, name="llm", *, flops=11_400_000_000_000_000_000, hours=1, power_w=600.0, **extra):
    gpus = [add_gpu(session, f"GPU-{name}-{i}") for i in range(8)]
    job = add_job(session, name, gpus, T0_US, T0_US + hours * H, **extra)
    for gpu in gpus:
        add_hours(session, job, gpu, T0_US, hours, power_w=power_w, duty=97, sm=80, tensor=45, dram=30)
    if flops is not None:
        report(session, job, T0_US + hours * H, flops=flops)
    return job


def efficiency_of(session, job: Job, now_us: int = T0_US + 6 * H, **period):
    return job_efficiency(session, job, clock=FakeClock(now_us), **period)


# ── a job ──────────────────────────────────────────────────────────────────────────────

def test_reported_flops_on_eight_h100_give_mfu_flop_per_joule_and_realized_vs_spec(session):
    job = eight_h100_job(session)
    e = efficiency_of(session, job)
    f = e.figures
    assert e.flops_provenance == "reported"
    assert f.flops == 11_400_000_000_000_000_000  # past 2^63, exact
    assert f.allocated_gpu_s == 8 * 3600
    assert e.usage.peak_flop_per_s == pytest.approx(8 * H100)
    assert f.capacity_flop == pytest.approx(H100 * 8 * 3600)
    assert f.mfu == pytest.approx(1.14e19 / (989e12 * 8 * 3600)) and f.mfu == pytest.approx(0.40023, abs=1e-5)
    assert f.energy_j == pytest.approx(8 * 600 * 3600)  # 17.28 MJ
    assert f.flop_per_j == pytest.approx(1.14e19 / 17.28e6)  # 6.597e11
    assert f.spec_flop_per_j == pytest.approx(989e12 / 700)  # 1.413e12
    assert f.realized_vs_spec == pytest.approx((1.14e19 / 17.28e6) / (989e12 / 700))  # 0.4669
    assert (f.duty_cycle_pct, f.sm_active_pct, f.tensor_active_pct, f.dram_bw_pct) == pytest.approx((97, 80, 45, 30))
    assert f.mean_power_w == pytest.approx(600)
    assert f.tokens is None and f.tokens_per_j is None and f.j_per_token is None
    assert e.gpu_models == ["H100 SXM"]


def test_tokens_without_flops_give_a_model_estimate_and_tokens_per_joule(session):
    gpu = add_gpu(session, "GPU-a")
    job = add_job(session, "ft", [gpu], T0_US, T0_US + H, model_parameters=7_000_000_000)
    add_hours(session, job, gpu, T0_US, power_w=500, duty=90, tensor=40)
    report(session, job, T0_US + H, tokens=30_000_000, samples=250_000)
    e = efficiency_of(session, job)
    f = e.figures
    assert e.flops_provenance == "model-estimate"
    assert f.flops == 6 * 7_000_000_000 * 30_000_000  # 1.26e18: 6·N per token, training
    assert f.mfu == pytest.approx(1.26e18 / (989e12 * 3600))  # 0.3539
    assert f.energy_j == 1_800_000
    assert f.tokens_per_j == pytest.approx(3e7 / 1.8e6) and f.j_per_token == pytest.approx(1.8e6 / 3e7)
    assert f.samples_per_j == pytest.approx(250_000 / 1.8e6)


def test_no_report_falls_back_to_the_hardware_estimate_from_tensor_activity(session):
    gpu = add_gpu(session, "GPU-a")
    job = add_job(session, "silent", [gpu], T0_US, T0_US + H, kind="inference")
    add_hours(session, job, gpu, T0_US, power_w=400, duty=80, sm=50, tensor=30, dram=70)
    e = efficiency_of(session, job)
    assert e.flops_provenance == "hardware-estimate"
    assert e.figures.flops == round(0.30 * 3600 * H100)  # 1.068e18
    assert e.figures.mfu == pytest.approx(0.30)


def test_no_report_and_no_gpm_give_no_flops_and_no_mfu(session):
    gpu = add_gpu(session, "GPU-a", "A100 SXM")
    job = add_job(session, "old", [gpu], T0_US, T0_US + H)
    add_hours(session, job, gpu, T0_US, power_w=300, duty=90)
    f = efficiency_of(session, job).figures
    assert (f.flops, f.mfu, f.flop_per_j, f.realized_vs_spec) == (None, None, None, None)
    assert f.spec_flop_per_j == pytest.approx(312e12 / 400) and f.duty_cycle_pct == pytest.approx(90)


def test_a_gpu_of_unknown_model_gives_no_mfu_never_a_wrong_one(session):
    known, unknown = add_gpu(session, "GPU-k"), add_gpu(session, "GPU-u", None)
    job = add_job(session, "odd", [known, unknown], T0_US, T0_US + H)
    for gpu in (known, unknown):
        add_hours(session, job, gpu, T0_US, power_w=500, duty=95, tensor=40)
    report(session, job, T0_US + H, flops=10**18)
    e = efficiency_of(session, job)
    f = e.figures
    assert (f.mfu, f.capacity_flop, f.spec_flop_per_j, f.realized_vs_spec, e.usage.peak_flop_per_s) == (None,) * 5
    assert f.flop_per_j == pytest.approx(1e18 / 3.6e6)  # work per joule needs no spec
    assert f.allocated_gpu_s == 7200


def test_fp8_is_measured_against_the_fp8_peak_and_a_chip_without_fp8_gets_no_mfu(session):
    job = eight_h100_job(session, precision="fp8")
    assert efficiency_of(session, job).figures.mfu == pytest.approx(1.14e19 / (1978e12 * 8 * 3600))
    a100 = add_gpu(session, "GPU-a100", "A100 SXM")
    old = add_job(session, "fp8-on-a100", [a100], T0_US, T0_US + H, precision="fp8")
    add_hours(session, old, a100, T0_US, power_w=350, duty=90)
    report(session, old, T0_US + H, flops=10**18)
    assert efficiency_of(session, old).figures.mfu is None


def test_a_mig_instance_counts_its_slices_of_the_parent(session):
    parent = add_gpu(session, "GPU-p")
    instance = add_gpu(session, "MIG-3g", parent=parent, slices=3)
    job = add_job(session, "slice", [instance], T0_US, T0_US + H)
    add_hours(session, job, instance, T0_US, power_w=300, seconds=3600 * 3 / 7, duty=90, tensor=40)
    report(session, job, T0_US + H, flops=5 * 10**17)
    e = efficiency_of(session, job)
    assert e.figures.allocated_gpu_s == pytest.approx(3600 * 3 / 7)
    assert e.usage.peak_flop_per_s == pytest.approx(H100 * 3 / 7)
    assert e.figures.mfu == pytest.approx(5e17 / (H100 * 3 / 7 * 3600))  # 0.328
    assert e.gpu_models == ["H100 SXM"]


def test_a_period_clips_allocations_and_energy_and_takes_its_share_of_the_work(session):
    gpu = add_gpu(session, "GPU-a")
    job = add_job(session, "long", [gpu], T0_US, T0_US + 4 * H)
    add_hours(session, job, gpu, T0_US, 4, power_w=600, duty=95)
    report(session, job, T0_US + 4 * H, flops=4 * 10**18, tokens=4_000_000)
    e = efficiency_of(session, job, start=at(T0_US + H), end=at(T0_US + 2 * H))
    f = e.figures
    assert (e.usage.start_us, e.usage.end_us) == (T0_US + H, T0_US + 2 * H)
    assert (f.allocated_gpu_s, f.energy_j, e.usage.work_share) == (3600, 600 * 3600, 0.25)
    assert (f.flops, f.tokens) == (10**18, 1_000_000)
    assert f.mfu == pytest.approx(1e18 / (H100 * 3600))
    # whole life: everything, and a mid-hour period is widened to whole hours
    assert efficiency_of(session, job).figures.flops == 4 * 10**18
    mid_hour = efficiency_of(session, job, start=at(T0_US + 90 * 60 * S), end=at(T0_US + 100 * 60 * S))
    assert mid_hour.figures.allocated_gpu_s == 3600


def test_a_running_job_is_allocated_until_now(session):
    gpu = add_gpu(session, "GPU-a")
    job = add_job(session, "live", [gpu], T0_US, None)
    add_hours(session, job, gpu, T0_US, 2, power_w=600, duty=95)
    e = efficiency_of(session, job, now_us=T0_US + 90 * 60 * S)
    assert e.figures.allocated_gpu_s == 90 * 60
    assert e.usage.end_us == T0_US + 2 * H


def test_efficiency_needs_no_raw_samples(session):
    job = eight_h100_job(session)
    assert session.scalar(sa.select(sa.func.count()).select_from(Sample)) == 0
    assert efficiency_of(session, job).figures.mfu == pytest.approx(0.40023, abs=1e-5)


# ── groups ─────────────────────────────────────────────────────────────────────────────

def test_a_groups_mfu_is_its_flops_over_its_capacity_and_covers_jobs_with_both(session):
    eight_h100_job(session, "a", project="llama")  # 1.14e19 FLOPs on 8 GPU-h
    gpu = add_gpu(session, "GPU-b")
    b = add_job(session, "b", [gpu], T0_US, T0_US + H, project="llama")
    add_hours(session, b, gpu, T0_US, power_w=650, duty=97, tensor=50)
    report(session, b, T0_US + H, flops=2 * 10**18)
    unknown = add_gpu(session, "GPU-u", None)
    c = add_job(session, "c", [unknown], T0_US, T0_US + H, team="vision")
    add_hours(session, c, unknown, T0_US, power_w=300, duty=60)
    report(session, c, T0_US + H, flops=10**18)

    by_team = {g.group: g for g in efficiency_by(session, group_by=GroupBy.team, start=at(T0_US), end=at(T0_US + H))}
    nlp = by_team["nlp"]
    assert (nlp.jobs, nlp.mfu_jobs) == (2, 2)
    assert nlp.figures.flops == 11_400_000_000_000_000_000 + 2 * 10**18
    assert nlp.figures.mfu == pytest.approx(1.34e19 / (H100 * 9 * 3600))  # 0.4182
    assert nlp.figures.energy_j == pytest.approx((8 * 600 + 650) * 3600)
    assert nlp.figures.flop_per_j == pytest.approx(1.34e19 / ((8 * 600 + 650) * 3600))
    assert nlp.figures.allocated_gpu_s == 9 * 3600
    assert nlp.flops_by_provenance == {"reported": 13_400_000_000_000_000_000}
    vision = by_team["vision"]
    assert (vision.mfu_jobs, vision.figures.mfu, vision.figures.flop_per_j) == (0, None, pytest.approx(1e18 / 1.08e6))

    by_model = {g.group: g for g in efficiency_by(session, group_by=GroupBy.gpu_model, start=at(T0_US),
                                                  end=at(T0_US + H))}
    assert set(by_model) == {"H100 SXM", "(unknown)"}
    assert by_model["H100 SXM"].figures.mfu == pytest.approx(nlp.figures.mfu)
    by_project = efficiency_by(session, group_by=GroupBy.project, start=at(T0_US), end=at(T0_US + H))
    assert [g.group for g in by_project] == ["llama", "(unknown)"]  # largest energy first
    by_job = efficiency_by(session, group_by=GroupBy.job, start=at(T0_US), end=at(T0_US + H))
    assert {g.group for g in by_job} == {"test:a", "test:b", "test:c"}


def test_a_job_on_two_models_groups_as_mixed_and_outside_jobs_are_left_out(session):
    h100, a100 = add_gpu(session, "GPU-h"), add_gpu(session, "GPU-x", "A100 SXM")
    job = add_job(session, "two", [h100, a100], T0_US, T0_US + H)
    add_hours(session, job, h100, T0_US, power_w=600, duty=90)
    add_hours(session, job, a100, T0_US, power_w=350, duty=90)
    report(session, job, T0_US + H, flops=10**18)
    later = add_gpu(session, "GPU-l")
    add_job(session, "later", [later], T0_US + 3 * H, T0_US + 4 * H)
    groups = efficiency_by(session, group_by=GroupBy.gpu_model, start=at(T0_US), end=at(T0_US + H))
    assert [g.group for g in groups] == [MIXED]
    assert groups[0].figures.mfu == pytest.approx(1e18 / ((989e12 + 312e12) * 3600))
    assert groups[0].figures.spec_flop_per_j == pytest.approx((989e12 + 312e12) / (700 + 400))


def test_an_empty_period_has_no_groups(session):
    assert efficiency_by(session, group_by=GroupBy.team, start=datetime.fromisoformat("2020-01-01T00:00:00+00:00"),
                         end=datetime.fromisoformat("2020-01-02T00:00:00+00:00")) == []
