"""The scale-out benchmark runs end to end at tiny bounds (one sampler process, one real worker,
real PostgreSQL and Redis) and prints its figures: a check of the script, not a timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_URL, REDIS_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_scale_out_ingests_every_batch_exactly_once_and_prints_its_figures():
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "scale-out", "--database-url", PG_URL, "--broker-url", REDIS_URL, "--force",
         "--workers", "1", "--samplers", "1", "--duration-s", "2", "--warmup-s", "0.5", "--backlog-readings", "400"],
        cwd=ROOT, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    verdict = next(line for line in out.splitlines() if line.startswith("W=1:"))
    assert verdict.endswith("exactly once, Σ ledger = Σ published (mJ): yes"), out
    assert "readings/s" in verdict and "queue ≥" in verdict
    row = next(line for line in out.splitlines() if line.startswith("│") and line.split("│")[1].strip() == "1")
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert int(cells[1].replace(",", "")) > 0  # readings/s ingested in the window
    assert float(cells[4]) > 0  # the worker process's CPU was seen in /proc
    assert "bytes a row" in out


def test_scale_out_refuses_a_bad_worker_list():
    result = subprocess.run([sys.executable, "-m", "bench", "scale-out", "--workers", "1,x"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--workers" in result.stdout + result.stderr
