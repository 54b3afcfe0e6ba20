"""The NVML backend's error mapping and decoding, against a patched `pynvml`.

Patching pynvml is for these tests only: everything else runs on the simulated fleet. The
`gpu`-marked test at the end needs a real NVIDIA GPU and is deselected by default.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from accounting.clock import FakeClock, SystemClock
from accounting.errors import (
    GpuBackendUnavailable,
    GpuError,
    GpuLost,
    GpuNoPermission,
    GpuNotSupported,
    GpuUnknownError,
    InvalidInput,
)
from accounting.gpu.backend import GpuBackend, GpuProcess
from accounting.gpu.factory import open_backend
from accounting.gpu.nvml import NvmlBackend, map_nvml_error, nvml_available

T0_US = 1_700_000_000_000_000


@dataclass
class FakeGpu:
    """One device as the patched NVML answers for it; an exception instance is raised instead."""

    uuid: Any = "GPU-aaaa"
    name: Any = "NVIDIA H100 80GB HBM3"
    energy_mj: Any = 1_000_000
    power_mw: Any = 350_000
    util: Any = field(default_factory=lambda: SimpleNamespace(gpu=97, memory=40))
    memory: Any = field(default_factory=lambda: SimpleNamespace(used=12 * 2**30))
    sm_clock_mhz: Any = 1980
    procs: Any = field(default_factory=list)
    fields: Any = None
    power_limit_mw: Any = 700_000
    # nvmlDeviceGetProcessUtilization: samples (or an error); the timestamps it was asked for
    proc_util: Any = field(default_factory=pynvml.NVMLError_NotFound)
    util_since_us: list[int] = field(default_factory=list)
    mig_mode: Any = (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_DISABLE)
    gpm_support: Any = field(default_factory=lambda: SimpleNamespace(isSupportedDevice=0))


def _answer(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class FakeNvml:
    """Patches the pynvml functions NvmlBackend calls; a handle is the FakeGpu itself."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.init_error: BaseException | None = None
        self.inits = 0
        self.shutdowns = 0
        patches = {
            "nvmlInit": self._init,
            "nvmlShutdown": self._shutdown,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": lambda i: self.gpus[i],
            "nvmlDeviceGetUUID": lambda h: _answer(h.uuid),
            "nvmlDeviceGetName": lambda h: _answer(h.name),
            "nvmlDeviceGetTotalEnergyConsumption": lambda h: _answer(h.energy_mj),
            "nvmlDeviceGetPowerUsage": lambda h: _answer(h.power_mw),
            "nvmlDeviceGetUtilizationRates": lambda h: _answer(h.util),
            "nvmlDeviceGetMemoryInfo": lambda h: _answer(h.memory),
            "nvmlDeviceGetClockInfo": self._clock_info,
            "nvmlDeviceGetComputeRunningProcesses": lambda h: _answer(h.procs),
            "nvmlDeviceGetFieldValues": self._field_values,
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: _answer(h.power_limit_mw),
            "nvmlDeviceGetProcessUtilization": self._process_utilization,
            "nvmlDeviceGetMigMode": lambda h: _answer(h.mig_mode),
            "nvmlGpmQueryDeviceSupport": lambda h: _answer(h.gpm_support),
        }
        for name, fn in patches.items():
            monkeypatch.setattr(pynvml, name, fn)

    def _init(self) -> None:
        self.inits += 1
        _answer(self.init_error)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    @staticmethod
    def _clock_info(h: FakeGpu, clock_type: int) -> int:
        assert clock_type == pynvml.NVML_CLOCK_SM
        return _answer(h.sm_clock_mhz)

    @staticmethod
    def _process_utilization(h: FakeGpu, since_us: int) -> Any:
        h.util_since_us.append(since_us)
        return _answer(h.proc_util)

    @staticmethod
    def _field_values(h: FakeGpu, field_ids: list[int]) -> Any:
        assert field_ids == [pynvml.NVML_FI_DEV_POWER_INSTANT]
        return _answer(h.fields)


