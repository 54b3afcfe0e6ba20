"""`wattledger up`: API + worker + beat + sampler on embedded defaults, as a new user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from workers.processes import free_port

pytestmark = pytest.mark.integration


def poll(url: str, accept, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2)
            if accept(last):
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never gave the expected answer; last: {last and last.text}")


def test_up_serves_the_api_and_meters_the_simulated_fleet(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")}
    env |= {"WATTLEDGER_HOME": str(tmp_path / "home"), "WATTLEDGER_API_PORT": str(port),
            "WATTLEDGER_FLUSH_INTERVAL_S": "1", "WATTLEDGER_SIMULATED_GPUS": "2", "WATTLEDGER_GPU_BACKEND": "simulated"}
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "up"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        poll(f"{base}/readyz", lambda r: r.status_code == 200, 60)
        totals = poll(f"{base}/v1/ledger/totals", lambda r: r.json()["measured_mj"] > 0, 60).json()
        assert totals["balanced"]
        gpus = httpx.get(f"{base}/v1/gpus").json()
        assert [g["model"] for g in gpus] == ["H100 SXM", "H100 SXM"]
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert f"API http://127.0.0.1:{port}" in output
    assert proc.returncode in (0, 130, -signal.SIGINT), output[-2000:]
