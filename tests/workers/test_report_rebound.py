"""`wattledger report rebound --demo --json`: the demo quarters (7B on A100s, then 70B on H200s)
through the simulated fleet and the ledger, as a user runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_rebound_demo_shows_newer_chips_outrun_by_more_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")} | {"TMPDIR": str(tmp_path)}
    chart = tmp_path / "rebound.svg"
    proc = subprocess.run([sys.executable, "-m", "workers.cli", "report", "rebound", "--demo", "--json",
                           "--chart", str(chart)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    effects = report["effects"]
    assert set(effects) >= {"scale", "mix", "utilization", "chip_intensity"}
    assert effects["chip_intensity"] < 0 < effects["scale"]  # newer chips save, more work spends
    assert effects["scale"] > -effects["chip_intensity"]
    assert report["total_change_kwh"] > 0
    assert math.fsum(effects.values()) == pytest.approx(report["total_change_kwh"], rel=1e-9)
    assert report["cohorts"][0]["baseline"]["mfu"] == pytest.approx(0.40, rel=1e-3)
    assert report["cohorts"][0]["current"]["mfu"] == pytest.approx(0.38, rel=1e-3)
    assert chart.read_text().startswith("<svg") and "chip intensity" in chart.read_text()


def test_report_rebound_without_periods_says_what_to_give(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")} | {"WATTLEDGER_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "workers.cli", "report", "rebound"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "--baseline" in proc.stdout
