"""The GPU spec catalog: peak dense tensor throughput, memory bandwidth, TDP, idle draw and
power-sensor behaviour per GPU model, and the mapping from NVML device names to entries.

Peak figures are the vendor's dense (no sparsity) numbers listed in DESIGN.md. An NVML name
that matches no entry gets no spec (and so no MFU) rather than a guessed one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# What nvmlDeviceGetPowerUsage returns (the simulated fleet's readings follow it; simulated.py):
# "average-1s" the exact mean of the last second; "instant" the current 100 ms step's mean;
# "part-time-25" a 1 s average of 25 ms windows, one at the start of every 100 ms (Yang et al.,
# "Part-time Power Measurements: nvidia-smi's Lack of Attention", 2023: A100 and H100 sample only
# 25 % of the runtime). No catalog entry has it by default: a fleet opts in (SimulatedFleet).
PowerSensor = Literal["average-1s", "instant", "part-time-25"]
POWER_SENSORS: tuple[PowerSensor, ...] = ("average-1s", "instant", "part-time-25")


@dataclass(frozen=True, slots=True)
class GpuSpec:
    model: str  # catalog key, e.g. "H100 SXM"
    peak_bf16_tflops: float  # dense BF16 (FP16 on V100, which has no BF16)
    peak_fp8_tflops: float | None  # dense FP8; None where the chip has no FP8 tensor cores
    memory_tbps: float  # peak memory bandwidth, TB/s
    tdp_w: int
    idle_w: float  # typical idle draw; see the note above _CATALOG
    # What nvmlDeviceGetPowerUsage returns: NVML documents a 1 s average on Ampere (except
    # GA100) and newer, instantaneous power on GA100 (A100) and older.
    power_sensor: PowerSensor
    nvml_name: str  # the canonical device name, as the simulated fleet reports it
    nvml_names: tuple[str, ...]  # regexes matched in full (case-insensitive) against NVML names
    memory_gib: int  # device memory, for plausible simulated memory.used

    @property
    def peak_bf16_flops(self) -> float:
        """Peak dense BF16 FLOP/s (not TFLOP/s)."""
        return self.peak_bf16_tflops * 1e12

    @property
    def spec_flop_per_j(self) -> float:
        """The chip's spec efficiency: peak dense BF16 FLOP/s ÷ TDP."""
        return self.peak_bf16_flops / self.tdp_w

    @property
    def has_gpm(self) -> bool:
        """Whether NVML's GPM (SM, tensor and DRAM-bandwidth activity) exists: Hopper and newer."""
        return self.model in GPM_MODELS


# Idle powers are typical values for an otherwise quiet GPU with the driver in persistence
# mode, NOT measured here, except H100 SXM: the real 8×H100 trace in shared/data idles at
# ~69–72 W. FP8 is 2× BF16 wherever the chip has FP8 (Ada, Hopper, Blackwell, CDNA3).
_CATALOG: tuple[GpuSpec, ...] = (
    GpuSpec("V100 SXM", 125.0, None, 0.9, 300, 40.0, "instant",
            "Tesla V100-SXM2-32GB", (r"(tesla|nvidia) v100-sxm2-(16|32)gb",), 32),
    GpuSpec("A100 SXM", 312.0, None, 2.04, 400, 55.0, "instant",
            "NVIDIA A100-SXM4-80GB", (r"nvidia a100-sxm4-80gb",), 80),
    # Not in DESIGN's list: the 40 GB A100 SXM has the same FLOP/s and TDP but HBM2 at
    # 1.555 TB/s, so it gets its own entry instead of the 80 GB one's bandwidth.
    GpuSpec("A100 SXM 40GB", 312.0, None, 1.555, 400, 50.0, "instant",
            "NVIDIA A100-SXM4-40GB", (r"nvidia a100-sxm4-40gb",), 40),
    GpuSpec("H100 SXM", 989.0, 1978.0, 3.35, 700, 70.0, "average-1s",
            "NVIDIA H100 80GB HBM3", (r"nvidia h100 80gb hbm3",), 80),
    GpuSpec("H100 PCIe", 756.0, 1512.0, 2.0, 350, 45.0, "average-1s",
            "NVIDIA H100 PCIe", (r"nvidia h100 pcie",), 80),
    GpuSpec("H200 SXM", 989.0, 1978.0, 4.8, 700, 75.0, "average-1s",
            "NVIDIA H200", (r"nvidia h200",), 141),
    GpuSpec("L40S", 362.0, 724.0, 0.864, 350, 35.0, "average-1s",
            "NVIDIA L40S", (r"nvidia l40s",), 48),
    GpuSpec("L4", 121.0, 242.0, 0.3, 72, 16.0, "average-1s",
            "NVIDIA L4", (r"nvidia l4",), 24),
    GpuSpec("B200", 2250.0, 4500.0, 7.7, 1000, 140.0, "average-1s",
            "NVIDIA B200", (r"nvidia b200",), 180),
    GpuSpec("GB200", 2500.0, 5000.0, 8.0, 1200, 160.0, "average-1s",
            "NVIDIA GB200", (r"nvidia gb200",), 186),
    # NVML never sees an AMD GPU; the name is what amd-smi reports, for completeness.
    GpuSpec("MI300X", 1307.0, 2614.0, 5.3, 750, 140.0, "average-1s",
            "AMD Instinct MI300X", (r"amd instinct mi300x( oam)?",), 192),
    # Older inference cards of the Alibaba openb cluster trace (shared/data, section 3); not in
    # DESIGN's list. Figures from NVIDIA's datasheets: T4 ("NVIDIA T4 Tensor Core GPU", Turing):
    # 65 TFLOP/s FP16 mixed-precision tensor (no BF16), 320 GB/s GDDR6, 70 W, 16 GB; instantaneous
    # power (pre-Ampere). A10 ("NVIDIA A10 Tensor Core GPU", GA102): 125 TFLOP/s BF16 dense,
    # 600 GB/s GDDR6, 150 W, 24 GB; a 1 s average (Ampere, not GA100). Idle draws are typical, as above.
    GpuSpec("T4", 65.0, None, 0.32, 70, 10.0, "instant",
            "Tesla T4", (r"(tesla|nvidia) t4",), 16),
    GpuSpec("A10", 125.0, None, 0.6, 150, 15.0, "average-1s",
            "NVIDIA A10", (r"nvidia a10",), 24),
)  # fmt: skip

