"""Per-process utilization covers the whole window since the previous read, as NVML's
nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp) does: a process that ran in the window
and exited before the read is still listed, with its mean over the window and no memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.clock import US_PER_S
from accounting.gpu.backend import GpuReading
from accounting.gpu.simulated import SimulatedFleet
from tests.gpu.test_shared import CHUNK_US, DYNAMIC_W, START_US, at, one_h100, steady

STEP = US_PER_S // 10  # the simulator's 100 ms


def by_pid(reading: GpuReading) -> dict[int, tuple[int | None, float | None]]:
    return {p.pid: (p.used_memory_bytes, p.sm_util_pct) for p in reading.processes}


def dynamic_j(fleet: SimulatedFleet, idle: SimulatedFleet, uuid: str, t0: int, t1: int) -> float:
    """The GPU's energy above idle: an unloaded fleet of the same seed draws the same baseline."""
    return fleet.true_energy_j(uuid, t0, t1) - idle.true_energy_j(uuid, t0, t1)


def assert_sm_util_is_the_dynamic_energy(reading: GpuReading, since_us: int, dynamic: float) -> None:
    dt = (reading.timestamp_us - since_us) / US_PER_S
    total_pct = sum(p.sm_util_pct for p in reading.processes)
    assert total_pct / 100 * DYNAMIC_W * dt == pytest.approx(dynamic, rel=1e-9, abs=1e-6)


def test_an_exited_process_is_reported_in_the_read_closing_its_window_then_gone() -> None:
    fleet, clock, uuid = one_h100(seed=5)
    idle, _, _ = one_h100(seed=5)
    fleet.assign(uuid, at(0), at(600), steady(0.4, pids=(11,)), tenant="a:1")
    fleet.assign(uuid, at(0), at(104), steady(0.6, pids=(12,)), tenant="b:1")
    clock.set(at(100))
    first = fleet.read(uuid)
    assert list(by_pid(first)) == [11, 12] and all(m and m > 0 for m, _ in by_pid(first).values())
    clock.set(at(110))
    closing = fleet.read(uuid)
    procs = by_pid(closing)
    assert list(procs) == [11, 12]
    assert procs[12][0] is None  # exited: no longer in the compute-process list
    assert procs[12][1] == pytest.approx(60 * 4 / 10, abs=0.2)  # 60 % for 4 s of the 10 s window
    assert procs[11][1] == pytest.approx(40, abs=0.2)
    assert procs[11][0] == closing.memory_used_bytes - 17 * 2**20  # all the memory above the driver's
    assert_sm_util_is_the_dynamic_energy(closing, at(100), dynamic_j(fleet, idle, uuid, at(100), at(110)))
    assert fleet.owner(12).job_key == "b:1"  # its pid still resolves to its job
    clock.set(at(111))
    nxt = by_pid(fleet.read(uuid))
    assert list(nxt) == [11] and nxt[11][1] == pytest.approx(40, abs=0.2)


def test_a_process_that_starts_and_exits_between_two_reads_is_reported_once() -> None:
    fleet, clock, uuid = one_h100(seed=6)
    idle, _, _ = one_h100(seed=6)
    fleet.assign(uuid, at(12), at(15), steady(0.5, pids=(21,)), tenant=None)
    fleet.assign(uuid, at(13), at(14.5), steady(0.3), tenant="c:1")  # a derived pid
    clock.set(at(10))
    assert fleet.read(uuid).processes == ()
    clock.set(at(20))
    reading = fleet.read(uuid)
    procs = by_pid(reading)
    assert len(procs) == 2 and all(memory is None for memory, _ in procs.values())
    assert procs[21][1] == pytest.approx(50 * 3 / 10, abs=0.2)
    derived = next(pid for pid in procs if pid != 21)
    assert procs[derived][1] == pytest.approx(30 * 1.5 / 10, abs=0.2)
    assert fleet.owner(derived).job_key == "c:1"
    assert_sm_util_is_the_dynamic_energy(reading, at(10), dynamic_j(fleet, idle, uuid, at(10), at(20)))
    clock.set(at(30))
    assert fleet.read(uuid).processes == ()


def test_the_first_read_covers_the_last_second_exits_included() -> None:
    fleet, clock, uuid = one_h100()
    fleet.assign(uuid, at(0), at(99.5), steady(0.8, pids=(31,)), tenant="a:1")
    fleet.assign(uuid, at(0), at(98), steady(0.8, pids=(32,)), tenant="b:1")  # before the last second
    clock.set(at(100))
    ((pid, memory, pct),) = [(p.pid, p.used_memory_bytes, p.sm_util_pct) for p in fleet.read(uuid).processes]
    assert (pid, memory) == (31, None) and pct == pytest.approx(80 / 2, abs=0.2)


