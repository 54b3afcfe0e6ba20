"""MIG enumeration and per-instance GPM activity of the NVML backend, against a patched `pynvml`.

The fakes extend those of test_nvml: a MIG device handle is a FakeMig, a GPM sample buffer is a
real ctypes pointer whose address the fake remembers, and nvmlGpmMetricsGet answers with the
difference of the per-GPU-instance counters that the two samples captured, so the tests see which
samples were paired and in which order. Device-level samples (nvmlGpmSampleGet) capture one
counter per metric id; a FakeMigGpu refuses them unless told otherwise (test_nvml_gpm tells it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from accounting.clock import FakeClock
from accounting.errors import GpuLost
from accounting.gpu.backend import GpuInfo, MigActivity
from accounting.gpu.nvml import NvmlBackend
from accounting.gpu.nvml_mig import profile_from_attributes, profile_from_name
from tests.gpu.test_nvml import T0_US, FakeGpu, FakeNvml, _answer

H100 = "NVIDIA H100 80GB HBM3"
H100_MEMORY_BYTES = 81_559 * 2**20  # what nvmlDeviceGetMemoryInfo reports for the board
ENABLED = (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE)


def attrs(gi_slices: int, ci_slices: int, memory_mb: int) -> Any:
    a = pynvml.c_nvmlDeviceAttributes()
    a.gpuInstanceSliceCount, a.computeInstanceSliceCount, a.memorySizeMB = gi_slices, ci_slices, memory_mb
    return a


@dataclass
class FakeMig:
    uuid: Any
    name: Any
    gi_id: Any
    attributes: Any


@dataclass
class FakeMigGpu(FakeGpu):
    mig_mode: Any = ENABLED
    migs: list[Any] = field(default_factory=list)  # by slot; None: an empty slot (NotFound)
    memory: Any = field(default_factory=lambda: SimpleNamespace(used=0, total=H100_MEMORY_BYTES))
    gpm_support: Any = field(default_factory=lambda: SimpleNamespace(isSupportedDevice=1))
    gpm_counters: dict[int, Any] = field(default_factory=dict)  # GI id → cumulative counter (or an error)
    device_gpm: Any = field(default_factory=pynvml.NVMLError_NotSupported)  # metric id → counter (or an error)


def two_instances() -> list[Any]:
    return [
        FakeMig("MIG-aaaa", f"{H100} MIG 3g.40gb", 1, attrs(3, 3, 40_192)),
        None,
        FakeMig("MIG-bbbb", f"{H100} MIG 1g.10gb", 9, attrs(1, 1, 9_856)),
    ]


class FakeMigNvml(FakeNvml):
    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> None:
        super().__init__(monkeypatch, gpus)
        self.live: dict[int, ctypes.Array] = {}  # allocated sample buffers by address
        self.captured: dict[int, float] = {}  # buffer address → the counter it captured
        self.metrics_error: BaseException | None = None
        self.metric_status = pynvml.NVML_SUCCESS  # of per-GI metrics
        self.device_status: dict[int, int] = {}  # metric id → status of a device-level metric
        self.device_requests: list[list[int]] = []  # the metric ids of each device-level request
        patches = {
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: _answer(len(h.migs)),
            "nvmlDeviceGetMigDeviceHandleByIndex": self._mig_handle,
            "nvmlDeviceGetAttributes": lambda h: _answer(h.attributes),
            "nvmlDeviceGetGpuInstanceId": lambda h: _answer(h.gi_id),
            "nvmlGpmSampleAlloc": self._alloc,
            "nvmlGpmSampleFree": self._free,
            "nvmlGpmMigSampleGet": self._mig_sample,
            "nvmlGpmSampleGet": self._device_sample,
            "nvmlGpmMetricsGet": self._metrics,
        }
        for name, fn in patches.items():
            monkeypatch.setattr(pynvml, name, fn)

    @staticmethod
    def _mig_handle(h: FakeMigGpu, index: int) -> FakeMig:
        mig = h.migs[index]
        if mig is None:
            raise pynvml.NVMLError_NotFound()
        return mig

    def _alloc(self) -> Any:
        buffer = ctypes.create_string_buffer(16)
        self.live[ctypes.addressof(buffer)] = buffer
        return ctypes.cast(buffer, pynvml.c_nvmlGpmSample_t)

    def _free(self, sample: Any) -> None:
        del self.live[_address(sample)]

    def _mig_sample(self, h: FakeMigGpu, gi_id: int, sample: Any) -> Any:
        assert _address(sample) in self.live
        self.captured[_address(sample)] = _answer(h.gpm_counters[gi_id])
        return sample

    def _device_sample(self, h: FakeMigGpu, sample: Any) -> Any:
        assert _address(sample) in self.live
        self.captured[_address(sample)] = dict(_answer(h.device_gpm))
        return sample

    def _metrics(self, request: Any) -> Any:
        _answer(self.metrics_error)
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        older, newer = self.captured[_address(request.sample1)], self.captured[_address(request.sample2)]
        result = pynvml.c_nvmlGpmMetricsGet_t()  # a fresh struct, as a binding may hand back
        if isinstance(older, dict):  # device-level samples
            ids = [request.metrics[k].metricId for k in range(request.numMetrics)]
            self.device_requests.append(ids)
            for k, metric_id in enumerate(ids):
                result.metrics[k].metricId = metric_id
                result.metrics[k].nvmlReturn = self.device_status.get(metric_id, pynvml.NVML_SUCCESS)
                result.metrics[k].value = newer[metric_id] - older[metric_id]
            return result
        assert request.numMetrics == 1 and request.metrics[0].metricId == pynvml.NVML_GPM_METRIC_SM_UTIL
        result.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
        result.metrics[0].nvmlReturn = self.metric_status
        result.metrics[0].value = newer - older
        return result


def _address(sample: Any) -> int:
    return ctypes.cast(sample, ctypes.c_void_p).value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0_US)


# enumeration


def test_two_instances_of_different_profiles_are_listed_with_parent_profile_and_slices(monkeypatch, clock) -> None:
    FakeMigNvml(monkeypatch, [FakeMigGpu(uuid="GPU-h100", migs=two_instances())])
    assert NvmlBackend(clock).mig_instances("GPU-h100") == [
        GpuInfo("MIG-aaaa", f"{H100} MIG 3g.40gb", 0, parent_uuid="GPU-h100", mig_profile="3g.40gb", mig_slices=3),
        GpuInfo("MIG-bbbb", f"{H100} MIG 1g.10gb", 2, parent_uuid="GPU-h100", mig_profile="1g.10gb", mig_slices=1),
    ]


def test_without_a_profile_in_the_name_it_is_rebuilt_from_the_attributes(monkeypatch, clock) -> None:
    migs = [FakeMig(b"MIG-cccc", H100.encode(), 2, attrs(2, 1, 19_968))]  # one CI of a 2g GI
    FakeMigNvml(monkeypatch, [FakeMigGpu(uuid="GPU-h100", migs=migs)])
    [info] = NvmlBackend(clock).mig_instances("GPU-h100")
    assert (info.uuid, info.mig_profile, info.mig_slices) == ("MIG-cccc", "1c.2g.20gb", 1)


def test_unreadable_attributes_leave_profile_from_name_and_no_slices(monkeypatch, clock) -> None:
    migs = [FakeMig("MIG-dddd", f"{H100} MIG 1g.10gb+me", 3, pynvml.NVMLError_NotSupported())]
    FakeMigNvml(monkeypatch, [FakeMigGpu(uuid="GPU-h100", migs=migs)])
    [info] = NvmlBackend(clock).mig_instances("GPU-h100")
    assert (info.mig_profile, info.mig_slices) == ("1g.10gb+me", None)


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "1g.5gb"),
        ("NVIDIA A100-PCIE-40GB MIG 3G.20GB", "3g.20gb"),
        ("NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb", "1c.3g.40gb"),
        ("NVIDIA H100 80GB HBM3", None),
    ],
)
def test_profile_from_name(name, profile) -> None:
    assert profile_from_name(name) == profile


@pytest.mark.parametrize(
    ("gi", "ci", "memory_mb", "board_mib", "profile"),
    [
        (1, 1, 4_864, 40_960, "1g.5gb"),  # A100 40GB: 4.75 GiB is "5gb"
        (3, 3, 19_968, 40_960, "3g.20gb"),
        (3, 3, 40_192, 81_559, "3g.40gb"),  # H100 80GB: 39.25 GiB is "40gb", not 39
        (7, 7, 80_896, 81_559, "7g.80gb"),
        (3, 1, 40_192, 81_559, "1c.3g.40gb"),
        (0, 0, 0, 81_559, None),
    ],
)
def test_profile_from_attributes_follows_nvidias_naming(gi, ci, memory_mb, board_mib, profile) -> None:
    assert profile_from_attributes(gi, ci, memory_mb, board_mib * 2**20) == profile


@pytest.mark.parametrize(
    "mig_mode",
    [(pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE), pynvml.NVMLError_NotSupported()],
)
def test_a_gpu_without_mig_has_no_instances_and_no_activity(monkeypatch, clock, mig_mode) -> None:
    # MIG pending but not yet active, or a pre-Ampere GPU that has no MIG at all
    FakeMigNvml(monkeypatch, [FakeMigGpu(uuid="GPU-h100", mig_mode=mig_mode, migs=two_instances())])
    backend = NvmlBackend(clock)
    assert backend.mig_instances("GPU-h100") == []
    backend.read("GPU-h100")
    clock.advance(1.0)
    assert backend.read("GPU-h100").mig == ()


def test_a_plain_gpu_has_no_instances(monkeypatch, clock) -> None:
    FakeNvml(monkeypatch, [FakeGpu()])
    backend = NvmlBackend(clock)
    assert backend.mig_instances("GPU-aaaa") == []
    assert backend.read("GPU-aaaa").mig == ()


def test_a_lost_parent_raises_from_mig_instances(monkeypatch, clock) -> None:
    FakeMigNvml(monkeypatch, [FakeMigGpu(uuid="GPU-h100", mig_mode=pynvml.NVMLError_GpuIsLost())])
    with pytest.raises(GpuLost):
        NvmlBackend(clock).mig_instances("GPU-h100")


# GPM activity


def test_activity_is_sm_util_between_the_previous_and_the_current_sample(monkeypatch, clock) -> None:
    gpu = FakeMigGpu(uuid="GPU-h100", migs=two_instances(), gpm_counters={1: 0.0, 9: 0.0})
    fake = FakeMigNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    assert backend.read("GPU-h100").mig == ()  # the first sample has nothing to compare with
    clock.advance(1.0)
    gpu.gpm_counters = {1: 62.5, 9: 10.0}
    assert backend.read("GPU-h100").mig == (MigActivity("MIG-aaaa", 62.5), MigActivity("MIG-bbbb", 10.0))
    # Within 100 ms NVML cannot tell: nothing now, and the older sample is kept for next time.
    clock.advance(0.05)
    gpu.gpm_counters = {1: 70.0, 9: 11.0}
    assert backend.read("GPU-h100").mig == ()
    clock.advance(1.0)
    gpu.gpm_counters = {1: 100.0, 9: 15.0}
    assert backend.read("GPU-h100").mig == (MigActivity("MIG-aaaa", 37.5), MigActivity("MIG-bbbb", 5.0))
    assert len(fake.live) == 4  # two buffers per GPU instance, reused
    backend.close()
    assert fake.live == {}
    assert fake.shutdowns == 1


def test_compute_instances_of_one_gpu_instance_share_its_activity(monkeypatch, clock) -> None:
    migs = [FakeMig("MIG-c1", f"{H100} MIG 1c.3g.40gb", 2, attrs(3, 1, 40_192)),
            FakeMig("MIG-c2", f"{H100} MIG 2c.3g.40gb", 2, attrs(3, 2, 40_192))]
    gpu = FakeMigGpu(uuid="GPU-h100", migs=migs, gpm_counters={2: 0.0})
    FakeMigNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    backend.read("GPU-h100")
    clock.advance(1.0)
    gpu.gpm_counters = {2: 40.0}
    assert backend.read("GPU-h100").mig == (MigActivity("MIG-c1", 40.0), MigActivity("MIG-c2", 40.0))
    assert [i.mig_slices for i in backend.mig_instances("GPU-h100")] == [1, 2]


def test_a_destroyed_or_recreated_instance_frees_its_samples_and_starts_over(monkeypatch, clock) -> None:
    gpu = FakeMigGpu(uuid="GPU-h100", migs=two_instances(), gpm_counters={1: 0.0, 9: 0.0})
    fake = FakeMigNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    backend.read("GPU-h100")
    gpu.migs = [gpu.migs[0], None, FakeMig("MIG-new", f"{H100} MIG 1g.10gb", 9, attrs(1, 1, 9_856))]
    clock.advance(1.0)
    gpu.gpm_counters = {1: 20.0, 9: 50.0}
    assert backend.read("GPU-h100").mig == (MigActivity("MIG-aaaa", 20.0),)  # GI 9 re-baselines
    gpu.migs = [gpu.migs[0]]
    clock.advance(1.0)
    gpu.gpm_counters = {1: 30.0}
    assert backend.read("GPU-h100").mig == (MigActivity("MIG-aaaa", 10.0),)
    assert len(fake.live) == 2


def test_gpm_unsupported_gives_no_activity_and_allocates_nothing(monkeypatch, clock) -> None:
    gpu = FakeMigGpu(uuid="GPU-a100", migs=two_instances(), gpm_support=SimpleNamespace(isSupportedDevice=0))
    fake = FakeMigNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    for _ in range(2):
        assert backend.read("GPU-a100").mig == ()
        clock.advance(1.0)
    assert fake.live == {}


@pytest.mark.parametrize(
    "break_it",
    [
        lambda gpu, fake: setattr(gpu, "gpm_support", pynvml.NVMLError_NotSupported()),
        lambda gpu, fake: setattr(gpu, "gpm_support", pynvml.NVMLError_FunctionNotFound()),
        lambda gpu, fake: setattr(gpu, "gpm_counters", {1: pynvml.NVMLError_Unknown(), 9: 1.0}),
        lambda gpu, fake: setattr(fake, "metrics_error", pynvml.NVMLError_Unknown()),
        lambda gpu, fake: setattr(fake, "metric_status", pynvml.NVML_ERROR_NOT_SUPPORTED),
        lambda gpu, fake: setattr(gpu, "mig_mode", pynvml.NVMLError_Unknown()),
    ],
)
def test_gpm_failures_degrade_to_no_activity_never_a_failed_read(monkeypatch, clock, break_it) -> None:
    gpu = FakeMigGpu(uuid="GPU-h100", migs=two_instances(), gpm_counters={1: 0.0, 9: 0.0})
    fake = FakeMigNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    break_it(gpu, fake)
    for _ in range(2):
        r = backend.read("GPU-h100")
        assert r.energy_mj == 1_000_000
        assert all(m.uuid != "MIG-aaaa" for m in r.mig)
        clock.advance(1.0)
    backend.close()
    assert fake.live == {}
