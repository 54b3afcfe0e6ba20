"""The sampler: contiguous intervals, events, batches, restarts and broker outages."""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.clock import FakeClock
from accounting.errors import GpuBackendUnavailable, GpuLost, GpuNoPermission
from accounting.gpu.backend import GpuInfo, GpuProcess, GpuReading
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool

T0_US = 1_750_000_000_000_000
H100 = "NVIDIA H100 80GB HBM3"


class ScriptedBackend:
    """A node of GPUs drawing a scripted power; each energy counter integrates it exactly.

    `true_mj` keeps counting through resets and outages: it is what the sampler must account.
    """

    kind = "simulated"

    def __init__(self, clock: FakeClock, n: int = 2, *, counters: bool = True) -> None:
        self.clock = clock
        self.infos = [GpuInfo(f"GPU-{i}", H100, i) for i in range(n)]
        self.power_mw = {g.uuid: 100_000 + 50_000 * g.index for g in self.infos}
        self.counter_mj: dict[str, int | None] = {
            g.uuid: (1_000_000 if counters else None) for g in self.infos
        }
        self.true_mj = {g.uuid: 0 for g in self.infos}
        self.failures: dict[str, Exception] = {}  # uuid → raised by read()
        self.hidden: set[str] = set()  # not listed by gpus()
        self.list_error: Exception | None = None
        self.no_power: set[str] = set()  # power sensor reads as unsupported
        self.frozen_us: int | None = None  # timestamp override (a clock that went back)

    def advance(self, seconds: float) -> None:
        before_us = self.clock.now_us()
        dt_us = self.clock.advance(seconds) - before_us
        for uuid, power_mw in self.power_mw.items():
            energy_mj = power_mw * dt_us // 1_000_000
            self.true_mj[uuid] += energy_mj
            if self.counter_mj[uuid] is not None:
                self.counter_mj[uuid] += energy_mj

    def reset(self, uuid: str) -> None:
        self.counter_mj[uuid] = 0

    def gpus(self) -> list[GpuInfo]:
        if self.list_error is not None:
            raise self.list_error
        return [g for g in self.infos if g.uuid not in self.hidden]

    def read(self, uuid: str) -> GpuReading:
        if uuid in self.failures:
            raise self.failures[uuid]
        index = int(uuid.split("-")[1])
        return GpuReading(
            uuid=uuid,
            timestamp_us=self.frozen_us or self.clock.now_us(),
            energy_mj=self.counter_mj[uuid],
            power_mw=None if uuid in self.no_power else self.power_mw[uuid],
            gpu_util_pct=90 + index,
            memory_util_pct=40,
            memory_used_bytes=2**30 * (index + 1),
            sm_clock_mhz=1980,
            processes=(GpuProcess(4000 + index, 2**30), GpuProcess(5000 + index)),
        )

    def close(self) -> None:
        pass


@pytest.fixture
def clock():
    return FakeClock(T0_US)


@pytest.fixture
def backend(clock):
    return ScriptedBackend(clock)


def make_sampler(backend, spool_path, node="node-1"):
    return Sampler(backend=backend, spool=Spool(spool_path), clock=backend.clock, node=node)


def run(sampler, backend, samples: int, step_s: float = 1.0) -> None:
    for _ in range(samples):
        backend.advance(step_s)
        sampler.sample()


def spooled(spool_path) -> list[dict]:
    spool = Spool(spool_path)
    return [spool.load(seq) for seq in spool.pending()]


def intervals_of(batches) -> list[dict]:
    return [iv for b in batches for iv in b["intervals"]]


def assert_contiguous(intervals) -> dict[str, list[dict]]:
    by_gpu = defaultdict(list)
    for iv in intervals:
        by_gpu[iv["uuid"]].append(iv)
    for ivs in by_gpu.values():
        for a, b in zip(ivs, ivs[1:], strict=False):
            assert b["start_us"] == a["end_us"], (a, b)
        assert all(iv["start_us"] < iv["end_us"] for iv in ivs)
    return by_gpu


