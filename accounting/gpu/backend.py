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
    uuid: str  # NVML UUID, e.g. "GPU-5c1f…" or "MIG-…"; the identity of a GPU everywhere
    name: str  # NVML device name, e.g. "NVIDIA H100 80GB HBM3"
    index: int  # NVML index on its node (a MIG instance: its index within the parent)
    parent_uuid: str | None = None  # a MIG instance: the physical GPU it is carved from
    mig_profile: str | None = None  # a MIG instance: e.g. "1g.10gb", "3g.40gb"
    mig_slices: int | None = None  # a MIG instance: its compute slices (the g of "3g.40gb"), of 7


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None = None
    # Mean SM utilization of this process since the previous read (nvmlDeviceGetProcessUtilization);
    # None where NVML cannot tell (MIG, old drivers).
    sm_util_pct: float | None = None


@dataclass(frozen=True, slots=True)
class MigActivity:
    """One MIG instance's activity since the previous read of its parent (GPM per-instance SM
    activity, as a percent of the instance's own capacity)."""

    uuid: str
    activity_pct: float


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
    mig: tuple[MigActivity, ...] = field(default_factory=tuple)  # a MIG-enabled parent only
    # GPM (Hopper and newer), means since the previous read; None where GPM is unavailable.
    sm_active_pct: float | None = None  # NVML_GPM_METRIC_SM_UTIL: share of SMs busy
    tensor_active_pct: float | None = None  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    dram_bw_pct: float | None = None  # NVML_GPM_METRIC_DRAM_BW_UTIL: share of peak memory bandwidth


@runtime_checkable
class GpuBackend(Protocol):
    """What the sampler needs from a node's GPUs."""

    kind: str  # "nvml" | "simulated"

    def gpus(self) -> list[GpuInfo]:
        """The physical GPUs visible now (a lost GPU may be absent or still listed)."""
        ...

    def mig_instances(self, uuid: str) -> list[GpuInfo]:
        """The MIG instances carved from a physical GPU; [] when MIG is off."""
        ...

    def read(self, uuid: str) -> GpuReading:
        """One GPU's counters now. Raises a GpuError subclass (GpuLost, …) for that GPU."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ProcessOwner:
    """Who a GPU process belongs to, as the node sees it.

    `job_key` is "<source>:<external id>" of a job as registered with the API — e.g.
    "slurm:48121" (SLURM_JOB_ID), "k8s:<pod uid>" — or None when nothing maps the process to a job
    (its energy then goes to the UNATTRIBUTED account, with pid and user recorded).
    """

    job_key: str | None
    user: str | None = None


@runtime_checkable
class ProcessResolver(Protocol):
    def owner(self, pid: int) -> ProcessOwner: ...