SPECS: dict[str, GpuSpec] = {spec.model: spec for spec in _CATALOG}
# NVML documents GPM "for Hopper or newer fully supported devices": not Ampere (A100, A10), Ada (L40S,
# L4), Volta or Turing, and never an AMD GPU.
GPM_MODELS = frozenset({"H100 SXM", "H100 PCIe", "H200 SXM", "B200", "GB200"})

# Full matches only: "NVIDIA L40" must match neither L4 nor L40S, and "NVIDIA H100 NVL" or
# "NVIDIA H200 NVL" (different TDP and clocks) must not fall back to a sibling entry.
_PATTERNS: tuple[tuple[re.Pattern[str], GpuSpec], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), spec) for spec in _CATALOG for pattern in spec.nvml_names
)


def get_spec(model_key: str) -> GpuSpec:
    """The catalog entry for `model_key` (e.g. "H100 SXM"); KeyError if there is none."""
    try:
        return SPECS[model_key]
    except KeyError:
        raise KeyError(f"no GPU spec {model_key!r}; known: {sorted(SPECS)}") from None


def match_spec(nvml_name: str) -> GpuSpec | None:
    """The catalog entry for an NVML device name, or None when no entry fits exactly."""
    normalized = " ".join(nvml_name.split())
    for pattern, spec in _PATTERNS:
        if pattern.fullmatch(normalized):
            return spec
    return None


# MIG (Multi-Instance GPU): A100, H100 and H200 split into 7 compute slices; a profile "<g>g.<mem>gb"
# takes g of them. The 80 GB profile names are accepted on every MIG-capable entry (the simulated
# fleet's convention); H200 and the 40 GB A100 also accept their own names. Only Σ g ≤ 7 is
# checked: NVIDIA's placement rules and memory-slice limits are not modelled.
MIG_SLICES = 7
_MIG_80GB = ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
MIG_PROFILES: dict[str, tuple[str, ...]] = {
    "A100 SXM": _MIG_80GB,
    "A100 SXM 40GB": ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
    "H100 SXM": _MIG_80GB,
    "H100 PCIe": _MIG_80GB,
    "H200 SXM": _MIG_80GB + ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
}


def mig_slices(model_key: str, profile: str) -> int:
    """The compute slices (of MIG_SLICES) of a MIG profile on a model; ValueError if the model has
    no MIG or no such profile."""
    profiles = MIG_PROFILES.get(model_key)
    if profiles is None:
        raise ValueError(f"{model_key} has no MIG; MIG-capable: {sorted(MIG_PROFILES)}")
    if profile not in profiles:
        raise ValueError(f"no MIG profile {profile!r} on {model_key}; known: {list(profiles)}")
    return int(profile.split("g.", 1)[0])