def energy_by_gpu(intervals) -> dict[str, int]:
    totals = defaultdict(int)
    for iv in intervals:
        totals[iv["uuid"]] += iv["energy_mj"]
    return dict(totals)


def test_first_reading_is_a_baseline_then_counter_intervals(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    assert sampler.sample() == 2
    assert sampler.flush() is None  # baselines only: nothing to send
    assert Spool(tmp_path).depth() == 0
    run(sampler, backend, 3)
    batch = sampler.flush()
    assert batch is not None and batch["seq"] == 1
    by_gpu = assert_contiguous(batch["intervals"])
    assert [iv["start_us"] for iv in by_gpu["GPU-0"]] == [
        T0_US,
        T0_US + 1_000_000,
        T0_US + 2_000_000,
    ]
    assert {iv["energy_mj"] for iv in by_gpu["GPU-0"]} == {100_000}  # 100 W × 1 s
    assert {iv["energy_mj"] for iv in by_gpu["GPU-1"]} == {150_000}
    assert {iv["method"] for iv in batch["intervals"]} == {"counter"}
    assert energy_by_gpu(batch["intervals"]) == backend.true_mj


def test_batch_format_is_exactly_what_ingest_expects(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 1)
    backend.advance(0.5)
    batch = sampler.flush()
    assert set(batch) == {
        "version",
        "node",
        "seq",
        "created_us",
        "gpus",
        "intervals",
        "events",
        "state_after",
    }
    assert (batch["version"], batch["node"], batch["seq"]) == (1, "node-1", 1)
    assert batch["created_us"] == T0_US + 1_500_000
    assert batch["gpus"] == [
        {"uuid": "GPU-0", "name": H100, "index": 0},
        {"uuid": "GPU-1", "name": H100, "index": 1},
    ]
    assert batch["events"] == []
    assert batch["intervals"][1] == {
        "uuid": "GPU-1",
        "start_us": T0_US,
        "end_us": T0_US + 1_000_000,
        "energy_mj": 150_000,
        "method": "counter",
        "power_mw": 150_000,
        "gpu_util_pct": 91,
        "memory_util_pct": 40,
        "memory_used_bytes": 2 * 2**30,
        "sm_clock_mhz": 1980,
        "sm_active_pct": None,
        "tensor_active_pct": None,
        "dram_bw_pct": None,
        "pids": [4001, 5001],
        "processes": [  # no resolver: nobody owns them; no per-process utilization reported
            {"pid": 4001, "sm_pct": None, "job_key": None, "user": None},
            {"pid": 5001, "sm_pct": None, "job_key": None, "user": None},
        ],
        "mig": [],
    }
    assert batch["state_after"]["next_seq"] == 2
    assert spooled(tmp_path) == [batch]  # what was spooled is what was returned


def test_counter_reset_gives_a_flagged_power_integral_and_no_negative_energy(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 2)
    backend.advance(2.0)
    backend.reset("GPU-0")
    sampler.sample()
    run(sampler, backend, 1)
    batch = sampler.flush()
    gpu0 = assert_contiguous(batch["intervals"])["GPU-0"]
    assert [iv["method"] for iv in gpu0] == ["counter", "counter", "power-integral", "counter"]
    assert gpu0[2]["energy_mj"] == 200_000  # 100 W × 2 s, integrated from power
    assert all(iv["energy_mj"] >= 0 for iv in batch["intervals"])
    assert [(e["uuid"], e["kind"], e["at_us"]) for e in batch["events"]] == [
        ("GPU-0", "counter-reset", T0_US + 4_000_000)
    ]
    assert {iv["method"] for iv in batch["intervals"] if iv["uuid"] == "GPU-1"} == {"counter"}


def test_pre_volta_gpus_are_integrated_from_power(clock, tmp_path):
    backend = ScriptedBackend(clock, counters=False)
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 3)
    backend.no_power.add("GPU-1")
    run(sampler, backend, 1)
    intervals = sampler.flush()["intervals"]
    assert {(iv["uuid"], iv["method"]) for iv in intervals} == {
        ("GPU-0", "power-integral"),
        ("GPU-1", "power-integral"),
    }
    gpu1 = [iv for iv in intervals if iv["uuid"] == "GPU-1"]
    # Last interval: the previous 150 W held, since the current reading has no power.
    assert [iv["energy_mj"] for iv in gpu1] == [150_000, 150_000, 150_000, 150_000]
    assert energy_by_gpu(intervals)["GPU-0"] == 400_000


