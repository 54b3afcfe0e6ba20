"""Device-level GPM activity (SM, tensor, DRAM bandwidth) of the NVML backend, against a patched
`pynvml` (the fakes of test_nvml_mig, whose device samples capture one counter per metric id)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from accounting.clock import FakeClock, SystemClock
from accounting.gpu.backend import GpuReading, MigActivity
from accounting.gpu.nvml import NvmlBackend
from accounting.gpu.specs import match_spec
from tests.gpu.test_nvml import T0_US
from tests.gpu.test_nvml_mig import FakeMigGpu, FakeMigNvml, two_instances

SM, TENSOR, DRAM = (pynvml.NVML_GPM_METRIC_SM_UTIL, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
                    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL)  # fmt: skip
MIG_OFF = (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_DISABLE)


def counters(sm: float, tensor: float, dram: float) -> dict[int, float]:
    return {SM: sm, TENSOR: tensor, DRAM: dram}


def h100(uuid: str = "GPU-h100", **kwargs: Any) -> FakeMigGpu:
    """A plain H100 (MIG off) whose GPM answers, starting from zero counters."""
    kwargs.setdefault("device_gpm", counters(0.0, 0.0, 0.0))
    return FakeMigGpu(uuid=uuid, mig_mode=MIG_OFF, **kwargs)


class FakeGpmNvml(FakeMigNvml):
    """Counts allocations and checks that no buffer is freed after nvmlShutdown."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: list[Any]) -> None:
        super().__init__(monkeypatch, gpus)
        self.allocs = 0

    def _alloc(self) -> Any:
        self.allocs += 1
        return super()._alloc()

    def _free(self, sample: Any) -> None:
        assert self.shutdowns == 0, "a GPM buffer freed after nvmlShutdown"
        super()._free(sample)


def gpm(r: GpuReading) -> tuple[float | None, float | None, float | None]:
    return r.sm_active_pct, r.tensor_active_pct, r.dram_bw_pct


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0_US)


def test_activity_is_the_metrics_between_the_previous_and_the_current_sample(monkeypatch, clock) -> None:
    gpu = h100()
    fake = FakeGpmNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    assert gpm(backend.read("GPU-h100")) == (None, None, None)  # the first sample: nothing to compare
    clock.advance(1.0)
    gpu.device_gpm = counters(95.0, 47.0, 40.0)
    assert gpm(backend.read("GPU-h100")) == (95.0, 47.0, 40.0)
    assert fake.device_requests == [[SM, TENSOR, DRAM]]
    # Within 100 ms NVML cannot tell: none this time, and the older sample is kept for next time.
    clock.advance(0.05)
    gpu.device_gpm = counters(190.0, 94.0, 80.0)
    assert gpm(backend.read("GPU-h100")) == (None, None, None)
    clock.advance(1.0)
    gpu.device_gpm = counters(192.0, 94.5, 81.0)
    assert gpm(backend.read("GPU-h100")) == (97.0, 47.5, 41.0)  # since the sample of the 2nd read
    assert len(fake.live) == 2 and fake.allocs == 2  # two buffers per GPU, reused
    backend.close()
    assert fake.live == {} and fake.shutdowns == 1


def test_values_are_clipped_and_a_metric_nvml_could_not_compute_is_none(monkeypatch, clock) -> None:
    gpu = h100()
    fake = FakeGpmNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    backend.read("GPU-h100")
    clock.advance(1.0)
    gpu.device_gpm = counters(104.0, 30.0, -3.0)
    fake.device_status = {TENSOR: pynvml.NVML_ERROR_NOT_SUPPORTED}
    assert gpm(backend.read("GPU-h100")) == (100.0, None, 0.0)
    clock.advance(1.0)
    gpu.device_gpm = counters(math.nan, 60.0, 37.0)
    fake.device_status = {}
    assert gpm(backend.read("GPU-h100")) == (None, 30.0, 40.0)


@pytest.mark.parametrize(
    "support",
    [SimpleNamespace(isSupportedDevice=0), pynvml.NVMLError_NotSupported(), pynvml.NVMLError_FunctionNotFound()],
)
def test_a_gpu_without_gpm_reads_none_and_allocates_nothing(monkeypatch, clock, support) -> None:
    fake = FakeGpmNvml(monkeypatch, [h100(uuid="GPU-a100", gpm_support=support)])
    backend = NvmlBackend(clock)
    for _ in range(3):
        r = backend.read("GPU-a100")
        assert gpm(r) == (None, None, None) and r.energy_mj == 1_000_000
        clock.advance(1.0)
    assert fake.allocs == 0


