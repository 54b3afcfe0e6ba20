"""The ingest-vs-COPY benchmark runs end to end at tiny bounds (one real worker, real PostgreSQL and
Redis) and prints its figures: a check of the script, not a timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_URL, REDIS_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_vs_copy_checks_the_ledger_and_prints_the_ratio():
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "ingest-vs-copy", "--database-url", PG_URL, "--broker-url", REDIS_URL,
         "--force", "--workers", "1", "--readings", "1000", "--batch-readings", "80", "--gpus", "8",
         "--timeout-s", "60"],
        cwd=ROOT, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=180,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "ratio end to end / COPY" in out
    verdict = next(line for line in out.splitlines() if "exactly once" in line)
    assert verdict.rstrip(" │").endswith("yes"), out