def test_no_counter_and_no_power_is_a_visible_missing_interval(clock, tmp_path):
    backend = ScriptedBackend(clock, n=1, counters=False)
    backend.no_power.add("GPU-0")
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 1)
    (interval,) = sampler.flush()["intervals"]
    assert (interval["energy_mj"], interval["method"]) == (0, "missing")


@pytest.mark.parametrize("how", ["raises-gpu-lost", "unlisted"])
@pytest.mark.parametrize("reset_on_return", [False, True])
def test_a_lost_gpu_leaves_one_gap_interval_while_others_keep_going(
    clock, tmp_path, how, reset_on_return
):
    backend = ScriptedBackend(clock, n=3)
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 2)
    if how == "unlisted":
        backend.hidden.add("GPU-1")
    else:
        backend.failures["GPU-1"] = GpuLost("fell off the bus", uuid="GPU-1")
    lost_at_us = clock.now_us() + 1_000_000
    for _ in range(4):
        backend.advance(1.0)
        assert sampler.sample() == 2  # the others are still read
    backend.hidden.clear()
    backend.failures.clear()
    if reset_on_return:
        backend.reset("GPU-1")
    run(sampler, backend, 2)
    batch = sampler.flush()
    by_gpu = assert_contiguous(batch["intervals"])
    assert len(by_gpu["GPU-0"]) == len(by_gpu["GPU-2"]) == 8
    gap = by_gpu["GPU-1"][2]
    assert len(by_gpu["GPU-1"]) == 4
    assert (gap["start_us"], gap["end_us"]) == (T0_US + 2_000_000, T0_US + 7_000_000)
    if reset_on_return:
        assert (gap["method"], gap["energy_mj"]) == ("power-integral", 750_000)
    else:
        assert (gap["method"], gap["energy_mj"]) == ("counter", 750_000)
        assert energy_by_gpu(batch["intervals"]) == backend.true_mj
    kinds = [(e["uuid"], e["kind"]) for e in batch["events"]]
    expected = [("GPU-1", "gpu-lost"), ("GPU-1", "gpu-returned")]
    if reset_on_return:
        expected.append(("GPU-1", "counter-reset"))
    assert kinds == expected
    assert batch["events"][0]["at_us"] == lost_at_us
    assert "GPU-1" in {g["uuid"] for g in batch["gpus"]}


