"""FLOP estimates, worked by hand, and FLOP counts beyond 2^63 through both databases."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from accounting.clock import US_PER_HOUR, to_datetime
from accounting.gpu.specs import get_spec
from accounting.jobs.models import Job
from accounting.jobs.service import create_job
from accounting.work.estimates import (
    hardware_estimate_flops,
    model_estimate_flops,
    model_flops_per_token,
    peak_flops_per_s,
)
from accounting.work.models import WorkReport
from tests.conftest import T0_US
from tests.factories import job as job_create

SEVEN_B = 7_000_000_000
# A 7B model of Llama-2 shape: L=32 layers, H=32 heads of Q=128, T=4096 tokens of context.
SHAPE = {"layers": 32, "heads": 32, "head_dim": 128, "seq_len": 4096}
# 12·L·H·Q·T = 12 · 32 · 32 · 128 · 4096 = 384 · 32 · 128 · 4096 = 12,288 · 524,288 = 6,442,450,944
ATTENTION_TRAINING = 6_442_450_944
ATTENTION_INFERENCE = 2_147_483_648  # 4·L·H·Q·T, a third of it


def a_job(kind: str, n_params: int | None = SEVEN_B, **shape) -> Job:
    return Job(external_id="run", team="nlp", kind=kind, model_parameters=n_params,
               model_layers=shape.get("layers"), model_heads=shape.get("heads"),
               model_head_dim=shape.get("head_dim"), model_seq_len=shape.get("seq_len"),
               started_at=to_datetime(T0_US), created_at=to_datetime(T0_US))


# ── model estimates ──────────────────────────────────────────────────────────────────────────

def test_training_costs_six_flops_per_parameter_per_token():
    assert model_flops_per_token(SEVEN_B, training=True) == 42_000_000_000  # 6 · 7e9
    # 1e9 tokens: 4.2e10 · 1e9 = 4.2e19 FLOPs, already past 2^63 ≈ 9.22e18
    assert model_estimate_flops(a_job("training"), 10**9) == 42_000_000_000_000_000_000
    assert model_estimate_flops(a_job("training"), 10**9) > 2**63


def test_inference_costs_two_flops_per_parameter_per_token():
    assert model_flops_per_token(SEVEN_B, training=False) == 14_000_000_000  # 2 · 7e9
    assert model_estimate_flops(a_job("inference"), 1_000) == 14_000_000_000_000


def test_the_attention_term_of_palm_appendix_b_is_added_when_the_shape_is_known():
    assert 12 * 32 * 32 * 128 * 4096 == ATTENTION_TRAINING
    assert model_flops_per_token(SEVEN_B, training=True, **SHAPE) == 42_000_000_000 + 6_442_450_944
    assert model_flops_per_token(SEVEN_B, training=False, **SHAPE) == 14_000_000_000 + 2_147_483_648
    assert ATTENTION_INFERENCE * 3 == ATTENTION_TRAINING
    # 1e9 tokens of training: 48,442,450,944 · 1e9
    assert model_estimate_flops(a_job("training", **SHAPE), 10**9) == 48_442_450_944 * 10**9


def test_a_partly_known_shape_adds_no_attention_rather_than_a_guess():
    partial = dict(SHAPE, seq_len=None)
    assert model_flops_per_token(SEVEN_B, training=True, **partial) == 42_000_000_000
    assert model_estimate_flops(a_job("training", layers=32, heads=32), 10) == 420_000_000_000


@pytest.mark.parametrize(("job", "tokens"), [
    (a_job("training", n_params=None), 10**9),  # no parameter count
    (a_job("training"), None),  # no tokens
    (a_job("interactive"), 10**9),  # a notebook: neither training nor serving
    (a_job("other"), 10**9),
])
def test_no_model_estimate_without_parameters_tokens_or_a_known_kind(job, tokens):
    assert model_estimate_flops(job, tokens) is None


def test_zero_tokens_estimate_zero_flops_and_nonsense_is_refused():
    assert model_estimate_flops(a_job("training"), 0) == 0
    with pytest.raises(ValueError):
        model_flops_per_token(0, training=True)
    with pytest.raises(ValueError):
        model_flops_per_token(SEVEN_B, training=True, **dict(SHAPE, heads=0))
    with pytest.raises(ValueError):
        model_estimate_flops(a_job("training"), -1)


def test_a_70b_model_on_a_trillion_tokens_passes_2_to_the_63_exactly():
    # 6 · 7e10 · 1e12 = 4.2e23: a float would round it; the int is exact
    assert model_estimate_flops(a_job("training", n_params=70 * 10**9), 10**12) == 42 * 10**22


# ── hardware estimates and peaks ─────────────────────────────────────────────────────────────

def test_peak_flops_per_precision_come_from_the_spec_catalog():
    h100 = get_spec("H100 SXM")
    assert peak_flops_per_s(h100, "bf16") == 989e12
    assert peak_flops_per_s(h100, "fp16") == 989e12  # FP16 = BF16 on these chips
    assert peak_flops_per_s(h100, "fp8") == 1978e12  # 2× BF16 on Hopper
    assert peak_flops_per_s(get_spec("A100 SXM"), "fp8") is None  # Ampere has no FP8 tensor cores
    assert peak_flops_per_s(get_spec("V100 SXM"), "fp16") == 125e12
    with pytest.raises(ValueError):
        peak_flops_per_s(h100, "fp4")


def test_a_hardware_estimate_is_tensor_active_time_times_peak():
    peak = peak_flops_per_s(get_spec("H100 SXM"), "bf16")
    # an hour with the tensor cores always active: 3,600 s · 989e12 FLOP/s = 3.5604e18 FLOPs
    assert hardware_estimate_flops(US_PER_HOUR, peak) == 3_560_400_000_000_000_000
    # an hour at 50 % tensor activity is 1.8e9 activity-weighted µs: 1,800 s · 989e12 = 1.7802e18
    assert hardware_estimate_flops(US_PER_HOUR // 2, peak) == 1_780_200_000_000_000_000
    # eight GPUs for a day at 40 %: 8 · 86,400 s · 0.4 = 276,480 s; · 989e12 = 2.7344e20, past 2^63
    assert hardware_estimate_flops(8 * 86_400 * 400_000, peak) == 273_438_720 * 10**12
    assert hardware_estimate_flops(0, peak) == 0
    with pytest.raises(ValueError):
        hardware_estimate_flops(-1, peak)


# ── FLOP counts beyond 2^63 in storage ───────────────────────────────────────────────────────

@pytest.fixture
def job_id(session, clock) -> int:
    return create_job(session, job_create("run-1", ["GPU-a"], T0_US), clock=clock).id


def test_ten_to_the_25_flops_are_stored_and_read_back_exactly(session, job_id):
    session.add(WorkReport(job_id=job_id, key="big", flops=10**25, at=to_datetime(T0_US),
                           received_at=to_datetime(T0_US)))
    session.flush()
    session.expunge_all()
    stored = session.exec(select(WorkReport).where(WorkReport.key == "big")).one()
    assert stored.flops == 10**25
    assert type(stored.flops) is int


_keys = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flops=st.one_of(st.integers(min_value=2**63 - 2, max_value=10**30),
                       st.integers(min_value=0, max_value=2**64)))
def test_any_flop_count_up_to_1e30_round_trips_through_the_database(session, job_id, flops):
    key = f"k{next(_keys)}"
    session.add(WorkReport(job_id=job_id, key=key, flops=flops, at=to_datetime(T0_US),
                           received_at=to_datetime(T0_US)))
    session.flush()
    session.expunge_all()
    assert session.exec(select(WorkReport.flops).where(WorkReport.key == key)).one() == flops
