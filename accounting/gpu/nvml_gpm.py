"""GPM (GPU Performance Monitoring, Hopper and newer) for the NVML backend: the support check, the
pairs of sample buffers, the metrics call, and device-level activity of each physical GPU.

`nvml.py` hands in the `pynvml` module and its error guard, so pynvml is imported in one module only
and every NVMLError is a GpuError before code here looks at it. `nvml_mig` samples MIG GPU instances
through the same `Gpm` plumbing.

NVML facts this rests on (NVML API reference, "GPM Functions"; nvidia-ml-py 13.615):
- nvmlGpmQueryDeviceSupport(h).isSupportedDevice says whether a GPU has GPM; older drivers lack the
  function (FunctionNotFound), older GPUs answer NotSupported or 0.
- Buffers come from nvmlGpmSampleAlloc and go back with nvmlGpmSampleFree. nvmlGpmSampleGet(h, buf)
  reads the whole GPU's counters into one; nvmlGpmMigSampleGet(h, gpuInstanceId, buf) one GPU
  instance's. nvmlGpmMetricsGet(req) computes metrics between req.sample1 (older) and req.sample2
  (newer), which must be more than 100 ms apart; each metric carries its own nvmlReturn.
- Device-level metrics used: SM_UTIL (share of SMs busy, not GRAPHICS_UTIL, a duty cycle that a tiny
  kernel in a loop pins at 100 %), ANY_TENSOR_UTIL and DRAM_BW_UTIL (share of peak bandwidth).
- Whether nvmlGpmSampleGet answers for a MIG-enabled parent is not checked here: whatever the driver
  says is taken, and a refusal turns device-level GPM off for that GPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from accounting.errors import GpuError, GpuNoPermission, GpuNotSupported

log = logging.getLogger(__name__)

Guard = Callable[[str | None], AbstractContextManager[None]]
Take = Callable[[Any], Any]  # reads one GPM sample into the buffer it is given

GPM_MIN_INTERVAL_US = 100_000  # NVML: two GPM samples must be more than 100 ms apart
# The GpuReading fields, in order, and the GPM metric (a pynvml constant's name) behind each.
DEVICE_METRICS = (
    ("sm_active_pct", "NVML_GPM_METRIC_SM_UTIL"),
    ("tensor_active_pct", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("dram_bw_pct", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
)
NO_DEVICE_ACTIVITY: dict[str, float | None] = {}  # every field None


def _code(err: GpuError) -> object:
    """The NVML return code behind a mapped error (kept as its cause)."""
    return getattr(err.__cause__, "value", None)


@dataclass(slots=True)
class SamplePair:
    previous: Any  # buffer holding the older sample
    spare: Any  # buffer the next sample is read into
    taken_us: int


class Gpm:
    """Support checks, buffers and metrics; not thread-safe on its own (the backend's lock holds)."""

    def __init__(self, nvml: ModuleType, guard: Guard) -> None:
        self._nvml = nvml
        self._guard = guard
        self._support: dict[str, bool] = {}

    def unsupported(self, err: GpuError) -> bool:
        """Whether an error says the GPU or driver will never do this (not a passing failure)."""
        return isinstance(err, GpuNotSupported) or _code(err) == self._nvml.NVML_ERROR_FUNCTION_NOT_FOUND

    def supported(self, uuid: str, handle: Any) -> bool:
        """Whether the GPU has GPM, asked once; a passing failure raises and is asked again next time."""
        if uuid not in self._support:
            try:
                with self._guard(uuid):
                    support = self._nvml.nvmlGpmQueryDeviceSupport(handle)
                self._support[uuid] = bool(support.isSupportedDevice)
            except GpuError as err:
                if not self.unsupported(err):
                    raise
                self._support[uuid] = False
        return self._support[uuid]

    def start(self, uuid: str, take: Take, now_us: int) -> SamplePair:
        """Two buffers, the first holding a sample taken now; nothing stays allocated if that fails."""
        buffers: list[Any] = []
        try:
            with self._guard(uuid):
                buffers.append(self._nvml.nvmlGpmSampleAlloc())
                buffers.append(self._nvml.nvmlGpmSampleAlloc())
                take(buffers[0])
        except GpuError:
            self.free_buffers(buffers)
            raise
        return SamplePair(previous=buffers[0], spare=buffers[1], taken_us=now_us)

    def advance(self, uuid: str, pair: SamplePair, take: Take, now_us: int) -> tuple[Any, Any] | None:
        """A new sample into the spare buffer, and (older, newer) to compare; None within 100 ms of the
        older sample, which is then kept so that the next call spans a long enough interval."""
        if now_us - pair.taken_us < GPM_MIN_INTERVAL_US:
            return None
        with self._guard(uuid):
            take(pair.spare)
        older, newer = pair.previous, pair.spare
        pair.previous, pair.spare, pair.taken_us = newer, older, now_us
        return older, newer

    def metrics(self, uuid: str, older: Any, newer: Any, metric_ids: Sequence[int]) -> list[float | None]:
        """Each metric between two samples, clipped to [0, 100]; None for one NVML could not compute."""
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(metric_ids)
        request.sample1 = older
        request.sample2 = newer
        for k, metric_id in enumerate(metric_ids):
            request.metrics[k].metricId = metric_id
        with self._guard(uuid):
            result = nvml.nvmlGpmMetricsGet(request)
        values: list[float | None] = []
        for k in range(len(metric_ids)):
            # The call succeeds when any metric was computed; each metric carries its own status.
            metric = result.metrics[k]
            ok = metric.nvmlReturn == nvml.NVML_SUCCESS and math.isfinite(metric.value)
            values.append(min(max(float(metric.value), 0.0), 100.0) if ok else None)
        return values

    def free(self, pair: SamplePair) -> None:
        self.free_buffers([pair.previous, pair.spare])

    def free_buffers(self, buffers: list[Any]) -> None:
        for buffer in buffers:
            try:
                with self._guard(None):
                    self._nvml.nvmlGpmSampleFree(buffer)
            except GpuError as err:
                log.warning("nvmlGpmSampleFree failed: %s", err)


class DeviceGpm:
    """Device-level SM, tensor and DRAM-bandwidth activity of each physical GPU, between the sample of
    the previous read and this one (two alternating buffers per GPU)."""

    def __init__(self, gpm: Gpm, nvml: ModuleType) -> None:
        self._gpm = gpm
        self._nvml = nvml
        self._metric_ids = [getattr(nvml, name) for _field, name in DEVICE_METRICS]
        self._pairs: dict[str, SamplePair] = {}
        self._off: set[str] = set()  # GPUs whose driver refused device samples for good

    def activity(self, uuid: str, handle: Any, now_us: int) -> dict[str, float | None]:
        """The GpuReading fields of the GPM means since the previous sample; all None (an empty dict)
        where GPM is unsupported, at the first sample, within 100 ms of the previous one, or when
        anything fails. Never raises."""
        if uuid in self._off:
            return NO_DEVICE_ACTIVITY

        def take(buffer: Any) -> Any:
            return self._nvml.nvmlGpmSampleGet(handle, buffer)

        try:
            if not self._gpm.supported(uuid, handle):
                return NO_DEVICE_ACTIVITY
            pair = self._pairs.get(uuid)
            if pair is None:
                self._pairs[uuid] = self._gpm.start(uuid, take, now_us)
                return NO_DEVICE_ACTIVITY  # nothing to compare the first sample with
            samples = self._gpm.advance(uuid, pair, take, now_us)
            if samples is None:
                return NO_DEVICE_ACTIVITY
            values = self._gpm.metrics(uuid, *samples, self._metric_ids)
        except GpuError as err:
            if self._gpm.unsupported(err) or isinstance(err, GpuNoPermission):
                self._off.add(uuid)
                self.forget(uuid)
            log.debug("NVML: no GPM activity for %s: %s", uuid, err)
            return NO_DEVICE_ACTIVITY
        return {name: value for (name, _metric), value in zip(DEVICE_METRICS, values, strict=True)}

    def forget(self, uuid: str) -> None:
        pair = self._pairs.pop(uuid, None)
        if pair is not None:
            self._gpm.free(pair)

    def close(self) -> None:
        """Free every sample buffer; call before nvmlShutdown."""
        for uuid in list(self._pairs):
            self.forget(uuid)