def test_read_errors_are_reported_once_per_failure_and_others_still_read(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    backend.failures["GPU-0"] = GpuNoPermission("no permission", uuid="GPU-0")
    for _ in range(3):
        backend.advance(1.0)
        assert sampler.sample() == 1
    backend.failures.clear()
    run(sampler, backend, 1)
    backend.failures["GPU-0"] = GpuNoPermission("no permission", uuid="GPU-0")
    run(sampler, backend, 1)
    batch = sampler.flush()
    assert [(e["uuid"], e["kind"]) for e in batch["events"]] == [("GPU-0", "read-error")] * 2
    assert "GpuNoPermission" in batch["events"][0]["detail"]
    gpu0 = assert_contiguous(batch["intervals"])["GPU-0"]
    assert [(iv["start_us"] - T0_US, iv["end_us"] - T0_US) for iv in gpu0] == [(0, 4_000_000)]


def test_backend_failure_is_an_event_and_the_next_interval_covers_it(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    backend.list_error = GpuBackendUnavailable("driver not loaded")
    run(sampler, backend, 3)
    assert sampler.sample() == 0
    backend.list_error = None
    run(sampler, backend, 1)
    batch = sampler.flush()
    assert [(e["uuid"], e["kind"]) for e in batch["events"]] == [(None, "read-error")]
    assert energy_by_gpu(batch["intervals"]) == backend.true_mj
    assert len(batch["intervals"]) == 2


def test_a_reading_that_is_not_newer_is_skipped_not_fatal(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 1)
    backend.frozen_us = T0_US + 500_000  # the backend's clock stepped back
    run(sampler, backend, 2)
    backend.frozen_us = None
    run(sampler, backend, 1)
    batch = sampler.flush()
    assert [e["kind"] for e in batch["events"]] == ["read-error"] * 2  # once per GPU
    assert_contiguous(batch["intervals"])
    assert energy_by_gpu(batch["intervals"]) == backend.true_mj


def test_restart_continues_seq_and_baseline_with_no_gap(backend, tmp_path):
    first = make_sampler(backend, tmp_path)
    first.sample()
    run(first, backend, 3)
    first.flush()
    backend.advance(30.0)  # the sampler is down for 30 s
    second = make_sampler(backend, tmp_path)
    assert second.next_seq == 2
    assert second.baseline("GPU-0") == first.baseline("GPU-0")
    run(second, backend, 2)
    second.flush()
    batches = spooled(tmp_path)
    assert [b["seq"] for b in batches] == [1, 2]
    intervals = intervals_of(batches)
    by_gpu = assert_contiguous(intervals)
    assert by_gpu["GPU-0"][3]["end_us"] - by_gpu["GPU-0"][3]["start_us"] == 31_000_000
    assert energy_by_gpu(intervals) == backend.true_mj  # the downtime is in the counter delta


def test_first_baselines_are_saved_even_without_a_batch(backend, tmp_path):
    first = make_sampler(backend, tmp_path)
    first.sample()
    assert first.flush() is None
    assert Spool(tmp_path).read_state()["readings"]["GPU-0"]["timestamp_us"] == T0_US
    run(first, backend, 3)  # then the process dies before its first batch
    second = make_sampler(backend, tmp_path)
    assert second.next_seq == 1
    run(second, backend, 1)
    batch = second.flush()
    assert batch["seq"] == 1
    assert [iv["start_us"] for iv in batch["intervals"]] == [T0_US, T0_US]
    assert energy_by_gpu(batch["intervals"]) == backend.true_mj


def test_crash_before_flush_loses_no_energy(backend, tmp_path):
    first = make_sampler(backend, tmp_path)
    first.sample()
    run(first, backend, 2)
    first.flush()
    run(first, backend, 5)  # sampled, never flushed: the process dies here
    second = make_sampler(backend, tmp_path)
    run(second, backend, 1)
    second.flush()
    intervals = intervals_of(spooled(tmp_path))
    assert_contiguous(intervals)
    assert energy_by_gpu(intervals) == backend.true_mj


@pytest.mark.parametrize("state_json", ["rolled-back", "deleted", "corrupt"])
def test_crash_between_batch_and_state_json(backend, tmp_path, state_json):
    first = make_sampler(backend, tmp_path)
    first.sample()
    run(first, backend, 2)
    first.flush()
    old_state = (tmp_path / "state.json").read_bytes()
    run(first, backend, 2)
    first.flush()  # batch 2 is on disk; now pretend state.json was never updated
    if state_json == "rolled-back":
        (tmp_path / "state.json").write_bytes(old_state)
    elif state_json == "deleted":
        (tmp_path / "state.json").unlink()
    else:
        (tmp_path / "state.json").write_bytes(old_state[:20])
    second = make_sampler(backend, tmp_path)
    assert second.next_seq == 3
    assert second.baseline("GPU-1") == first.baseline("GPU-1")
    assert Spool(tmp_path).read_state()["next_seq"] == 3  # caught up at once
    # Ship everything, then crash again: the spool no longer holds batch 2's state_after.
    sent = []
    assert second.ship(sent.append) == 2
    third = make_sampler(backend, tmp_path)
    run(third, backend, 1)
    third.flush()
    third.ship(sent.append)
    assert [b["seq"] for b in sent] == [1, 2, 3]
    intervals = intervals_of(sent)
    assert_contiguous(intervals)
    assert energy_by_gpu(intervals) == backend.true_mj  # nothing lost, nothing twice


def test_broker_down_spools_then_drains_in_order(backend, tmp_path, caplog):
    sampler = make_sampler(backend, tmp_path)
    sent: list[dict] = []
    broker_up = False

    def send(batch):
        if not broker_up:
            raise ConnectionError("broker unreachable")
        sent.append(batch)

    sampler.sample()
    with caplog.at_level(logging.WARNING):
        for depth in range(1, 6):
            run(sampler, backend, 10)
            sampler.flush()
            assert sampler.ship(send) == 0
            assert Spool(tmp_path).depth() == depth
    assert any("broker unreachable" in r.getMessage() for r in caplog.records)
    broker_up = True
    run(sampler, backend, 10)
    sampler.flush()
    assert sampler.ship(send) == 6
    assert sampler.ship(send) == 0
    assert Spool(tmp_path).depth() == 0
    assert [b["seq"] for b in sent] == [1, 2, 3, 4, 5, 6]
    intervals = intervals_of(sent)
    assert len(intervals) == 2 * 60
    assert_contiguous(intervals)
    assert energy_by_gpu(intervals) == backend.true_mj


def test_ship_stops_at_the_first_failure_and_keeps_the_rest(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    for _ in range(3):
        run(sampler, backend, 1)
        sampler.flush()
    attempts = []

    def send(batch):
        attempts.append(batch["seq"])
        if batch["seq"] == 2:
            raise TimeoutError("slow broker")

    assert sampler.ship(send) == 1
    assert attempts == [1, 2]
    assert Spool(tmp_path).pending() == [2, 3]


def test_a_corrupt_spooled_batch_is_quarantined_and_the_rest_shipped(backend, tmp_path):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    for _ in range(3):
        run(sampler, backend, 1)
        sampler.flush()
    (tmp_path / "batch-000000000002.json").write_text('{"seq": 2, "interv')
    sent = []
    assert sampler.ship(sent.append) == 2
    assert [b["seq"] for b in sent] == [1, 3]
    assert (tmp_path / "corrupt" / "batch-000000000002.json").exists()


def test_unsaved_state_blocks_shipping_until_it_is_saved(backend, tmp_path, monkeypatch):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 1)

    def disk_full(state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sampler.spool, "write_state", disk_full)
    assert sampler.flush()["seq"] == 1  # the batch itself made it
    sent = []
    assert sampler.ship(sent.append) == 0  # removing it now could roll the state back
    assert sent == [] and Spool(tmp_path).pending() == [1]
    monkeypatch.undo()
    assert sampler.ship(sent.append) == 1
    assert Spool(tmp_path).read_state()["next_seq"] == 2


def test_a_failed_batch_write_keeps_the_intervals_for_the_next_flush(
    backend, tmp_path, monkeypatch
):
    sampler = make_sampler(backend, tmp_path)
    sampler.sample()
    run(sampler, backend, 2)

    def disk_full(batch):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sampler.spool, "put", disk_full)
    with pytest.raises(OSError):
        sampler.flush()
    monkeypatch.undo()
    run(sampler, backend, 1)
    batch = sampler.flush()
    assert batch["seq"] == 1 and len(batch["intervals"]) == 6
    assert energy_by_gpu(batch["intervals"]) == backend.true_mj


# Properties: whatever the sequence of readings, resets, flushes, restarts and outages.

_run = st.tuples(
    st.just("run"), st.integers(1, 5_000_000), st.integers(0, 10**9), st.integers(0, 10**9)
)
_reset = st.tuples(
    st.just("reset"), st.integers(1, 5_000_000), st.integers(0, 1), st.floats(0, 0.99)
)
_flush = st.tuples(st.just("flush"))
_ship = st.tuples(st.just("ship"), st.booleans())


def _apply(step, backend: ScriptedBackend) -> bool:
    """Moves the fake node on for a `run` or `reset` step; True when it was one."""
    if step[0] == "run":
        _, dt_us, inc0, inc1 = step
        backend.clock.advance(dt_us / 1_000_000)
        backend.counter_mj["GPU-0"] += inc0
        backend.counter_mj["GPU-1"] += inc1
        return True
    if step[0] == "reset":
        _, dt_us, index, fraction = step
        backend.clock.advance(dt_us / 1_000_000)
        uuid = f"GPU-{index}"
        backend.counter_mj[uuid] = int(backend.counter_mj[uuid] * fraction)
        return True
    return False


def _everything(spool_path, sent) -> list[dict]:
    batches = sent + spooled(spool_path)
    assert [b["seq"] for b in batches] == list(range(1, len(batches) + 1))  # once each, in order
    return intervals_of(batches)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_run, _reset, _flush, _ship, st.tuples(st.just("restart"))), max_size=40))