def test_an_exit_in_an_earlier_chunk_is_reported_after_the_chunk_edge() -> None:
    fleet, clock, uuid = one_h100(seed=8)
    idle, _, _ = one_h100(seed=8)
    edge = START_US + CHUNK_US  # steady(…) draws the same on both sides of it
    fleet.assign(uuid, edge - 30 * US_PER_S, edge - 5 * US_PER_S, steady(0.5, pids=(41,)), tenant="a:1")
    fleet.assign(uuid, edge - 20 * US_PER_S, edge + 60 * US_PER_S, steady(0.2, pids=(42,)), tenant="b:1")
    clock.set(edge - 10 * US_PER_S)
    fleet.read(uuid)
    clock.set(edge + 10 * US_PER_S)
    reading = fleet.read(uuid)
    procs = by_pid(reading)
    assert list(procs) == [41, 42] and procs[41][0] is None and procs[42][0] > 0
    assert procs[41][1] == pytest.approx(50 * 5 / 20, abs=0.2)
    assert procs[42][1] == pytest.approx(20, abs=0.2)
    assert_sm_util_is_the_dynamic_energy(reading, edge - 10 * US_PER_S,
                                         dynamic_j(fleet, idle, uuid, edge - 10 * US_PER_S, edge + 10 * US_PER_S))


def test_legacy_runs_too_and_the_window_is_deterministic() -> None:
    def run() -> list[GpuReading]:
        fleet, clock, uuid = one_h100(seed=9)
        fleet.assign(uuid, at(0), at(33.3), steady(0.7, pids=(51,)))  # exclusive, with a pid
        fleet.assign(uuid, at(40), at(80), steady(0.3, pids=(52, 53)), tenant="a:1")
        fleet.assign(uuid, at(50), at(61), steady(0.1), tenant="a:1")
        out = []
        for t in (30, 45, 60, 70, 90, 100):
            clock.set(at(t))
            out.append(fleet.read(uuid))
        return out

    readings = run()
    assert readings == run()
    pids = [[p.pid for p in r.processes] for r in readings]
    assert pids[1][0] == 51 and readings[1].processes[0].used_memory_bytes is None
    assert readings[1].processes[0].sm_util_pct == pytest.approx(70 * 3.3 / 15, abs=0.3)
    assert [pid for pid in pids[2] if pid in (51, 52, 53)] == [52, 53] and len(pids[2]) == 3
    assert pids[3] == pids[2]  # the derived-pid run ended at 61 s: listed in the read at 70 s
    assert [p.used_memory_bytes for p in readings[3].processes][2] is None
    assert pids[4] == [52, 53] and all(p.used_memory_bytes is None for p in readings[4].processes)
    assert pids[5] == []


@settings(max_examples=40, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(0, 1_200), st.integers(1, 600), st.integers(1, 30)), min_size=1, max_size=4),
    gaps=st.lists(st.integers(1, 200), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_every_run_active_in_the_window_is_listed_and_their_sum_is_the_dynamic_energy(
    runs: list[tuple[int, int, int]], gaps: list[int], seed: int
) -> None:
    """Runs on a 100 ms grid (steps of 1/10 s); reads at any 100 ms."""
    fleet, clock, uuid = one_h100(seed=seed)
    idle, _, _ = one_h100(seed=seed)
    for k, (start, length, load) in enumerate(runs):
        fleet.assign(uuid, at(start / 10), at((start + length) / 10), steady(load / 100, pids=(100 + k,)),
                     tenant=f"t:{k}")  # fmt: skip
    t = at(0)
    clock.set(t)
    previous = fleet.read(uuid)
    for gap in gaps:
        t += gap * STEP
        clock.set(t)
        reading = fleet.read(uuid)
        since = previous.timestamp_us
        expected = {100 + k: at((s + n) / 10) <= t for k, (s, n, _) in enumerate(runs)
                    if at(s / 10) <= t and at((s + n) / 10) > since}  # fmt: skip
        assert {p.pid: p.used_memory_bytes is None for p in reading.processes} == expected
        assert_sm_util_is_the_dynamic_energy(reading, since, dynamic_j(fleet, idle, uuid, since, t))
        previous = reading
