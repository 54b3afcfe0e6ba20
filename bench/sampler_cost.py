"""The sampler's CPU cost (issue 9, part 3): CPU time per GPU reading in our own code on the
simulated backend, and the CPU share of one core that a real `wattledger sampler` process takes at
1 Hz on 8 simulated GPUs (target: under 1 %).

1. In process, on a FakeClock (no waiting): the live fleet of `wattledger sampler`
   (accounting.demo.live) read by a Sampler once a simulated second for `--simulated-s`, with
   time.process_time around Sampler.sample(), around flush() + ship() every 10 s (the spool: JSON,
   fsync; the send goes nowhere), and inside the backend's gpus() and read() (the simulator's cost,
   which NVML's replaces on a real node). Our code's share = sample − backend, plus flush + ship.
2. A real process: `wattledger sampler` with WATTLEDGER_GPU_BACKEND=simulated, 8 GPUs, the embedded
   broker (Celery's SQLAlchemy transport on SQLite) in a temporary WATTLEDGER_HOME, no worker
   (batches queue). After `--warmup-s`, its utime + stime from /proc/<pid>/stat over `--live-s`
   wall seconds: the whole process (sampler, simulated fleet, spool, broker client) as a share of
   one core. Linux only.
3. On a GPU node only (NVML initializes): `--nvml-rounds` back-to-back Sampler.sample() rounds over
   NvmlBackend with the /proc resolver, CPU and wall time per reading, NVML's own calls apart.
   Elsewhere it prints that it was not measured.

    python -m bench sampler-cost [--simulated-s 3600] [--live-s 60] [--warmup-s 15] [--nvml-rounds 300]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/sampler_cost.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import typer
from rich.console import Console
from rich.table import Table

from accounting.clock import US_PER_S, FakeClock, SystemClock
from accounting.demo.live import live_fleet
from accounting.errors import GpuError
from accounting.metering.discovery import ProcResolver
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool

START_US = 1_785_110_400 * US_PER_S  # 2026-07-27 00:00 UTC
FLUSH_EVERY_S = 10  # the sampler's default flush interval
TARGET_PCT = 1.0


@dataclass
class InProcess:
    readings: int
    backend_s: float  # CPU s in the simulated backend alone
    sample_s: float  # CPU s in Sampler.sample(), backend included
    flush_s: float  # CPU s in flush() + ship()

    def per_reading_us(self, cpu_s: float) -> float:
        return cpu_s / self.readings * 1e6


class TimedBackend:
    """The fleet, with the CPU time spent inside its gpus() and read() added up (the simulator's share)."""

    def __init__(self, fleet) -> None:
        self.fleet, self.cpu_s = fleet, 0.0

    def gpus(self):
        began = time.process_time()
        try:
            return self.fleet.gpus()
        finally:
            self.cpu_s += time.process_time() - began

    def read(self, uuid: str):
        began = time.process_time()
        try:
            return self.fleet.read(uuid)
        finally:
            self.cpu_s += time.process_time() - began

    def __getattr__(self, name: str):  # kind, mig_instances, close
        return getattr(self.fleet, name)


def in_process(gpus: int, seconds: int) -> InProcess:
    """Part 1 (module docstring), on one fleet: the backend's calls timed inside Sampler.sample()."""
    clock = FakeClock(START_US)
    fleet = live_fleet(clock, gpus=gpus, node="bench")
    backend = TimedBackend(fleet)
    sample_s = flush_s = 0.0
    readings = 0
    with tempfile.TemporaryDirectory(prefix="wl-sampler-cost-") as home:
        sampler = Sampler(backend=backend, spool=Spool(Path(home) / "spool"), clock=clock, node="bench",
                          resolver=fleet)  # fmt: skip
        for k in range(seconds):
            clock.advance(1)
            t0 = time.process_time()
            readings += sampler.sample()
            t1 = time.process_time()
            if k % FLUSH_EVERY_S == FLUSH_EVERY_S - 1:
                sampler.flush()
                sampler.ship(lambda batch: None)
            sample_s, flush_s = sample_s + t1 - t0, flush_s + time.process_time() - t1
    if readings != seconds * gpus:
        raise RuntimeError(f"expected {seconds * gpus} readings, the sampler took {readings}")
    return InProcess(readings, backend.cpu_s, sample_s, flush_s)


def nvml_readings(rounds: int) -> tuple[InProcess, float] | str:
    """Part 3: (the costs per reading, wall s of the rounds) on this node's GPUs, or why not."""
    clock = SystemClock()
    try:
        from accounting.gpu.nvml import NvmlBackend

        nvml = NvmlBackend(clock)
    except (GpuError, ImportError) as err:
        return f"NVML unavailable here ({err}): per-reading NVML cost not measured"
    backend = TimedBackend(nvml)
    sample_s, readings = 0.0, 0
    try:
        with tempfile.TemporaryDirectory(prefix="wl-sampler-nvml-") as home:
            sampler = Sampler(backend=backend, spool=Spool(Path(home) / "spool"), clock=clock, node="bench",
                              resolver=ProcResolver())  # fmt: skip
            wall0 = time.perf_counter()
            for _ in range(rounds):
                t0 = time.process_time()
                readings += sampler.sample()
                sample_s += time.process_time() - t0
            wall_s = time.perf_counter() - wall0
    finally:
        nvml.close()
    if not readings:
        return "NVML initialized but no GPU could be read"
    return InProcess(readings, backend.cpu_s, sample_s, 0.0), wall_s


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[11]) + int(fields[12])


