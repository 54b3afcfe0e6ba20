"""`wattledger up`: API + worker + beat + sampler on embedded defaults, as a new user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from workers.processes import free_port

pytestmark = pytest.mark.integration


def poll(url: str, accept, timeout_s: float, headers: dict | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2, headers=headers)
            if accept(last):
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never gave the expected answer; last: {last and last.text}")


def start_up(tmp_path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")}
    env |= {"WATTLEDGER_HOME": str(tmp_path / "home"), "WATTLEDGER_API_PORT": str(port),
            "WATTLEDGER_FLUSH_INTERVAL_S": "1", "WATTLEDGER_SIMULATED_GPUS": "2", "WATTLEDGER_GPU_BACKEND": "simulated"}
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "up"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_key(proc: subprocess.Popen, timeout_s: float = 60) -> tuple[str, str]:
    """(the key `up` printed, its output so far): read line by line until `API key: …` shows."""
    deadline, seen = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if match := re.search(r"API key: (\S+)", line):
            return match.group(1), seen
    raise AssertionError(f"`up` printed no API key; output: {seen[-2000:]}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130, -signal.SIGINT), output[-2000:]
    return output


def test_up_serves_the_api_and_meters_the_simulated_fleet(tmp_path):
    port = free_port()
    proc = start_up(tmp_path, port)
    base, before = f"http://127.0.0.1:{port}", ""
    try:
        key, before = read_key(proc)
        auth = {"Authorization": f"Bearer {key}"}
        poll(f"{base}/readyz", lambda r: r.status_code == 200, 60)  # public by default
        refused = httpx.get(f"{base}/v1/ledger/totals", timeout=5)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        totals = poll(f"{base}/v1/ledger/totals", lambda r: r.json()["measured_mj"] > 0, 60, auth).json()
        assert totals["balanced"]
        gpus = httpx.get(f"{base}/v1/gpus", headers=auth).json()
        assert [g["model"] for g in gpus] == ["H100 SXM", "H100 SXM"]
    finally:
        output = before + stop(proc)
    assert f"API http://127.0.0.1:{port}" in output

    # A second start makes no new key: the first one still works.
    port = free_port()
    proc = start_up(tmp_path, port)
    try:
        poll(f"http://127.0.0.1:{port}/v1/gpus", lambda r: r.status_code == 200, 60, auth)
    finally:
        again = stop(proc)
    assert "API key:" not in again and "an admin API key exists already" in again
