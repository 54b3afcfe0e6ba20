"""The spec catalog: DESIGN's figures, and NVML names matched exactly or not at all."""

from __future__ import annotations

import pytest

from accounting.gpu.specs import SPECS, get_spec, match_spec


@pytest.mark.parametrize(
    ("nvml_name", "model"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100 SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GB200", "GB200"),
        ("Tesla V100-SXM2-32GB", "V100 SXM"),
        ("Tesla V100-SXM2-16GB", "V100 SXM"),
        ("Tesla T4", "T4"),
        ("NVIDIA A10", "A10"),
        ("  nvidia  h100 80gb hbm3 ", "H100 SXM"),  # spacing and case as drivers vary
    ],
)
def test_real_nvml_names_match_their_entry(nvml_name: str, model: str) -> None:
    spec = match_spec(nvml_name)
    assert spec is not None and spec.model == model


@pytest.mark.parametrize(
    "nvml_name",
    [
        "NVIDIA L40",  # neither L4 nor L40S
        "NVIDIA H100 NVL",  # 94 GB, 400 W: not the SXM or PCIe entry
        "NVIDIA H200 NVL",
        "NVIDIA A100-PCIE-40GB",
        "NVIDIA GH200 480GB",
        "NVIDIA H800",
        "NVIDIA L4S",
        "NVIDIA B200X",
        "Tesla P100-PCIE-16GB",  # not in the catalog (pre-Volta, no energy counter)
        "NVIDIA A10G",  # AWS's variant: not the A10's figures
        "",
    ],
)
def test_unknown_or_different_models_get_no_spec(nvml_name: str) -> None:
    assert match_spec(nvml_name) is None


def test_every_canonical_name_maps_back_to_its_entry() -> None:
    for spec in SPECS.values():
        assert match_spec(spec.nvml_name) is spec


def test_design_figures() -> None:
    h100 = get_spec("H100 SXM")
    assert (h100.peak_bf16_tflops, h100.memory_tbps, h100.tdp_w) == (989.0, 3.35, 700)
    assert h100.peak_fp8_tflops == 2 * h100.peak_bf16_tflops
    assert 69 <= h100.idle_w <= 72  # the real trace's idle
    assert get_spec("GB200").tdp_w == 1200
    assert get_spec("V100 SXM").peak_bf16_tflops == 125.0
    assert get_spec("A100 SXM").peak_fp8_tflops is None
    assert get_spec("B200").peak_fp8_tflops == 4500.0
    assert h100.spec_flop_per_j == pytest.approx(989e12 / 700)


def test_power_sensor_kind_follows_nvml() -> None:
    # NVML: a 1 s average on Ampere (except GA100) and newer, instantaneous on GA100 and older.
    assert get_spec("A100 SXM").power_sensor == "instant"
    assert get_spec("V100 SXM").power_sensor == "instant"
    for model in ("H100 SXM", "H100 PCIe", "H200 SXM", "B200", "GB200", "L40S", "L4"):
        assert get_spec(model).power_sensor == "average-1s"


def test_idle_below_tdp_everywhere() -> None:
    for spec in SPECS.values():
        assert 0 < spec.idle_w < 0.25 * spec.tdp_w


def test_get_spec_unknown_raises_key_error() -> None:
    with pytest.raises(KeyError):
        get_spec("H100")
