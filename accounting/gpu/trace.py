"""Loading real `nvidia-smi --query-gpu=... --format=csv -lms 100` power logs.

Owns the parsing of one log format (timestamp, power.draw, utilization.gpu, memory.used, with
unit suffixes and no GPU index) and its resampling onto a regular grid, so that the simulated
fleet can replay measured power as ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

TRACE_STEP_MS = 100
_HEADER = ("timestamp", "power.draw [W]", "utilization.gpu [%]", "memory.used [MiB]")
_UNITS = (" W", " %", " MiB")


@dataclass(frozen=True, eq=False)
class PowerTrace:
    """Per-GPU series on a regular grid: column g, step k covers
    [start + k·step_ms, start + (k+1)·step_ms) and holds the last sample taken at or before
    the step's start (the first sample, for steps before a GPU's first sample)."""

    step_ms: int
    watts: np.ndarray  # float64, shape (n_gpus, n_steps)
    util_pct: np.ndarray  # float64, shape (n_gpus, n_steps)
    memory_used_mib: np.ndarray  # float64, shape (n_gpus, n_steps)
    start: datetime  # naive host-local time of the first round, as logged
    n_rows: int  # data rows in the file

    @property
    def n_gpus(self) -> int:
        return self.watts.shape[0]

    @property
    def n_steps(self) -> int:
        return self.watts.shape[1]

    @property
    def duration_s(self) -> float:
        return self.n_steps * self.step_ms / 1_000

    def energy_j(self, column: int) -> float:
        """The integral of one GPU's resampled power over the whole trace."""
        return float(self.watts[column].sum()) * self.step_ms / 1_000


def _parse_value(field: str, unit: str, line_no: int) -> float:
    text = field.strip()
    if not text.endswith(unit.strip()):
        raise ValueError(f"line {line_no}: expected a value in {unit.strip()!r}, got {field!r}")
    try:
        return float(text[: -len(unit.strip())])
    except ValueError:
        raise ValueError(f"line {line_no}: not a number: {field!r}") from None


def _parse_rows(lines: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Timestamps (strings) and the three value columns; line numbers count the header as 1."""
    stamps: list[str] = []
    n = len(lines)
    watts = np.empty(n)
    util = np.empty(n)
    mem = np.empty(n)
    for i, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) != 4:
            raise ValueError(f"line {i + 2}: expected 4 fields, got {len(fields)}: {line!r}")
        stamps.append(fields[0].strip())
        watts[i] = _parse_value(fields[1], _UNITS[0], i + 2)
        util[i] = _parse_value(fields[2], _UNITS[1], i + 2)
        mem[i] = _parse_value(fields[3], _UNITS[2], i + 2)
    return stamps, watts, util, mem


def _parse_times_ms(stamps: list[str]) -> tuple[datetime, np.ndarray]:
    """"YYYY/MM/DD HH:MM:SS.fff" → (first as a naive datetime, ms since the first)."""
    iso = [s.replace("/", "-", 2).replace(" ", "T", 1) for s in stamps]
    try:
        times = np.array(iso, dtype="datetime64[ms]")
    except ValueError:
        for i, s in enumerate(iso):  # find the culprit only on failure: this path is slow
            try:
                np.datetime64(s, "ms")
            except ValueError:
                raise ValueError(f"line {i + 2}: bad timestamp {stamps[i]!r}") from None
        raise
    start = datetime.strptime(stamps[0], "%Y/%m/%d %H:%M:%S.%f")
    return start, (times - times[0]).astype(np.int64)


def _resample(t_ms: np.ndarray, values: np.ndarray, n_steps: int, step_ms: int) -> np.ndarray:
    """Hold-last resampling of each column (t_ms and values shaped (n_rounds, n_gpus))."""
    grid_ms = np.arange(n_steps, dtype=np.int64) * step_ms
    out = np.empty((values.shape[1], n_steps))
    for g in range(values.shape[1]):
        idx = np.searchsorted(t_ms[:, g], grid_ms, side="right") - 1
        out[g] = values[np.maximum(idx, 0), g]
    return out


def load_nvidia_smi_trace(path: str | Path, gpus_per_round: int = 8) -> PowerTrace:
    """Load an nvidia-smi CSV log whose rows cycle through `gpus_per_round` GPUs in order.

    Each GPU column is resampled with its own row timestamps (a round's rows can be seconds
    apart around checkpoints) onto a 100 ms grid that starts at the first row's time and
    covers the last row. A malformed row raises ValueError naming its line number.
    """
    lines = Path(path).read_text().splitlines()
    if not lines or tuple(f.strip() for f in lines[0].split(",")) != _HEADER:
        raise ValueError(f"line 1: expected the header {', '.join(_HEADER)!r}")
    rows = lines[1:]
    while rows and not rows[-1].strip():
        rows.pop()  # a trailing blank line is not a malformed row
    if not rows or len(rows) % gpus_per_round:
        raise ValueError(
            f"{len(rows)} data rows is not a whole number of rounds of {gpus_per_round} GPUs"
        )
    stamps, watts, util, mem = _parse_rows(rows)
    start, t_ms = _parse_times_ms(stamps)
    shape = (len(rows) // gpus_per_round, gpus_per_round)
    t_ms = t_ms.reshape(shape)
    backwards = np.flatnonzero(np.diff(t_ms, axis=0) < 0)
    if backwards.size:
        # flat index r·G + g into the diff ↔ data row (r+1)·G + g, which is line that + 2
        line_no = int(backwards[0]) + gpus_per_round + 2
        raise ValueError(f"line {line_no}: timestamp goes backwards for its GPU")
    n_steps = int(t_ms.max()) // TRACE_STEP_MS + 1
    return PowerTrace(
        step_ms=TRACE_STEP_MS,
        watts=_resample(t_ms, watts.reshape(shape), n_steps, TRACE_STEP_MS),
        util_pct=_resample(t_ms, util.reshape(shape), n_steps, TRACE_STEP_MS),
        memory_used_mib=_resample(t_ms, mem.reshape(shape), n_steps, TRACE_STEP_MS),
        start=start,
        n_rows=len(rows),
    )