def test_counter_intervals_sum_to_counter_increments(steps):
    with tempfile.TemporaryDirectory() as spool_path:
        backend = ScriptedBackend(FakeClock(T0_US))
        sampler = make_sampler(backend, spool_path)
        readings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        sent: list[dict] = []

        def sample():
            sampler.sample()
            for uuid, counter_mj in backend.counter_mj.items():
                readings[uuid].append((backend.clock.now_us(), counter_mj))

        def send_when(up):
            def send(batch):
                if not up:
                    raise ConnectionError("broker down")
                sent.append(batch)

            return send

        sample()
        for step in steps:
            if _apply(step, backend):
                sample()
            elif step[0] == "flush":
                sampler.flush()
            elif step[0] == "ship":
                sampler.ship(send_when(step[1]))
            else:  # a clean restart
                sampler.flush()
                sampler = make_sampler(backend, spool_path)
        sampler.flush()
        by_gpu = assert_contiguous(_everything(spool_path, sent))
        for uuid, seen in readings.items():
            pairs = list(zip(seen, seen[1:], strict=False))
            ivs = by_gpu.get(uuid, [])
            assert [(iv["start_us"], iv["end_us"]) for iv in ivs] == [
                (a[0], b[0]) for a, b in pairs
            ]
            increments_mj = sum(b[1] - a[1] for a, b in pairs if b[1] >= a[1])
            resets = sum(1 for a, b in pairs if b[1] < a[1])
            assert sum(iv["energy_mj"] for iv in ivs if iv["method"] == "counter") == increments_mj
            assert sum(1 for iv in ivs if iv["method"] == "power-integral") == resets
            assert all(iv["energy_mj"] >= 0 for iv in ivs)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(_run, _flush, st.sampled_from([("crash",), ("crash-mid-flush",)])), max_size=40
    )
)
def test_crashes_neither_lose_nor_double_count_energy(steps):
    with tempfile.TemporaryDirectory() as spool_path:
        backend = ScriptedBackend(FakeClock(T0_US))
        first_mj = dict(backend.counter_mj)
        state_file = Path(spool_path) / "state.json"
        sampler = make_sampler(backend, spool_path)
        sampler.sample()
        assert sampler.flush() is None  # saves the baselines: energy is counted from here
        for step in steps:
            if _apply(step, backend):
                sampler.sample()
            elif step[0] == "flush":
                sampler.flush()
            elif step[0] == "crash":  # whatever was sampled since the last flush is gone
                sampler = make_sampler(backend, spool_path)
            else:  # the batch reached the disk, state.json did not
                before = state_file.read_bytes() if state_file.exists() else None
                sampler.flush()
                if before is None:
                    state_file.unlink(missing_ok=True)
                else:
                    state_file.write_bytes(before)
                sampler = make_sampler(backend, spool_path)
        backend.clock.advance(1.0)
        sampler.sample()
        sampler.flush()
        intervals = _everything(spool_path, [])
        assert_contiguous(intervals)
        totals = energy_by_gpu(intervals)
        for uuid, counter_mj in backend.counter_mj.items():
            assert totals.get(uuid, 0) == counter_mj - first_mj[uuid]
