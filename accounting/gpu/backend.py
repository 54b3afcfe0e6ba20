"""The GpuBackend protocol and the readings it returns.

A backend answers for the GPUs of one node. `read` returns one GPU's counters at the
backend's clock time; a failing GPU raises a GpuError for that GPU only, never for the others.
Units are in the field names: mJ, mW, bytes, MHz, percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class GpuInfo:
    uuid: str  # NVML UUID, e.g. "GPU-5c1f…"; the identity of a GPU everywhere in WattLedger
    name: str  # NVML device name, e.g. "NVIDIA H100 80GB HBM3"
    index: int  # NVML index on its node


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuReading:
    uuid: str
    timestamp_us: int  # when it was read, µs since the Unix epoch (the backend's clock)
    energy_mj: int | None  # total energy counter since driver load; None where unsupported
    power_mw: int | None  # nvmlDeviceGetPowerUsage: 1 s average on Hopper+, instant on A100
    gpu_util_pct: int | None = None  # duty cycle: % of time one or more kernels ran
    memory_util_pct: int | None = None
    memory_used_bytes: int | None = None
    sm_clock_mhz: int | None = None
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)


@runtime_checkable
class GpuBackend(Protocol):
    """What the sampler needs from a node's GPUs."""

    kind: str  # "nvml" | "simulated"

    def gpus(self) -> list[GpuInfo]:
        """The GPUs visible now (a lost GPU may be absent or still listed)."""
        ...

    def read(self, uuid: str) -> GpuReading:
        """One GPU's counters now. Raises a GpuError subclass (GpuLost, …) for that GPU."""
        ...

    def close(self) -> None: ...
