"""`wattledger report chargeback` as a user runs it, on an embedded database with one metered hour."""

from __future__ import annotations

import os
import subprocess
import sys

from accounting.clock import FakeClock
from accounting.db import make_engine, session_scope
from accounting.ledger.ingest import ingest_batch
from accounting.migrations import upgrade
from tests.conftest import T0_US
from tests.factories import batch


def run(args, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")} | {"WATTLEDGER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, capture_output=True, timeout=120,
                          cwd=home)


def test_csv_json_and_pdf_statements_of_a_month(tmp_path):
    url = f"sqlite:///{tmp_path / 'wattledger.db'}"
    upgrade(url)
    with session_scope(make_engine(url)) as session:  # T0 is 2025-07-26 22:00 UTC
        ingest_batch(session, batch("n1", 1, "GPU-a", T0_US, 60), clock=FakeClock(T0_US))
        session.commit()
    csv = run(["report", "chargeback", "--period", "2025-07", "--format", "csv"], tmp_path)
    assert csv.returncode == 0, csv.stderr.decode()[-2000:]
    assert b"kwh" in csv.stdout.splitlines()[0].lower()
    pdf = tmp_path / "statement.pdf"
    made = run(["report", "chargeback", "--period", "2025-07", "--format", "pdf", "--out", str(pdf)], tmp_path)
    assert made.returncode == 0, made.stderr.decode()[-2000:]
    assert pdf.read_bytes().startswith(b"%PDF")
    bad = run(["report", "chargeback", "--period", "July"], tmp_path)
    assert bad.returncode == 2 and b"period" in bad.stdout