def util_sample(pid: int, sm: int, at_us: int) -> Any:
    """A real ctypes nvmlProcessUtilizationSample_t."""
    sample = pynvml.c_nvmlProcessUtilizationSample_t()
    sample.pid, sample.smUtil, sample.timeStamp = pid, sm, at_us
    return sample


def power_field(value_mw: int, status: int = pynvml.NVML_SUCCESS) -> list[Any]:
    """A real ctypes nvmlFieldValue_t, filled as the driver would."""
    fv = pynvml.c_nvmlFieldValue_t()
    fv.fieldId = pynvml.NVML_FI_DEV_POWER_INSTANT
    fv.nvmlReturn = status
    fv.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    fv.value.uiVal = value_mw
    return [fv]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0_US)


ERROR_CASES = [
    (pynvml.NVMLError_NotSupported, GpuNotSupported),
    (pynvml.NVMLError_GpuIsLost, GpuLost),
    (pynvml.NVMLError_NoPermission, GpuNoPermission),
    (pynvml.NVMLError_LibraryNotFound, GpuBackendUnavailable),
    (pynvml.NVMLError_DriverNotLoaded, GpuBackendUnavailable),
    (pynvml.NVMLError_Unknown, GpuUnknownError),
    (pynvml.NVMLError_Timeout, GpuUnknownError),
    (pynvml.NVMLError_Uninitialized, GpuUnknownError),
]


@pytest.mark.parametrize(("nvml_error", "expected"), ERROR_CASES)
def test_each_nvml_error_maps_to_the_project_family(nvml_error, expected) -> None:
    err = map_nvml_error(nvml_error(), uuid="GPU-x")
    assert type(err) is expected
    assert err.uuid == "GPU-x"
    assert not isinstance(err, pynvml.NVMLError)


# NotSupported on the counter is not an error but a None (pre-Volta), tested below.
@pytest.mark.parametrize(
    ("nvml_error", "expected"), [c for c in ERROR_CASES if c[1] is not GpuNotSupported]
)
def test_a_failing_energy_read_raises_only_project_errors(
    monkeypatch, clock, nvml_error, expected
) -> None:
    FakeNvml(monkeypatch, [FakeGpu(energy_mj=nvml_error())])
    backend = NvmlBackend(clock)
    with pytest.raises(GpuError) as caught:
        backend.read("GPU-aaaa")
    assert type(caught.value) is expected
    assert caught.value.uuid == "GPU-aaaa"


def test_library_mismatch_is_not_supported_and_fails_soft(monkeypatch, clock) -> None:
    mismatch = pynvml.NVMLLibraryMismatchError("unversioned call")
    FakeNvml(monkeypatch, [FakeGpu(procs=mismatch)])
    assert NvmlBackend(clock).read("GPU-aaaa").processes == ()
    assert type(map_nvml_error(mismatch)) is GpuNotSupported


def test_reads_decode_every_field(monkeypatch, clock) -> None:
    procs = [
        SimpleNamespace(pid=41, usedGpuMemory=2**30),
        SimpleNamespace(pid=42, usedGpuMemory=None),
    ]
    FakeNvml(monkeypatch, [FakeGpu(procs=procs)])
    backend = NvmlBackend(clock)
    assert backend.kind == "nvml"
    assert isinstance(backend, GpuBackend)
    clock.advance(2.5)
    r = backend.read("GPU-aaaa")
    assert r.uuid == "GPU-aaaa"
    assert r.timestamp_us == T0_US + 2_500_000
    assert (r.energy_mj, r.power_mw) == (1_000_000, 350_000)
    assert (r.gpu_util_pct, r.memory_util_pct) == (97, 40)
    assert r.memory_used_bytes == 12 * 2**30
    assert r.sm_clock_mhz == 1980
    assert r.processes == (GpuProcess(41, 2**30), GpuProcess(42, None))


