"""`wattledger import sacct` as a user runs it: a real CLI process on an embedded database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "sacct_parsable2.txt"


def run(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")} | {"WATTLEDGER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=home)


def test_import_sacct_twice_creates_once(tmp_path):
    assert run(["migrate"], tmp_path).returncode == 0
    nodes = {f"gpu-node0{i}": [f"GPU-node{i}-{k}" for k in range(8)] for i in range(1, 5)}
    first = run(["import", "sacct", str(DATA), "--node-gpus", json.dumps(nodes)], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created 0" not in first.stdout and "created" in first.stdout
    again = run(["import", "sacct", str(DATA), "--node-gpus", json.dumps(nodes)], tmp_path)
    assert again.returncode == 0 and "created 0," in again.stdout


def test_import_sacct_names_a_bad_file(tmp_path):
    bad = run(["import", "sacct", str(tmp_path / "missing.txt")], tmp_path)
    assert bad.returncode == 2 and "cannot import" in bad.stdout
