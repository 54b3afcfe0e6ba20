"""The NVML backend: the only module in WattLedger that imports `pynvml` (nvidia-ml-py).

It owns NVML's lifetime (one nvmlInit per backend, one nvmlShutdown on close), the device
handles (cached by UUID at start), the decoding of NVML's answers into GpuReading, and the
mapping of every NVMLError onto the project's error family: nothing NVML-typed leaves here.
MIG enumeration and per-instance activity live in `nvml_mig`, device-level GPM activity (SM,
tensor, DRAM bandwidth; Hopper+) and the GPM plumbing both share in `nvml_gpm`; they get this
module's `pynvml` and error guard handed in rather than importing either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pynvml

from accounting.clock import Clock
from accounting.errors import (
    GpuBackendUnavailable,
    GpuError,
    GpuLost,
    GpuNoPermission,
    GpuNotSupported,
    GpuUnknownError,
)
from accounting.gpu.backend import GpuInfo, GpuProcess, GpuReading
from accounting.gpu.nvml_gpm import DeviceGpm, Gpm
from accounting.gpu.nvml_mig import MigMonitor

log = logging.getLogger(__name__)

T = TypeVar("T")

# Keyed by NVML return code rather than by NVMLError subclass: older bindings lack some of the
# generated classes, but every binding sets `.value`.
_ERRORS_BY_CODE: dict[int, type[GpuError]] = {
    pynvml.NVML_ERROR_NOT_SUPPORTED: GpuNotSupported,
    pynvml.NVML_ERROR_GPU_IS_LOST: GpuLost,
    pynvml.NVML_ERROR_NO_PERMISSION: GpuNoPermission,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: GpuBackendUnavailable,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: GpuBackendUnavailable,
}
# The binding raises this (not an NVMLError) when an unversioned call meets an older driver.
_LIBRARY_MISMATCH: type[Exception] = getattr(pynvml, "NVMLLibraryMismatchError", pynvml.NVMLError)
# NVML's "not available" marker for a process's memory; newer bindings already turn it into None.
_NOT_AVAILABLE_U64 = 2**64 - 1
_VALUE_FIELDS = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
}
# The first per-process utilization read of a GPU looks this far back; later ones start at the
# newest sample already seen, so each sample is counted once.
PROCESS_UTIL_LOOKBACK_US = 1_000_000
# nvmlDeviceGetProcessUtilization's "no samples since then" (the binding raises NVMLError(SUCCESS)
# when the driver reports success with nothing to size).
_NO_SAMPLES = {pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS}


def map_nvml_error(err: Exception, uuid: str | None = None) -> GpuError:
    """The project error for an NVMLError (or the binding's library-mismatch error)."""
    if isinstance(err, _LIBRARY_MISMATCH) and not isinstance(err, pynvml.NVMLError):
        return GpuNotSupported(f"NVML binding and driver disagree: {err}", uuid=uuid)
    code = getattr(err, "value", None)
    try:
        text = str(err)
    except Exception:  # str() may call into a library that is not there
        text = "NVML error"
    return _error_for_code(code, text, uuid)


def _error_for_code(code: object, text: str, uuid: str | None) -> GpuError:
    cls = _ERRORS_BY_CODE.get(code, GpuUnknownError) if isinstance(code, int) else GpuUnknownError
    return cls(f"NVML: {text} (code {code})", uuid=uuid)


@contextmanager
def _nvml_errors(uuid: str | None = None) -> Iterator[None]:
    try:
        yield
    except (pynvml.NVMLError, _LIBRARY_MISMATCH) as err:
        raise map_nvml_error(err, uuid) from err


def _text(value: str | bytes) -> str:
    """Names and UUIDs: str from current bindings, bytes from older ones."""
    return value.decode() if isinstance(value, bytes) else value


def nvml_available() -> bool:
    """Whether NVML initializes here; never raises.

    NVML counts inits and shutdowns, so probing while a backend is open leaves it open.
    """
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        pynvml.nvmlShutdown()
    except Exception:
        log.debug("nvmlShutdown failed after a successful probe", exc_info=True)
    return True


class NvmlBackend:
    """The GpuBackend of a node with NVIDIA GPUs, read through NVML."""

    kind = "nvml"

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # One lock serializes reads against close(), so no call reaches NVML after nvmlShutdown.
        self._lock = threading.Lock()
        self._closed = False
        gpm = Gpm(pynvml, _nvml_errors)
        self._mig = MigMonitor(pynvml, _nvml_errors, gpm)
        self._device_gpm = DeviceGpm(gpm, pynvml)
        self._util_since_us: dict[str, int] = {}  # per GPU: the newest process sample seen
        try:
            pynvml.nvmlInit()
        except Exception as err:
            mapped = map_nvml_error(err)
            raise GpuBackendUnavailable(f"NVML did not initialize: {mapped}") from err
        try:
            self._infos, self._handles = self._enumerate()
        except GpuError as err:
            self._shutdown()
            raise GpuBackendUnavailable(f"NVML could not list the GPUs: {err}") from err
        log.info("NVML backend: %d GPU(s): %s", len(self._infos), [i.name for i in self._infos])

    @staticmethod
    def _enumerate() -> tuple[list[GpuInfo], dict[str, Any]]:
        infos: list[GpuInfo] = []
        handles: dict[str, Any] = {}
        with _nvml_errors():
            count = pynvml.nvmlDeviceGetCount()
        for index in range(count):
            try:
                with _nvml_errors():
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                    uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                    name = _text(pynvml.nvmlDeviceGetName(handle))
            except GpuError as err:
                if isinstance(err, GpuBackendUnavailable):
                    raise
                # One GPU that cannot be opened must not hide the others.
                log.warning("NVML: skipping GPU index %d: %s", index, err)
                continue
            infos.append(GpuInfo(uuid=uuid, name=name, index=index))
            handles[uuid] = handle
        return infos, handles

    def gpus(self) -> list[GpuInfo]:
        return list(self._infos)

    def mig_instances(self, uuid: str) -> list[GpuInfo]:
        """The MIG devices carved from a physical GPU (see nvml_mig); [] when MIG is off."""
        with self._lock:
            return self._mig.instances(uuid, self._handle(uuid))

    def read(self, uuid: str) -> GpuReading:
        with self._lock:
            handle = self._handle(uuid)
            # Stamp next to the counter read: the counter value is the fact the timestamp dates.
            energy_mj = self._required(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle, uuid)
            timestamp_us = self._clock.now_us()
            power_mw = self._required(pynvml.nvmlDeviceGetPowerUsage, handle, uuid)
            util = self._optional(pynvml.nvmlDeviceGetUtilizationRates, handle, uuid)
            memory = self._optional(pynvml.nvmlDeviceGetMemoryInfo, handle, uuid)
            sm_clock_mhz = self._optional(
                pynvml.nvmlDeviceGetClockInfo, handle, uuid, pynvml.NVML_CLOCK_SM
            )
            procs = self._optional(pynvml.nvmlDeviceGetComputeRunningProcesses, handle, uuid)
            sm_by_pid = self._process_sm_util(handle, uuid)
            mig = self._mig.activity(uuid, handle, timestamp_us)
            gpm = self._device_gpm.activity(uuid, handle, timestamp_us)
        return GpuReading(
            uuid=uuid,
            timestamp_us=timestamp_us,
            energy_mj=None if energy_mj is None else int(energy_mj),
            power_mw=None if power_mw is None else int(power_mw),
            gpu_util_pct=None if util is None else int(util.gpu),
            memory_util_pct=None if util is None else int(util.memory),
            memory_used_bytes=None if memory is None else int(memory.used),
            sm_clock_mhz=None if sm_clock_mhz is None else int(sm_clock_mhz),
            processes=_processes(procs or (), sm_by_pid),
            mig=mig,
            **gpm,
        )

    def _process_sm_util(self, handle: Any, uuid: str) -> dict[int, float]:
        """Mean smUtil per pid over the driver's samples newer than the last one seen for this GPU;
        {} where NVML has none or cannot tell (MIG, old drivers). Never raises.

        Sample timestamps are Unix-epoch µs of the host clock, the scale of the backend's clock.
        """
        since_us = self._util_since_us.get(uuid)
        if since_us is None:
            since_us = self._util_since_us[uuid] = max(self._clock.now_us() - PROCESS_UTIL_LOOKBACK_US, 0)
        try:
            with _nvml_errors(uuid):
                samples = pynvml.nvmlDeviceGetProcessUtilization(handle, since_us)
        except GpuError as err:
            if getattr(err.__cause__, "value", None) not in _NO_SAMPLES:
                log.debug("NVML: no per-process utilization for %s: %s", uuid, err)
            return {}
        totals: dict[int, list[int]] = {}
        for sample in samples:
            totals.setdefault(int(sample.pid), []).append(int(sample.smUtil))
            since_us = max(since_us, int(sample.timeStamp))
        self._util_since_us[uuid] = since_us
        return {pid: sum(values) / len(values) for pid, values in totals.items()}

    def instant_power_mw(self, uuid: str) -> int | None:
        """Instantaneous power (NVML_FI_DEV_POWER_INSTANT); None where the driver lacks it."""
        with self._lock:
            handle = self._handle(uuid)
            values = self._optional(
                pynvml.nvmlDeviceGetFieldValues, handle, uuid, [pynvml.NVML_FI_DEV_POWER_INSTANT]
            )
        if not values:
            return None
        field = values[0]
        # The call succeeds when any field was filled; each field carries its own status.
        if field.nvmlReturn != pynvml.NVML_SUCCESS:
            err = _error_for_code(field.nvmlReturn, "power field status", uuid)
            if isinstance(err, GpuNotSupported | GpuNoPermission):
                return None
            raise err
        attr = _VALUE_FIELDS.get(field.valueType, "uiVal")
        return int(getattr(field.value, attr))

    def power_limit_mw(self, uuid: str) -> int | None:
        """The enforced power limit (the board's working TDP); None where unsupported."""
        with self._lock:
            handle = self._handle(uuid)
            limit_mw = self._optional(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle, uuid)
        return None if limit_mw is None else int(limit_mw)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mig.close()
            self._device_gpm.close()
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            with _nvml_errors():
                pynvml.nvmlShutdown()
        except GpuError as err:
            log.warning("nvmlShutdown failed: %s", err)

    def _handle(self, uuid: str) -> Any:
        if self._closed:
            raise GpuBackendUnavailable("the NVML backend is closed", uuid=uuid)
        try:
            return self._handles[uuid]
        except KeyError:
            raise GpuUnknownError(f"no GPU {uuid!r} on this node", uuid=uuid) from None

    @staticmethod
    def _required(fn: Callable[..., T], handle: Any, uuid: str, *args: Any) -> T | None:
        """A core counter: None only when the GPU lacks it; every other failure raises."""
        try:
            with _nvml_errors(uuid):
                return fn(handle, *args)
        except GpuNotSupported:
            return None

    @staticmethod
    def _optional(fn: Callable[..., T], handle: Any, uuid: str, *args: Any) -> T | None:
        """A detail field: None when unsupported or forbidden; a lost GPU still raises."""
        try:
            with _nvml_errors(uuid):
                return fn(handle, *args)
        except (GpuNotSupported, GpuNoPermission):
            return None


def _processes(procs: Any, sm_by_pid: dict[int, float]) -> tuple[GpuProcess, ...]:
    """The compute processes, then any pid seen only in the utilization samples (an MPS client
    may show only there)."""
    listed = [_process(p, sm_by_pid) for p in procs]
    seen = {p.pid for p in listed}
    extra = [GpuProcess(pid=pid, sm_util_pct=pct) for pid, pct in sorted(sm_by_pid.items()) if pid not in seen]
    return tuple(listed + extra)


def _process(proc: Any, sm_by_pid: dict[int, float]) -> GpuProcess:
    used = getattr(proc, "usedGpuMemory", None)
    if used == _NOT_AVAILABLE_U64:
        used = None
    pid = int(proc.pid)
    return GpuProcess(pid=pid, used_memory_bytes=None if used is None else int(used), sm_util_pct=sm_by_pid.get(pid))