def test_process_sm_util_is_the_mean_of_the_samples_since_the_last_read(monkeypatch, clock) -> None:
    gpu = FakeGpu(procs=[SimpleNamespace(pid=41, usedGpuMemory=2**30), SimpleNamespace(pid=42, usedGpuMemory=None)])
    FakeNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    gpu.proc_util = [
        util_sample(41, 50, T0_US - 600_000),
        util_sample(42, 10, T0_US - 500_000),
        util_sample(41, 70, T0_US - 400_000),
        util_sample(99, 30, T0_US - 300_000),  # an MPS client, absent from the compute list
    ]
    r = backend.read("GPU-aaaa")
    assert r.processes == (
        GpuProcess(41, 2**30, sm_util_pct=60.0),
        GpuProcess(42, None, sm_util_pct=10.0),
        GpuProcess(99, None, sm_util_pct=30.0),
    )
    # The first read looks one second back; the next starts at the newest sample seen.
    clock.advance(1.0)
    gpu.proc_util = [util_sample(41, 90, T0_US + 800_000)]
    assert backend.read("GPU-aaaa").processes[0] == GpuProcess(41, 2**30, sm_util_pct=90.0)
    assert gpu.util_since_us == [T0_US - 1_000_000, T0_US - 300_000]


def test_no_new_process_samples_keep_the_watermark(monkeypatch, clock) -> None:
    gpu = FakeGpu(procs=[SimpleNamespace(pid=41, usedGpuMemory=2**30)])
    FakeNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    gpu.proc_util = [util_sample(41, 20, T0_US - 100)]
    backend.read("GPU-aaaa")
    gpu.proc_util = pynvml.NVMLError_NotFound()  # nothing since
    clock.advance(5.0)
    assert backend.read("GPU-aaaa").processes == (GpuProcess(41, 2**30),)
    clock.advance(5.0)
    gpu.proc_util = pynvml.NVMLError(pynvml.NVML_SUCCESS)  # the binding's "success, but nothing to size"
    backend.read("GPU-aaaa")
    assert gpu.util_since_us == [T0_US - 1_000_000, T0_US - 100, T0_US - 100]


@pytest.mark.parametrize(
    "failure",
    [
        pynvml.NVMLError_NotSupported(),  # MIG, old drivers
        pynvml.NVMLError_NoPermission(),
        pynvml.NVMLError_Unknown(),
        pynvml.NVMLError_FunctionNotFound(),
    ],
)
def test_process_utilization_failures_leave_sm_util_none_and_never_fail_the_read(
    monkeypatch, clock, failure
) -> None:
    gpu = FakeGpu(procs=[SimpleNamespace(pid=41, usedGpuMemory=2**30)], proc_util=failure)
    FakeNvml(monkeypatch, [gpu])
    r = NvmlBackend(clock).read("GPU-aaaa")
    assert r.energy_mj == 1_000_000
    assert r.processes == (GpuProcess(41, 2**30, sm_util_pct=None),)


def test_not_available_process_memory_from_an_older_binding_is_none(monkeypatch, clock) -> None:
    procs = [SimpleNamespace(pid=7, usedGpuMemory=2**64 - 1)]
    FakeNvml(monkeypatch, [FakeGpu(procs=procs)])
    assert NvmlBackend(clock).read("GPU-aaaa").processes == (GpuProcess(7, None),)


def test_bytes_and_str_names_and_uuids_decode_alike(monkeypatch, clock) -> None:
    FakeNvml(
        monkeypatch,
        [
            FakeGpu(uuid=b"GPU-bbbb", name=b"Tesla V100-SXM2-32GB"),
            FakeGpu(uuid="GPU-cccc", name="NVIDIA H200"),
        ],
    )
    infos = NvmlBackend(clock).gpus()
    assert [(i.uuid, i.name, i.index) for i in infos] == [
        ("GPU-bbbb", "Tesla V100-SXM2-32GB", 0),
        ("GPU-cccc", "NVIDIA H200", 1),
    ]


