"""Loading the real 8 × H100 nvidia-smi trace, and rejecting malformed logs."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from accounting.gpu.trace import PowerTrace, load_nvidia_smi_trace

TRACE_FILE = (
    Path(__file__).resolve().parents[3]
    / "shared/data/nvidia-smi_8xH100_llm-training_2025-07-26_100ms.csv"
)
HEADER = "timestamp, power.draw [W], utilization.gpu [%], memory.used [MiB]"


@pytest.fixture(scope="module")
def trace() -> PowerTrace:
    if not TRACE_FILE.exists():
        pytest.skip(f"real trace not found at {TRACE_FILE}")
    return load_nvidia_smi_trace(TRACE_FILE)


def test_shape_and_start(trace: PowerTrace) -> None:
    assert trace.n_rows == 45_632 == 8 * 5_704
    assert trace.n_gpus == 8
    assert trace.step_ms == 100
    assert trace.start == datetime(2025, 7, 26, 23, 32, 9, 703_000)
    # 23:32:09.703 → 23:43:48.294 is 698.59 s: the grid covers it in 6,986 steps.
    assert trace.n_steps == 6_986
    assert trace.duration_s == pytest.approx(698.6)
    assert trace.watts.shape == trace.util_pct.shape == (8, 6_986)


def test_power_figures(trace: PowerTrace) -> None:
    assert 340 < trace.watts.mean() < 380  # README: 360 W over rows
    assert trace.watts.max() < 700
    assert trace.watts.max() == pytest.approx(598.09)
    start_idle = trace.watts[:, :10]  # the first second: all 8 idle
    assert np.all((start_idle > 68) & (start_idle < 74))
    assert np.all(trace.util_pct[:, :10] == 0)
    assert trace.util_pct.max() == 100


def test_gaps_hold_the_last_value(trace: PowerTrace) -> None:
    # GPU 1's rows: 23:32:11.324 then 23:32:12.107 (a 0.78 s gap) with 72.49 W then 72.50 W.
    first = 16  # 23:32:09.703 + 1.6 s = 11.303: GPU 1's latest sample is 11.227 or earlier
    for k in range(first + 1, first + 8):  # steps starting 11.403 … 12.003: still 72.49 W
        assert trace.watts[1, k] == pytest.approx(72.49)


def test_energy_is_the_grid_integral(trace: PowerTrace) -> None:
    assert trace.energy_j(0) == pytest.approx(trace.watts[0].sum() * 0.1)
    assert 200_000 < trace.energy_j(0) < 300_000


def test_loads_fast() -> None:
    if not TRACE_FILE.exists():
        pytest.skip("real trace not found")
    t = time.perf_counter()
    load_nvidia_smi_trace(TRACE_FILE)
    assert time.perf_counter() - t < 1.0


def _write(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "log.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _rows(n_rounds: int, gpus: int = 2) -> list[str]:
    return [
        f"2025/07/26 23:32:{10 + r // 10:02d}.{(r % 10) * 100:03d}, {70 + g}.50 W, {g} %, 17 MiB"
        for r in range(n_rounds)
        for g in range(gpus)
    ]


def test_small_log_resamples_per_gpu(tmp_path: Path) -> None:
    trace = load_nvidia_smi_trace(_write(tmp_path, _rows(5)), gpus_per_round=2)
    assert trace.watts.shape == (2, 5)
    assert np.all(trace.watts[1] == 71.5)
    assert np.all(trace.util_pct[1] == 1)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("2025/07/26 23:32:10.300, 70.50 W, 0 %", "line 5"),  # a field missing
        ("2025/07/26 23:32:10.300, 70.50, 0 %, 17 MiB", "line 5"),  # no unit
        ("2025/07/26 23:32:10.300, [N/A] W, 0 %, 17 MiB", "line 5"),
        ("2025/07/26 25:32:10.300, 70.50 W, 0 %, 17 MiB", "line 5"),  # hour 25
        ("2025/07/26 23:32:09.000, 70.50 W, 0 %, 17 MiB", "line 5"),  # time goes backwards
    ],
)
def test_malformed_row_names_its_line(tmp_path: Path, bad: str, message: str) -> None:
    rows = _rows(3)
    rows[3] = bad  # data row 3 is line 5 (the header is line 1)
    with pytest.raises(ValueError, match=message):
        load_nvidia_smi_trace(_write(tmp_path, rows), gpus_per_round=2)


def test_incomplete_round_and_bad_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rounds"):
        load_nvidia_smi_trace(_write(tmp_path, _rows(3)[:-1]), gpus_per_round=2)
    path = tmp_path / "noheader.csv"
    path.write_text("\n".join(_rows(2)))
    with pytest.raises(ValueError, match="line 1"):
        load_nvidia_smi_trace(path, gpus_per_round=2)
