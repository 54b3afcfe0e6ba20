"""`python -m bench query` end to end at a tiny size: it seeds by COPY, the ledger balances with the
samples it kept, and it prints both endpoints' figures against their targets. Not a timing."""

from __future__ import annotations

import pytest

from tests.bench.test_bench_smoke import bench
from tests.conftest import PG_URL

pytestmark = pytest.mark.integration


def test_query_seeds_a_small_fleet_and_prints_the_latencies_against_the_targets():
    args = ("query", "--database-url", PG_URL, "--force", "--gpus", "16", "--days", "2",
            "--chargeback-calls", "2", "--energy-calls", "10")
    result = bench(*args, timeout_s=180)
    out = result.stdout
    assert "seeded in" in out and "from the Alibaba trace's mix" in out, out + result.stderr
    assert "where Σ ledger ≠ Σ samples" in out and ", 0 where" in out  # conservation held
    for row in ("chargeback (cold)", "│ chargeback ", "job-energy", "≤ 250 ms", "≤ 20 ms"):
        assert row in out, out
    assert "error" not in out, out
    again = bench(*args, "--reuse", timeout_s=180)
    assert "--reuse: the database holds this fleet; not seeding" in again.stdout, again.stdout + again.stderr