def test_pre_volta_energy_not_supported_is_none(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu(energy_mj=pynvml.NVMLError_NotSupported())])
    r = NvmlBackend(clock).read("GPU-aaaa")
    assert r.energy_mj is None
    assert r.power_mw == 350_000


def test_optional_fields_fail_soft(monkeypatch, clock) -> None:
    gpu = FakeGpu(
        power_mw=pynvml.NVMLError_NotSupported(),
        util=pynvml.NVMLError_NotSupported(),  # MIG
        memory=pynvml.NVMLError_NoPermission(),
        sm_clock_mhz=pynvml.NVMLError_NotSupported(),
        procs=pynvml.NVMLError_NoPermission(),
    )
    FakeNvml(monkeypatch, [gpu])
    r = NvmlBackend(clock).read("GPU-aaaa")
    assert r.energy_mj == 1_000_000
    assert (r.power_mw, r.gpu_util_pct, r.memory_util_pct) == (None, None, None)
    assert (r.memory_used_bytes, r.sm_clock_mhz, r.processes) == (None, None, ())


def test_a_lost_gpu_raises_while_the_other_still_reads(monkeypatch, clock) -> None:
    lost = FakeGpu(uuid="GPU-lost")
    FakeNvml(monkeypatch, [lost, FakeGpu(uuid="GPU-good", energy_mj=5_000)])
    backend = NvmlBackend(clock)
    lost.energy_mj = pynvml.NVMLError_GpuIsLost()
    with pytest.raises(GpuLost) as caught:
        backend.read("GPU-lost")
    assert caught.value.uuid == "GPU-lost"
    assert isinstance(caught.value.__cause__, pynvml.NVMLError)  # kept for debugging only
    assert backend.read("GPU-good").energy_mj == 5_000


def test_a_lost_gpu_raises_even_from_an_optional_field(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu(util=pynvml.NVMLError_GpuIsLost())])
    with pytest.raises(GpuLost):
        NvmlBackend(clock).read("GPU-aaaa")


def test_a_gpu_lost_at_start_is_skipped(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu(uuid=pynvml.NVMLError_GpuIsLost()), FakeGpu(uuid="GPU-ok")])
    assert [(i.uuid, i.index) for i in NvmlBackend(clock).gpus()] == [("GPU-ok", 1)]


def test_unknown_uuid_is_a_gpu_error(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu()])
    with pytest.raises(GpuUnknownError):
        NvmlBackend(clock).read("GPU-nope")


def test_instant_power_decodes_the_field_value(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu(fields=power_field(612_345))])
    assert NvmlBackend(clock).instant_power_mw("GPU-aaaa") == 612_345


@pytest.mark.parametrize(
    "fields",
    [
        power_field(0, status=pynvml.NVML_ERROR_NOT_SUPPORTED),
        pynvml.NVMLError_NotSupported(),
    ],
)
def test_instant_power_unsupported_is_none(monkeypatch, clock, fields) -> None:
    FakeNvml(monkeypatch, [FakeGpu(fields=fields)])
    assert NvmlBackend(clock).instant_power_mw("GPU-aaaa") is None


def test_instant_power_on_a_lost_gpu_raises(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu(fields=power_field(0, status=pynvml.NVML_ERROR_GPU_IS_LOST))])
    with pytest.raises(GpuLost):
        NvmlBackend(clock).instant_power_mw("GPU-aaaa")


def test_power_limit(monkeypatch, clock) -> None:
    FakeNvml(
        monkeypatch,
        [FakeGpu(), FakeGpu(uuid="GPU-b", power_limit_mw=pynvml.NVMLError_NotSupported())],
    )
    backend = NvmlBackend(clock)
    assert backend.power_limit_mw("GPU-aaaa") == 700_000
    assert backend.power_limit_mw("GPU-b") is None


