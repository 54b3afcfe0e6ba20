"""FLOP estimates for jobs that report tokens but not FLOPs, or nothing at all. Pure functions.

Two provenances (see `Provenance`):

- `model-estimate`: FLOPs from the model's size and the tokens it processed. Per token, a dense
  transformer of N parameters costs 6·N FLOPs to train (forward 2·N, backward 4·N) and 2·N to
  serve (forward only) — Kaplan et al. 2020, §2.1. PaLM (Chowdhery et al. 2022, appendix B) adds
  the attention of a sequence of T tokens: 12·L·H·Q·T per token for training, with L layers, H
  heads of dimension Q. Inference is the forward third of that, 4·L·H·Q·T. The term assumes
  full (non-causal) attention, as PaLM's MFU does; a causal kernel that skips the masked half
  does less work than counted.
- `hardware-estimate`: what the tensor cores could have done while they were active — GPM
  tensor-active time × peak tensor FLOP/s. An upper bound on useful work, not a measurement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from accounting.gpu.specs import GpuSpec

US_PER_S = 1_000_000
TRAINING, INFERENCE = "training", "inference"


class ModelShape(Protocol):
    """What an estimate needs of a job (accounting.jobs.models.Job has it)."""

    kind: str
    model_parameters: int | None
    model_layers: int | None
    model_heads: int | None
    model_head_dim: int | None
    model_seq_len: int | None


def model_flops_per_token(
    n_params: int,
    *,
    training: bool,
    layers: int | None = None,
    heads: int | None = None,
    head_dim: int | None = None,
    seq_len: int | None = None,
) -> int:
    """FLOPs per token: 6·N training or 2·N inference, plus attention (12·L·H·Q·T training,
    4·L·H·Q·T inference) when all four shape figures are given; with any of them missing the
    attention term is left out rather than guessed."""
    if n_params < 1:
        raise ValueError(f"a model has at least one parameter, not {n_params}")
    flops_per_token = (6 if training else 2) * n_params
    shape = (layers, heads, head_dim, seq_len)
    if all(figure is not None for figure in shape):
        if min(shape) < 1:  # type: ignore[type-var]
            raise ValueError(f"layers, heads, head_dim and seq_len are positive, not {shape}")
        flops_per_token += (12 if training else 4) * layers * heads * head_dim * seq_len  # type: ignore[operator]
    return flops_per_token


def model_estimate_flops(job: ModelShape, tokens: int | None) -> int | None:
    """The model-estimate FLOPs of `tokens` processed by `job`: None when the job states no
    parameter count, no tokens were reported, or the job is neither training nor inference
    (interactive and other jobs do work no formula describes)."""
    if job.model_parameters is None or tokens is None:
        return None
    if job.kind not in (TRAINING, INFERENCE):
        return None
    if tokens < 0:
        raise ValueError(f"tokens are not negative, not {tokens}")
    per_token = model_flops_per_token(
        job.model_parameters, training=job.kind == TRAINING, layers=job.model_layers,
        heads=job.model_heads, head_dim=job.model_head_dim, seq_len=job.model_seq_len,
    )
    return per_token * tokens


def hardware_estimate_flops(tensor_active_us: int, peak_flops_per_s: float) -> int:
    """FLOPs the tensor cores could have done: tensor-active fraction × peak FLOP/s × time.

    `tensor_active_us` is activity-weighted time (Σ tensor-active fraction × µs, as the ledger's
    `tensor_active_us` holds it), so the estimate is tensor_active_us / 1e6 × peak."""
    if tensor_active_us < 0:
        raise ValueError(f"tensor-active time is not negative, not {tensor_active_us} µs")
    if peak_flops_per_s < 0:
        raise ValueError(f"peak FLOP/s is not negative, not {peak_flops_per_s}")
    return round(tensor_active_us * peak_flops_per_s / US_PER_S)


def peak_flops_per_s(spec: GpuSpec, precision: str) -> float | None:
    """The chip's peak dense tensor FLOP/s at `precision` ("bf16", "fp16" or "fp8"); None when
    the chip has no tensor cores for it (FP8 before Ada/Hopper).

    FP16 and BF16 peaks are equal on every chip in the catalog; V100 and T4 have no BF16, and
    their catalog figure (the FP16 peak) stands for both, since a job there runs FP16 whatever
    it declared."""
    if precision in ("bf16", "fp16"):
        return spec.peak_bf16_tflops * 1e12
    if precision == "fp8":
        return None if spec.peak_fp8_tflops is None else spec.peak_fp8_tflops * 1e12
    raise ValueError(f"unknown precision {precision!r}; known: bf16, fp16, fp8")
