"""run_sampler: the drift-free schedule, periodic flush and ship, and surviving failures."""

from __future__ import annotations

import threading

import pytest

from accounting.clock import US_PER_S, FakeClock, SystemClock
from accounting.errors import GpuBackendUnavailable
from accounting.metering.loop import run_sampler
from accounting.metering.spool import Spool

from .test_sampler import T0_US, ScriptedBackend, assert_contiguous, energy_by_gpu, make_sampler


class SlowBackend(ScriptedBackend):
    """Every read takes `read_s` of (fake) time, and the start of each sample is recorded."""

    def __init__(self, clock, read_s=0.013, **kwargs):
        super().__init__(clock, **kwargs)
        self.read_s = read_s
        self.sample_starts_us: list[int] = []

    def gpus(self):
        self.sample_starts_us.append(self.clock.now_us())
        return super().gpus()

    def read(self, uuid):
        reading = super().read(uuid)
        self.advance(self.read_s)
        return reading


def stop_after(stop: threading.Event, ticks: int, seen: list[int]):
    def on_tick(readings: int) -> None:
        seen.append(readings)
        if len(seen) >= ticks:
            stop.set()

    return on_tick


def test_samples_on_a_drift_free_grid_and_flushes_periodically(tmp_path):
    backend = SlowBackend(FakeClock(T0_US))
    sampler = make_sampler(backend, tmp_path)
    sent, ticks, stop = [], [], threading.Event()
    run_sampler(
        sampler,
        send=sent.append,
        sample_interval_s=1.0,
        flush_interval_s=10.0,
        stop=stop,
        sleep=backend.advance,
        on_tick=stop_after(stop, 35, ticks),
    )
    # Reads take 26 ms per tick, yet every sample starts exactly on the 1 s grid.
    assert backend.sample_starts_us == [T0_US + k * US_PER_S for k in range(35)]
    assert ticks == [2] * 35
    # Flushes at 10, 20 and 30 s, and a last one on stop; all shipped, none left behind.
    assert [b["seq"] for b in sent] == [1, 2, 3, 4]
    assert [b["created_us"] - T0_US for b in sent[:3]] == [10_026_000, 20_026_000, 30_026_000]
    assert Spool(tmp_path).depth() == 0
    intervals = [iv for b in sent for iv in b["intervals"]]
    assert len(intervals) == 2 * 34
    assert_contiguous(intervals)


def test_a_stalled_tick_skips_missed_slots_instead_of_bursting(tmp_path):
    backend = SlowBackend(FakeClock(T0_US), read_s=0.0)
    sampler = make_sampler(backend, tmp_path)
    stop, ticks = threading.Event(), []

    def on_tick(readings):
        ticks.append(readings)
        if len(ticks) == 3:
            backend.advance(3.5)  # e.g. the host was suspended
        if len(ticks) == 6:
            stop.set()

    run_sampler(
        sampler,
        send=lambda b: None,
        sample_interval_s=1.0,
        flush_interval_s=60.0,
        stop=stop,
        sleep=backend.advance,
        on_tick=on_tick,
    )
    starts_s = [(t - T0_US) / US_PER_S for t in backend.sample_starts_us]
    assert starts_s == [0, 1, 2, 6, 7, 8]


def test_ships_what_an_earlier_run_left_first(tmp_path):
    backend = ScriptedBackend(FakeClock(T0_US))
    earlier = make_sampler(backend, tmp_path)
    earlier.sample()
    backend.advance(1.0)
    earlier.sample()
    earlier.flush()  # never shipped: the broker was down when that process ended
    sampler = make_sampler(backend, tmp_path)
    sent, stop = [], threading.Event()
    run_sampler(
        sampler,
        send=sent.append,
        sample_interval_s=1.0,
        flush_interval_s=5.0,
        stop=stop,
        sleep=backend.advance,
        on_tick=stop_after(stop, 3, []),
    )
    assert [b["seq"] for b in sent] == [1, 2]
    assert sent[0]["created_us"] == T0_US + US_PER_S


def test_survives_a_broker_outage_and_a_backend_outage(tmp_path):
    backend = ScriptedBackend(FakeClock(T0_US))
    sampler = make_sampler(backend, tmp_path)
    sent, stop, ticks = [], threading.Event(), []

    def send(batch):
        if backend.clock.now_us() < T0_US + 40 * US_PER_S:
            raise ConnectionError("broker unreachable")
        sent.append(batch)

    def on_tick(readings):
        ticks.append(readings)
        n = len(ticks)
        backend.list_error = GpuBackendUnavailable("driver reload") if 12 <= n < 15 else None
        if n == 45:
            stop.set()

    run_sampler(
        sampler,
        send=send,
        sample_interval_s=1.0,
        flush_interval_s=5.0,
        stop=stop,
        sleep=backend.advance,
        on_tick=on_tick,
    )
    assert len(ticks) == 45 and ticks[12:15] == [0, 0, 0]
    assert [b["seq"] for b in sent] == list(range(1, 10))
    assert Spool(tmp_path).depth() == 0
    intervals = [iv for b in sent for iv in b["intervals"]]
    assert_contiguous(intervals)
    assert energy_by_gpu(intervals) == backend.true_mj
    assert [e["kind"] for b in sent for e in b["events"]] == ["read-error"]


def test_an_unexpected_error_in_a_tick_is_logged_not_fatal(tmp_path, caplog):
    backend = ScriptedBackend(FakeClock(T0_US))
    sampler = make_sampler(backend, tmp_path)
    calls = []
    real_sample = sampler.sample

    def flaky_sample():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("bug in a backend")
        return real_sample()

    sampler.sample = flaky_sample
    stop, ticks = threading.Event(), []
    run_sampler(
        sampler,
        send=lambda b: None,
        sample_interval_s=1.0,
        flush_interval_s=5.0,
        stop=stop,
        sleep=backend.advance,
        on_tick=stop_after(stop, 4, ticks),
    )
    assert ticks == [2, 0, 2, 2]
    assert "bug in a backend" in caplog.text


@pytest.mark.parametrize("sample_s, flush_s", [(0, 10), (1, 0), (-1, 10)])
def test_intervals_must_be_positive(tmp_path, sample_s, flush_s):
    sampler = make_sampler(ScriptedBackend(FakeClock(T0_US)), tmp_path)
    with pytest.raises(ValueError):
        run_sampler(
            sampler,
            send=lambda b: None,
            sample_interval_s=sample_s,
            flush_interval_s=flush_s,
            stop=threading.Event(),
        )


def test_real_time_loop_stops_promptly_and_flushes(tmp_path):
    clock = SystemClock()
    backend = ScriptedBackend(FakeClock(clock.now_us()))  # readings need strictly rising times
    sampler = make_sampler(backend, tmp_path)
    sampler.clock = clock
    sent, stop = [], threading.Event()

    def on_tick(readings):
        backend.advance(0.01)

    thread = threading.Thread(
        target=run_sampler,
        args=(sampler,),
        kwargs=dict(
            send=sent.append,
            sample_interval_s=0.01,
            flush_interval_s=0.05,
            stop=stop,
            on_tick=on_tick,
        ),
    )
    thread.start()
    threading.Timer(0.3, stop.set).start()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(sent) >= 2
    assert Spool(tmp_path).depth() == 0