@pytest.mark.parametrize(
    "init_error",
    [
        pynvml.NVMLError_LibraryNotFound(),
        pynvml.NVMLError_DriverNotLoaded(),
        pynvml.NVMLError_Unknown(),
    ],
)
def test_init_failure_is_backend_unavailable(monkeypatch, clock, init_error) -> None:
    fake = FakeNvml(monkeypatch, [])
    fake.init_error = init_error
    with pytest.raises(GpuBackendUnavailable):
        NvmlBackend(clock)


def test_close_shuts_down_once_and_later_reads_fail_cleanly(monkeypatch, clock) -> None:
    fake = FakeNvml(monkeypatch, [FakeGpu()])
    backend = NvmlBackend(clock)
    backend.close()
    backend.close()
    assert (fake.inits, fake.shutdowns) == (1, 1)
    with pytest.raises(GpuBackendUnavailable):
        backend.read("GPU-aaaa")


def test_nvml_available_reflects_init(monkeypatch) -> None:
    fake = FakeNvml(monkeypatch, [])
    assert nvml_available() is True
    assert (fake.inits, fake.shutdowns) == (1, 1)
    fake.init_error = pynvml.NVMLError_DriverNotLoaded()
    assert nvml_available() is False


class StubSimulated:
    """Stands in for the simulated fleet, which another module owns."""

    kind = "simulated"

    def gpus(self) -> list:
        return []

    def read(self, uuid: str) -> Any:
        raise GpuNotSupported("stub", uuid=uuid)

    def close(self) -> None:
        pass


def test_factory_auto_falls_back_when_the_library_is_missing(monkeypatch, clock, caplog) -> None:
    fake = FakeNvml(monkeypatch, [])
    fake.init_error = pynvml.NVMLError_LibraryNotFound()
    with caplog.at_level("INFO", logger="accounting.gpu.factory"):
        backend = open_backend("auto", clock=clock, simulated_factory=StubSimulated)
    assert backend.kind == "simulated"
    assert "simulated" in caplog.text


def test_factory_auto_prefers_nvml(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu()])
    backend = open_backend("auto", clock=clock, simulated_factory=StubSimulated)
    assert backend.kind == "nvml"


def test_factory_nvml_choice_fails_loudly(monkeypatch, clock) -> None:
    fake = FakeNvml(monkeypatch, [])
    fake.init_error = pynvml.NVMLError_DriverNotLoaded()
    with pytest.raises(GpuBackendUnavailable, match="'nvml' was requested"):
        open_backend("nvml", clock=clock, simulated_factory=StubSimulated)


def test_factory_simulated_and_unknown_choices(clock) -> None:
    assert (
        open_backend("simulated", clock=clock, simulated_factory=StubSimulated).kind == "simulated"
    )
    with pytest.raises(InvalidInput):
        open_backend("rapl", clock=clock, simulated_factory=StubSimulated)


def _driver_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_driver_library_present(), reason="this machine has an NVIDIA driver")
def test_nvml_is_unavailable_on_this_machine_for_real() -> None:
    # No patching: CI runners and this dev box have no NVIDIA driver library.
    assert nvml_available() is False
    with pytest.raises(GpuBackendUnavailable):
        NvmlBackend(SystemClock())


@pytest.mark.gpu
def test_real_gpus_energy_moves_and_power_is_within_tdp() -> None:
    backend = NvmlBackend(SystemClock())
    try:
        gpus = backend.gpus()
        assert gpus, "NVML initialized but lists no GPU"
        first = {g.uuid: backend.read(g.uuid) for g in gpus}
        time.sleep(1.0)
        for g in gpus:
            later = backend.read(g.uuid)
            before = first[g.uuid]
            assert later.timestamp_us - before.timestamp_us >= 900_000
            assert before.energy_mj is not None and later.energy_mj is not None, g.name
            assert later.energy_mj > before.energy_mj, g.name
            limit_mw = backend.power_limit_mw(g.uuid) or 1_200_000  # GB200, the largest TDP
            assert later.power_mw is not None and 0 < later.power_mw <= limit_mw * 1.05, g.name
    finally:
        backend.close()