def live_process(gpus: int, warmup_s: float, live_s: float) -> tuple[float, float, float]:
    """Part 2: (CPU % of one core over live_s after the warm-up, CPU s used by the warm-up, wall s measured)."""
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    wattledger = Path(sys.executable).with_name("wattledger")
    with tempfile.TemporaryDirectory(prefix="wl-sampler-live-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")}
        env |= {"WATTLEDGER_HOME": home, "WATTLEDGER_GPU_BACKEND": "simulated",
                "WATTLEDGER_SIMULATED_GPUS": str(gpus), "WATTLEDGER_NODE_NAME": "bench-node"}  # fmt: skip
        log_path = Path(home) / "sampler.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(wattledger), "sampler"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(warmup_s)
            ticks0, wall0 = cpu_ticks(proc.pid), time.monotonic()
            time.sleep(live_s)
            ticks1, wall1 = cpu_ticks(proc.pid), time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"the sampler exited ({proc.returncode}):\n{log_path.read_text()[-2_000:]}")
        except FileNotFoundError as err:  # /proc/<pid> gone: it died
            raise RuntimeError(f"the sampler exited:\n{log_path.read_text()[-2_000:]}") from err
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    busy_s = (ticks1 - ticks0) * tick_s
    return 100 * busy_s / (wall1 - wall0), ticks0 * tick_s, wall1 - wall0


def sampler_cost(
    simulated_s: int = typer.Option(3_600, help="Simulated seconds read in process, at 1 Hz (part 1); 0 skips it."),
    live_s: float = typer.Option(60.0, help="Wall seconds the real sampler process is measured; 0 skips part 2."),
    warmup_s: float = typer.Option(15.0, help="Wall seconds the process runs before it is measured."),
    gpus: int = typer.Option(8, help="Simulated GPUs."),
    nvml_rounds: int = typer.Option(300, help="Sampler rounds over the real GPUs, where NVML initializes (part 3)."),
) -> None:
    """CPU per GPU reading in our code (simulated backend), and the sampler process's CPU % at 1 Hz."""
    console = Console(width=120)
    if simulated_s > 0:
        r = in_process(gpus, simulated_s)
        ours_s = r.sample_s - r.backend_s + r.flush_s
        table = Table(title=f"CPU per GPU reading, in process: {r.readings} readings ({gpus} GPUs × {simulated_s} "
                      "simulated s at 1 Hz)")  # fmt: skip
        for name in ("part", "µs / reading", f"% of a core at 1 Hz × {gpus} GPUs"):
            table.add_column(name, justify="left" if name == "part" else "right")
        for part, cpu_s in (("simulated backend: gpus() + read()", r.backend_s),
                            ("ours: Sampler.sample() less the backend", r.sample_s - r.backend_s),
                            ("ours: flush() + ship() (spool), every 10 s", r.flush_s),
                            ("ours, total", ours_s),
                            ("ours + simulated backend", ours_s + r.backend_s)):  # fmt: skip
            us = r.per_reading_us(cpu_s)
            table.add_row(part, f"{us:.1f}", f"{us * gpus / 1e4:.3f}")  # µs per s → % of 1 s
        console.print(table)
    nvml = nvml_readings(nvml_rounds) if nvml_rounds > 0 else "NVML part skipped (--nvml-rounds 0)"
    if isinstance(nvml, str):
        console.print(nvml)
    else:
        n, wall_s = nvml
        console.print(f"NVML, {n.readings} readings: Sampler.sample() {n.per_reading_us(n.sample_s):.0f} µs CPU per "
                      f"reading, of which NvmlBackend (pynvml and the driver) {n.per_reading_us(n.backend_s):.0f} µs; "
                      f"wall {wall_s / n.readings * 1e6:.0f} µs per reading")  # fmt: skip
    if live_s > 0:
        pct, startup_cpu_s, wall_s = live_process(gpus, warmup_s, live_s)
        verdict = "[green]under[/]" if pct < TARGET_PCT else "[red]OVER[/]"
        console.print(f"`wattledger sampler`, {gpus} simulated GPUs at 1 Hz, embedded broker: "
                      f"[bold]{pct:.2f} %[/] of one core over {wall_s:.0f} s wall after a {warmup_s:g} s warm-up "
                      f"({startup_cpu_s:.1f} CPU s to start) — {verdict} the {TARGET_PCT:g} % target")  # fmt: skip


if __name__ == "__main__":
    typer.run(sampler_cost)
