"""Choosing a node's GPU backend from configuration: NVML, the simulated fleet, or auto.

Availability is decided once, here, when the backend opens. The simulated fleet arrives as a
factory from the caller, so this module depends on neither it nor its construction arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from accounting.clock import Clock
from accounting.errors import GpuBackendUnavailable, InvalidInput
from accounting.gpu.backend import GpuBackend
from accounting.gpu.nvml import NvmlBackend

log = logging.getLogger(__name__)

CHOICES = ("auto", "nvml", "simulated")


def open_backend(
    choice: str, *, clock: Clock, simulated_factory: Callable[[], GpuBackend]
) -> GpuBackend:
    """The backend that `choice` names ("auto", "nvml" or "simulated"), opened.

    "nvml" fails loudly (GpuBackendUnavailable) when NVML does not initialize: production asked
    for real meters and must not quietly meter a simulation. "auto" falls back to the simulated
    fleet, which is what a laptop or CI runner wants.
    """
    choice = str(choice)
    if choice == "nvml":
        try:
            backend: GpuBackend = NvmlBackend(clock)
        except GpuBackendUnavailable as err:
            raise GpuBackendUnavailable(
                f"GPU backend 'nvml' was requested but is unavailable ({err}); install the "
                "NVIDIA driver, or set WATTLEDGER_GPU_BACKEND=auto or simulated"
            ) from err
        log.info("GPU backend: nvml (%d GPUs)", len(backend.gpus()))
        return backend
    if choice == "simulated":
        log.info("GPU backend: simulated (configured)")
        return simulated_factory()
    if choice == "auto":
        try:
            backend = NvmlBackend(clock)
        except GpuBackendUnavailable as err:
            log.info("GPU backend: simulated (auto; NVML unavailable: %s)", err)
            return simulated_factory()
        log.info("GPU backend: nvml (auto; %d GPUs)", len(backend.gpus()))
        return backend
    raise InvalidInput("gpu_backend", f"unknown GPU backend {choice!r}; expected one of {CHOICES}")
