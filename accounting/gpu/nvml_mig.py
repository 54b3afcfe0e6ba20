"""MIG instances and their GPM activity, for the NVML backend.

It owns the enumeration of a physical GPU's MIG devices (GpuInfo with parent, profile, slices)
and the GPM samples behind per-instance activity. `nvml.py` hands it the `pynvml` module
and its error guard, so pynvml is imported in one module only and every NVMLError still becomes
a GpuError before code here looks at it.

NVML facts this rests on (NVML API reference, nvidia-ml-py 13.615):
- A MIG device is a compute instance (CI) inside a GPU instance (GI); its handle comes from
  nvmlDeviceGetMigDeviceHandleByIndex, whose empty slots answer NotFound.
- Profile: nvmlDeviceGetName on a MIG handle gives the MIG device name, e.g. "NVIDIA H100 80GB
  HBM3 MIG 1g.10gb"; its suffix is the profile. The GI profile itself (nvmlDeviceGetGpuInstanceById
  + nvmlGpuInstanceGetInfo) needs a privileged user, which a sampler should not need, so where the
  name carries no profile it is rebuilt from nvmlDeviceGetAttributes (unprivileged) by NVIDIA's own
  rule (go-nvlib MigProfile): memory in eighths of the board, rounded up, times the board's GB.
  Plain rounding of memorySizeMB would be wrong: a 3g.40gb instance has ~39.25 GiB.
- Slices: nvmlDeviceGetAttributes(mig).computeInstanceSliceCount, the "c" of "1c.3g.40gb", which is
  the "g" whenever one CI fills its GI (the default); counting CI slices keeps a GI split into
  several CIs from being counted once per CI.
- Activity: GPM (Hopper+) per GI via nvmlGpmMigSampleGet(parent, gpuInstanceId, sample); two samples
  at least 100 ms apart go to nvmlGpmMetricsGet (the plumbing is nvml_gpm's, shared with device-level
  GPM). SM_UTIL (share of the instance's SMs busy) is used, not GRAPHICS_UTIL, which is a duty cycle
  ("any app active") that a tiny kernel in a loop pins at 100% while drawing little power. CIs of one
  GI share their GI's value.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from accounting.errors import GpuBackendUnavailable, GpuError, GpuLost, GpuNoPermission, GpuNotSupported
from accounting.gpu.backend import GpuInfo, MigActivity
from accounting.gpu.nvml_gpm import Gpm, Guard, SamplePair

log = logging.getLogger(__name__)

# "… MIG 1g.10gb", "… MIG 1c.3g.40gb", "… MIG 1g.10gb+me" (some drivers print "3G.20GB")
_PROFILE_IN_NAME = re.compile(r"\bMIG\s+((?:\d+c\.)?\d+g\.\d+gb(?:\+[a-z0-9.,]+)?)\s*$", re.IGNORECASE)
_MIB = 1024**2
_GIB = 1024**3


def profile_from_name(name: str) -> str | None:
    """The MIG profile at the end of a MIG device name, lower-cased; None when absent."""
    match = _PROFILE_IN_NAME.search(name)
    return match.group(1).lower() if match else None


def profile_from_attributes(
    gi_slices: int, ci_slices: int, memory_mb: int, board_memory_bytes: int | None
) -> str | None:
    """The profile name NVIDIA's tools give these attributes (go-nvlib `MigProfile.String`)."""
    if not gi_slices or not memory_mb or not board_memory_bytes:
        return None
    eighths = math.ceil(memory_mb * _MIB * 8 / board_memory_bytes) / 8
    board_gb = -(-board_memory_bytes // _GIB)
    gb = int(eighths * board_gb + 0.5)  # half away from zero, as Go's math.Round
    name = f"{gi_slices}g.{gb}gb"
    return name if not ci_slices or ci_slices == gi_slices else f"{ci_slices}c.{name}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _code(err: GpuError) -> object:
    """The NVML return code behind a mapped error (kept as its cause)."""
    return getattr(err.__cause__, "value", None)


def _fatal(err: GpuError) -> bool:
    return isinstance(err, GpuLost | GpuBackendUnavailable)


@dataclass(slots=True)
class _GpmState:
    uuids: tuple[str, ...]  # the MIG devices of this GI when it was first sampled
    samples: SamplePair


class MigMonitor:
    """MIG enumeration and per-GI GPM samples for one NVML backend; not thread-safe on its own
    (the backend calls it under its lock)."""

    def __init__(self, nvml: ModuleType, guard: Guard, gpm: Gpm | None = None) -> None:
        self._nvml = nvml
        self._guard = guard
        self._gpm = gpm if gpm is not None else Gpm(nvml, guard)
        self._states: dict[tuple[str, int], _GpmState] = {}

    # enumeration

    def instances(self, parent_uuid: str, parent: Any) -> list[GpuInfo]:
        """The MIG devices of a physical GPU; [] when MIG is off or unsupported."""
        infos: list[GpuInfo] = []
        for index, mig in self._devices(parent_uuid, parent):
            try:
                infos.append(self._describe(parent_uuid, parent, index, mig))
            except GpuError as err:
                if _fatal(err):
                    raise
                log.warning("NVML: skipping MIG device %d of %s: %s", index, parent_uuid, err)
        return infos

    def _devices(self, parent_uuid: str, parent: Any) -> list[tuple[int, Any]]:
        nvml = self._nvml
        try:
            with self._guard(parent_uuid):
                current, _pending = nvml.nvmlDeviceGetMigMode(parent)
                if current != nvml.NVML_DEVICE_MIG_ENABLE:
                    return []
                count = nvml.nvmlDeviceGetMaxMigDeviceCount(parent)
        except GpuError as err:
            # Pre-Ampere GPUs answer NotSupported; drivers older than MIG lack the function.
            if isinstance(err, GpuNotSupported) or _code(err) == nvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                return []
            raise
        found: list[tuple[int, Any]] = []
        for index in range(count):
            try:
                with self._guard(parent_uuid):
                    found.append((index, nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, index)))
            except GpuError as err:
                if _fatal(err):
                    raise
                if _code(err) != nvml.NVML_ERROR_NOT_FOUND:  # NotFound: an empty slot
                    log.warning("NVML: MIG slot %d of %s unreadable: %s", index, parent_uuid, err)
        return found

    def _describe(self, parent_uuid: str, parent: Any, index: int, mig: Any) -> GpuInfo:
        nvml = self._nvml
        with self._guard(parent_uuid):
            uuid = _text(nvml.nvmlDeviceGetUUID(mig))
            name = _text(nvml.nvmlDeviceGetName(mig))
        attrs = self._optional(nvml.nvmlDeviceGetAttributes, mig, parent_uuid)
        slices = None
        if attrs is not None:
            slices = int(attrs.computeInstanceSliceCount or attrs.gpuInstanceSliceCount) or None
        profile = profile_from_name(name)
        if profile is None and attrs is not None:
            board = self._optional(nvml.nvmlDeviceGetMemoryInfo, parent, parent_uuid)
            profile = profile_from_attributes(
                int(attrs.gpuInstanceSliceCount),
                int(attrs.computeInstanceSliceCount),
                int(attrs.memorySizeMB),
                None if board is None else int(board.total),
            )
        return GpuInfo(
            uuid=uuid, name=name, index=index, parent_uuid=parent_uuid, mig_profile=profile, mig_slices=slices
        )

    def _optional(self, fn: Callable[..., Any], handle: Any, uuid: str) -> Any:
        try:
            with self._guard(uuid):
                return fn(handle)
        except (GpuNotSupported, GpuNoPermission):
            return None

    # GPM activity

    def activity(self, parent_uuid: str, parent: Any, now_us: int) -> tuple[MigActivity, ...]:
        """SM activity of each MIG device since the previous call for its GI; () when MIG is off,
        GPM is unsupported, it is the first sample, or anything fails."""
        try:
            if not self._gpm.supported(parent_uuid, parent):
                return ()
            groups = self._gpu_instances(parent_uuid, parent)
        except GpuError as err:
            log.debug("NVML: no MIG activity for %s: %s", parent_uuid, err)
            return ()
        self._forget(parent_uuid, keep=groups)
        found: list[MigActivity] = []
        for gi_id, uuids in sorted(groups.items()):
            try:
                pct = self._advance(parent_uuid, parent, gi_id, uuids, now_us)
            except GpuError as err:
                log.debug("NVML: GPM sample of GI %d on %s failed: %s", gi_id, parent_uuid, err)
                continue
            if pct is not None:
                found.extend(MigActivity(uuid=uuid, activity_pct=pct) for uuid in uuids)
        return tuple(found)

    def _gpu_instances(self, parent_uuid: str, parent: Any) -> dict[int, tuple[str, ...]]:
        """GPU instance id → the UUIDs of its MIG devices."""
        groups: dict[int, list[str]] = {}
        for _index, mig in self._devices(parent_uuid, parent):
            with self._guard(parent_uuid):
                gi_id = int(self._nvml.nvmlDeviceGetGpuInstanceId(mig))
                groups.setdefault(gi_id, []).append(_text(self._nvml.nvmlDeviceGetUUID(mig)))
        return {gi_id: tuple(sorted(uuids)) for gi_id, uuids in groups.items()}

    def _advance(self, parent_uuid: str, parent: Any, gi_id: int, uuids: tuple[str, ...], now_us: int) -> float | None:
        key = (parent_uuid, gi_id)
        state = self._states.get(key)
        if state is not None and state.uuids != uuids:  # the GI id was reused by a new instance
            self._gpm.free(self._states.pop(key).samples)
            state = None

        def take(buffer: Any) -> Any:
            return self._nvml.nvmlGpmMigSampleGet(parent, gi_id, buffer)

        if state is None:
            self._states[key] = _GpmState(uuids, self._gpm.start(parent_uuid, take, now_us))
            return None  # the first sample of this GI: nothing to compare with yet
        samples = self._gpm.advance(parent_uuid, state.samples, take, now_us)
        if samples is None:
            return None
        (sm_util,) = self._gpm.metrics(parent_uuid, *samples, [self._nvml.NVML_GPM_METRIC_SM_UTIL])
        return sm_util

    # buffers

    def _forget(self, parent_uuid: str, keep: Iterable[int]) -> None:
        """Free the samples of GPU instances of this parent that no longer exist."""
        kept = set(keep)
        for key in [k for k in self._states if k[0] == parent_uuid and k[1] not in kept]:
            self._gpm.free(self._states.pop(key).samples)

    def close(self) -> None:
        """Free every GPM sample buffer; call before nvmlShutdown."""
        for state in self._states.values():
            self._gpm.free(state.samples)
        self._states.clear()