def test_a_refused_device_sample_turns_device_gpm_off_for_that_gpu(monkeypatch, clock) -> None:
    fake = FakeGpmNvml(monkeypatch, [h100(device_gpm=pynvml.NVMLError_NotSupported())])
    backend = NvmlBackend(clock)
    for _ in range(3):
        assert gpm(backend.read("GPU-h100")) == (None, None, None)
        clock.advance(1.0)
    assert fake.allocs == 2 and fake.live == {}  # tried once, freed, not tried again


@pytest.mark.parametrize(
    "break_it",
    [
        lambda gpu, fake: setattr(gpu, "device_gpm", pynvml.NVMLError_Unknown()),
        lambda gpu, fake: setattr(fake, "metrics_error", pynvml.NVMLError_Unknown()),
        lambda gpu, fake: setattr(gpu, "gpm_support", pynvml.NVMLError_Unknown()),
    ],
)
def test_passing_failures_read_none_never_a_failed_read_and_recover(monkeypatch, clock, break_it) -> None:
    gpu = h100(gpm_support=SimpleNamespace(isSupportedDevice=1))
    fake = FakeGpmNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    saved = (gpu.device_gpm, gpu.gpm_support, fake.metrics_error)
    break_it(gpu, fake)
    for _ in range(2):
        r = backend.read("GPU-h100")
        assert gpm(r) == (None, None, None) and r.energy_mj == 1_000_000 and r.power_mw == 350_000
        assert len(fake.live) <= 2
        clock.advance(1.0)
    gpu.device_gpm, gpu.gpm_support, fake.metrics_error = saved
    gpu.device_gpm = counters(10.0, 5.0, 1.0)
    backend.read("GPU-h100")
    clock.advance(1.0)
    gpu.device_gpm = counters(60.0, 25.0, 11.0)
    assert gpm(backend.read("GPU-h100")) == (50.0, 20.0, 10.0)
    backend.close()
    assert fake.live == {}


def test_each_gpu_pairs_its_own_samples(monkeypatch, clock) -> None:
    a, b = h100("GPU-a"), h100("GPU-b")
    fake = FakeGpmNvml(monkeypatch, [a, b])
    backend = NvmlBackend(clock)
    backend.read("GPU-a")
    backend.read("GPU-b")
    clock.advance(1.0)
    a.device_gpm, b.device_gpm = counters(90.0, 40.0, 35.0), counters(2.0, 0.0, 0.5)
    assert gpm(backend.read("GPU-b")) == (2.0, 0.0, 0.5)
    assert gpm(backend.read("GPU-a")) == (90.0, 40.0, 35.0)
    assert len(fake.live) == 4
    backend.close()
    assert fake.live == {}


def test_a_mig_parent_reports_device_and_instance_activity_side_by_side(monkeypatch, clock) -> None:
    gpu = FakeMigGpu(uuid="GPU-h100", migs=two_instances(), gpm_counters={1: 0.0, 9: 0.0},
                     device_gpm=counters(0.0, 0.0, 0.0))  # fmt: skip
    fake = FakeGpmNvml(monkeypatch, [gpu])
    backend = NvmlBackend(clock)
    backend.read("GPU-h100")
    clock.advance(1.0)
    gpu.gpm_counters, gpu.device_gpm = {1: 70.0, 9: 7.0}, counters(31.0, 20.0, 15.0)
    r = backend.read("GPU-h100")
    assert r.mig == (MigActivity("MIG-aaaa", 70.0), MigActivity("MIG-bbbb", 7.0))
    assert gpm(r) == (31.0, 20.0, 15.0)
    assert len(fake.live) == 6  # two per GPU instance, two for the device
    backend.close()
    assert fake.live == {}


@pytest.mark.gpu
def test_real_gpus_report_gpm_on_hopper_and_newer_only() -> None:
    backend = NvmlBackend(SystemClock())
    try:
        for g in backend.gpus():
            backend.read(g.uuid)
        time.sleep(0.5)
        for g in backend.gpus():
            values = gpm(backend.read(g.uuid))
            spec = match_spec(g.name)
            if backend.mig_instances(g.uuid):
                continue  # whether a MIG parent answers device-level GPM is the driver's choice
            if spec is not None and spec.has_gpm:
                assert all(v is not None and 0 <= v <= 100 for v in values), (g.name, values)
            elif spec is not None:
                assert values == (None, None, None), (g.name, values)
    finally:
        backend.close()
