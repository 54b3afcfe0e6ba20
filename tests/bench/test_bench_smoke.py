"""The load benchmarks run end to end at tiny bounds and print their figures: a correctness check
of the bench scripts (real API process, real workers, real PostgreSQL and Redis), not a timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_URL, REDIS_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env={**env, "COLUMNS": "160"},
                          capture_output=True, text=True, timeout=timeout_s)


def test_the_bench_command_lists_the_benchmarks():
    result = bench("--help")
    assert result.returncode == 0, result.stderr
    for name in ("api-load", "ingest-load", "alibaba-replay", "nvml-check"):
        assert name in result.stdout


def test_a_database_not_named_bench_is_refused_without_force():
    result = bench("api-load", "--database-url", PG_URL, "--requests", "1")
    assert result.returncode == 2
    assert "refusing" in result.stdout and "DROPS EVERY TABLE" in result.stdout


def test_api_load_drives_the_real_api_and_prints_its_figures():
    result = bench("api-load", "--database-url", PG_URL, "--force", "--gpus", "8", "--hours", "2",
                   "--sample-s", "600", "--batch-s", "3600", "--requests", "60", "--concurrency", "4",
                   "--duration-s", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "seeded in" in out and "requests/s" in out and "p99 (ms)" in out
    all_row = next(line for line in out.splitlines() if line.startswith("│ all "))
    cells = [c.strip() for c in all_row.strip("│ ").split("│")]
    assert int(cells[1].replace(",", "")) > 0 and cells[-1] == "0"  # requests sent, no errors
    assert "GET /v1/jobs/{id}/energy" in out and "POST /v1/jobs/{id}/work" in out
    assert "(warm-up)" not in out  # one request of every endpoint, chargeback included, succeeded


def test_ingest_load_ingests_every_batch_exactly_once_and_prints_its_figures():
    result = bench("ingest-load", "--database-url", PG_URL, "--broker-url", REDIS_URL, "--force", "--gpus", "8",
                   "--rate-readings-s", "400", "--duration-s", "2", "--workers", "1", "--drain-s", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "readings/s ingested" in out and "lag publish → committed" in out
    verdict = next(line for line in out.splitlines() if "exactly once, Σ ledger = Σ published (mJ)" in line)
    assert verdict.rstrip(" │").endswith("yes"), out
