"""The Slurm prolog and epilog, run for real with bash against the API served over HTTP.

The scripts get what slurmd gives them — Slurm's variables and no PATH — and read their
settings from a config file and an agent API key from a key file, as on a node. nvidia-smi is
faked through WATTLEDGER_GPU_UUIDS_CMD.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from accounting.clock import SystemClock
from accounting.config import Settings
from api.main import create_app
from tests.api.conftest import new_key
from tests.conftest import PG_URL, truncate_all
from workers.processes import ApiServer, free_port

SCRIPTS = Path(__file__).resolve().parents[2] / "contrib" / "slurm"
PROLOG, EPILOG = SCRIPTS / "prolog.sh", SCRIPTS / "epilog.sh"
BASH = shutil.which("bash")
START = datetime(2025, 7, 26, 14, 0, 3, tzinfo=UTC)
FAKE_NVIDIA_SMI = """#!/bin/bash
# nvidia-smi --query-gpu=uuid --format=csv,noheader -i 1,3 → one UUID a line
printf '%s\\n' "$*" >>"$(dirname "$0")/calls"
[[ -n $FAIL_NVIDIA_SMI ]] && { echo "NVIDIA-SMI has failed"; exit 9; }
IFS=, read -r -a ids <<<"${!#}"
for i in "${ids[@]}"; do printf 'GPU-00000000-0000-0000-0000-%012d\\n' "$i"; done
"""


def uuid(index: int) -> str:
    return f"GPU-00000000-0000-0000-0000-{index:012d}"


@pytest.fixture(scope="module")
def served(pg_engine: sa.Engine, tmp_path_factory) -> Iterator[tuple[str, list[str | None]]]:
    """The real app on a real clock (the scripts send this node's time), on PostgreSQL, and the
    Authorization header of each request it answered."""
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), database_url=PG_URL),
                     engine=pg_engine, clock=SystemClock())
    authorizations: list[str | None] = []

    @app.middleware("http")
    async def note_authorization(request, call_next):
        authorizations.append(request.headers.get("authorization"))
        return await call_next(request)

    with ApiServer(app) as server:
        yield server.url, authorizations


@pytest.fixture(scope="module")
def api_url(served) -> str:
    return served[0]


@pytest.fixture
def api(api_url: str, pg_engine: sa.Engine) -> Iterator[httpx.Client]:
    """An admin's client, on emptied tables (API keys too)."""
    truncate_all(pg_engine)
    with httpx.Client(base_url=api_url, timeout=15,
                      headers={"Authorization": f"Bearer {new_key(pg_engine, 'admin')}"}) as client:
        yield client
    truncate_all(pg_engine)


@pytest.fixture
def node(tmp_path: Path, api_url: str, api, pg_engine):
    """A compute node: a config file, an agent key in a root-only file, a state directory, a fake
    nvidia-smi."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    config = tmp_path / "slurm.env"
    state = tmp_path / "run" / "wattledger" / "slurm"
    key_file = tmp_path / "agent.key"
    key_file.write_text(new_key(pg_engine, "agent") + "\n")
    key_file.chmod(0o600)
    config.write_text(
        "# WattLedger on this node\n"
        f"WATTLEDGER_API_URL={api_url}/\n"
        f"WATTLEDGER_API_KEY_FILE={key_file}\n"
        f'WATTLEDGER_SLURM_STATE_DIR="{state}"\n'
        f"WATTLEDGER_GPU_UUIDS_CMD={smi} --query-gpu=uuid --format=csv,noheader -i\n"
        "WATTLEDGER_SLURM_SYSLOG=0\n"
        "NOT_OURS=ignored\n"
    )
    return {"config": config, "state": state, "smi": smi, "key_file": key_file}


def slurm_env(node, job_id: str = "48121", **extra: str) -> dict[str, str]:
    """What slurmd's prolog environment holds (prep_script_slurmd.c), no PATH."""
    env = {
        "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_UID": "1000", "SLURM_JOB_USER": "alice",
        "SLURM_JOB_ACCOUNT": "nlp", "SLURM_JOB_COMMENT": "project=llama7b priority=high",
        "SLURM_JOB_GPUS": "1,3", "CUDA_VISIBLE_DEVICES": "1,3", "SLURM_JOB_PARTITION": "gpu",
        "SLURM_JOB_START_TIME": str(int(START.timestamp())), "SLURMD_NODENAME": "gpu-node01",
        "SLURM_CLUSTER_NAME": "hpc", "SLURM_SCRIPT_CONTEXT": "prolog_slurmd",
        "WATTLEDGER_SLURM_CONFIG": str(node["config"]),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run(script: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(script)], env=env, capture_output=True, text=True, timeout=timeout)


def slurm_jobs(api: httpx.Client) -> list[dict]:
    response = api.get("/v1/jobs")
    assert response.status_code == 200, response.text
    return [j for j in response.json() if j["source"] == "slurm"]


def test_the_scripts_are_executable_bash():
    for script in (PROLOG, EPILOG):
        assert os.access(script, os.X_OK), f"{script} must be executable: slurmd runs it directly"
        assert script.read_text().startswith("#!/bin/bash\n")
        assert subprocess.run([BASH, "-n", str(script)]).returncode == 0


def test_prolog_registers_and_epilog_finishes(api, node):
    prolog = run(PROLOG, slurm_env(node))
    assert prolog.returncode == 0, prolog.stderr
    (job,) = slurm_jobs(api)
    assert (job["external_id"], job["team"], job["project"], job["user"]) == ("48121", "nlp", "llama7b", "alice")
    assert job["gpu_uuids"] == [uuid(1), uuid(3)]
    assert datetime.fromisoformat(job["started_at"]) == START
    assert job["ended_at"] is None
    assert (node["state"] / "48121").read_text() == f"{job['id']}\n"
    assert (node["smi"].parent / "calls").read_text() == "--query-gpu=uuid --format=csv,noheader -i 1,3\n"
    assert f"registered as WattLedger job {job['id']} with 2 GPU(s)" in prolog.stderr

    before = datetime.now(UTC)
    epilog = run(EPILOG, slurm_env(node, SLURM_SCRIPT_CONTEXT="epilog_slurmd", SLURM_JOB_EXIT_CODE="0"))
    assert epilog.returncode == 0, epilog.stderr
    (job,) = slurm_jobs(api)
    ended = datetime.fromisoformat(job["ended_at"])
    assert before - timedelta(seconds=1) <= ended <= datetime.now(UTC)
    assert not (node["state"] / "48121").exists()
    assert f"finished WattLedger job {job['id']}" in epilog.stderr


def test_project_from_wckey_or_the_whole_comment_escaped(api, node):
    run(PROLOG, slurm_env(node, "1", SLURM_JOB_WCKEY="*llama", SLURM_JOB_GPUS="0", CUDA_VISIBLE_DEVICES="0"))
    comment = 'say "hi" \\ back\tslash\nnext line, naïve'
    run(PROLOG, slurm_env(node, "2", SLURM_JOB_COMMENT=f"  {comment} ", SLURM_JOB_GPUS="2", CUDA_VISIBLE_DEVICES="2"))
    run(PROLOG, slurm_env(node, "3", SLURM_JOB_COMMENT=None, SLURM_JOB_ACCOUNT=None, SLURM_JOB_USER=None,
                          SLURM_JOB_GPUS="3", CUDA_VISIBLE_DEVICES="3"))
    jobs = {j["external_id"]: j for j in slurm_jobs(api)}
    assert jobs["1"]["project"] == "llama"
    assert jobs["2"]["project"] == comment
    assert (jobs["3"]["project"], jobs["3"]["team"], jobs["3"]["user"]) == (None, "unknown", None)


def test_cuda_visible_devices_when_slurm_job_gpus_is_unset(api, node):
    assert run(PROLOG, slurm_env(node, SLURM_JOB_GPUS=None, CUDA_VISIBLE_DEVICES="0,2")).returncode == 0
    assert slurm_jobs(api)[0]["gpu_uuids"] == [uuid(0), uuid(2)]


def test_gpu_uuids_given_by_slurm_are_used_as_they_are(api, node):
    mig = "MIG-4b2a1c3d-0e5f-5a6b-8c7d-9e0f1a2b3c4d"
    assert run(PROLOG, slurm_env(node, SLURM_JOB_GPUS=None, CUDA_VISIBLE_DEVICES=mig)).returncode == 0
    assert slurm_jobs(api)[0]["gpu_uuids"] == [mig]
    assert not (node["smi"].parent / "calls").exists()


def test_a_job_without_gpus_is_not_registered(api, node):
    result = run(PROLOG, slurm_env(node, SLURM_JOB_GPUS=None, CUDA_VISIBLE_DEVICES=None))
    assert result.returncode == 0 and "no GPUs allocated" in result.stderr
    assert slurm_jobs(api) == [] and not node["state"].exists()
    assert run(EPILOG, slurm_env(node, SLURM_JOB_GPUS=None, CUDA_VISIBLE_DEVICES=None)).returncode == 0
    assert slurm_jobs(api) == []


def test_a_failing_nvidia_smi_costs_the_job_nothing(api, node):
    result = run(PROLOG, slurm_env(node, FAIL_NVIDIA_SMI="1"))
    assert result.returncode == 0
    assert "failed (exit 9)" in result.stderr and "not registered" in result.stderr
    assert slurm_jobs(api) == []


def test_a_retried_prolog_registers_once(api, node):
    first, second = run(PROLOG, slurm_env(node)), run(PROLOG, slurm_env(node))
    assert first.returncode == second.returncode == 0
    (job,) = slurm_jobs(api)
    assert f"already registered as WattLedger job {job['id']}" in second.stderr
    assert "another node" not in second.stderr
    assert (node["state"] / "48121").read_text() == f"{job['id']}\n"


def test_a_second_node_of_the_job_is_told_its_gpus_are_missing(api, node):
    run(PROLOG, slurm_env(node))
    other = run(PROLOG, slurm_env(node, SLURM_JOB_GPUS="0", CUDA_VISIBLE_DEVICES="0", SLURMD_NODENAME="gpu-node02"))
    assert other.returncode == 0
    assert "registered by another node" in other.stderr and uuid(0) in other.stderr
    assert slurm_jobs(api)[0]["gpu_uuids"] == [uuid(1), uuid(3)]


def test_the_epilog_registers_late_what_the_prolog_could_not(api, node):
    # the prolog ran while the API was down: no state file
    epilog = run(EPILOG, slurm_env(node, SLURM_SCRIPT_CONTEXT="epilog_slurmd"))
    assert epilog.returncode == 0, epilog.stderr
    (job,) = slurm_jobs(api)
    assert datetime.fromisoformat(job["started_at"]) == START and job["ended_at"] is not None
    assert job["gpu_uuids"] == [uuid(1), uuid(3)] and job["project"] == "llama7b"
    again = run(EPILOG, slurm_env(node, SLURM_SCRIPT_CONTEXT="epilog_slurmd"))  # another node's epilog
    assert again.returncode == 0 and "finished already" in again.stderr
    assert slurm_jobs(api)[0]["ended_at"] == job["ended_at"]


def test_the_key_file_s_agent_key_is_sent_as_a_bearer_token(api, node, served):
    authorizations = served[1]
    authorizations.clear()
    assert run(PROLOG, slurm_env(node)).returncode == 0
    assert run(EPILOG, slurm_env(node)).returncode == 0
    key = node["key_file"].read_text().strip()
    assert authorizations == [f"Bearer {key}"] * 2
    assert slurm_jobs(api)[0]["ended_at"] is not None


def test_a_key_in_the_environment_wins_and_is_sent_as_it_is(api, node, served):
    authorizations = served[1]
    authorizations.clear()
    key = 's3cr"et\\key'  # quotes and backslashes reach the server intact (curl reads it from stdin)
    result = run(PROLOG, slurm_env(node, WATTLEDGER_API_KEY=key))
    assert result.returncode == 0
    assert authorizations == [f"Bearer {key}"]
    assert "not registered: HTTP 401" in result.stderr and slurm_jobs(api) == []


def test_without_a_key_the_api_refuses_and_the_job_still_runs(api, node, served, tmp_path):
    authorizations = served[1]
    authorizations.clear()
    missing = tmp_path / "no.key"
    result = run(PROLOG, slurm_env(node, WATTLEDGER_API_KEY_FILE=str(missing)))
    assert result.returncode == 0 and authorizations == [None]
    assert f"cannot read the API key file {missing}" in result.stderr
    assert "not registered: HTTP 401" in result.stderr and slurm_jobs(api) == []


def test_settings_in_the_environment_win_over_the_config_file(api, node, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    assert run(PROLOG, slurm_env(node, WATTLEDGER_SLURM_STATE_DIR=str(elsewhere))).returncode == 0
    assert (elsewhere / "48121").exists() and not node["state"].exists()


@pytest.mark.parametrize("script", [PROLOG, EPILOG])
def test_with_the_api_down_the_scripts_exit_0_at_once(api, node, script):
    started = time.monotonic()
    result = run(script, slurm_env(node, WATTLEDGER_API_URL=f"http://127.0.0.1:{free_port()}"))
    assert result.returncode == 0
    assert time.monotonic() - started < 5
    assert "cannot connect" in result.stderr
    assert not (node["state"] / "48121").exists()


def test_an_epilog_with_the_api_down_keeps_the_id_for_a_retry(api, node):
    run(PROLOG, slurm_env(node))
    down = run(EPILOG, slurm_env(node, WATTLEDGER_API_URL=f"http://127.0.0.1:{free_port()}"))
    assert down.returncode == 0 and "import sacct" in down.stderr
    assert (node["state"] / "48121").exists() and slurm_jobs(api)[0]["ended_at"] is None
    assert run(EPILOG, slurm_env(node)).returncode == 0
    assert slurm_jobs(api)[0]["ended_at"] is not None and not (node["state"] / "48121").exists()


@pytest.mark.parametrize("script", [PROLOG, EPILOG])
def test_an_api_that_never_answers_costs_at_most_the_timeout(node, script):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = slurm_env(node, WATTLEDGER_API_URL=f"http://127.0.0.1:{silent.getsockname()[1]}",
                        WATTLEDGER_HTTP_TIMEOUT_S="1", WATTLEDGER_HTTP_RETRIES="0")
        started = time.monotonic()
        result = run(script, env)
    assert result.returncode == 0
    assert time.monotonic() - started < 4
    assert "no answer" in result.stderr


def test_without_configuration_or_job_id_nothing_happens(api, node, tmp_path):
    unconfigured = run(PROLOG, slurm_env(node, WATTLEDGER_SLURM_CONFIG=str(tmp_path / "missing.env")))
    assert unconfigured.returncode == 0 and "WATTLEDGER_API_URL is not set" in unconfigured.stderr
    no_job = run(PROLOG, slurm_env(node, SLURM_JOB_ID=None, SLURM_JOBID=None))
    assert no_job.returncode == 0 and "no valid SLURM_JOB_ID" in no_job.stderr
    forged = run(EPILOG, slurm_env(node, SLURM_JOB_ID="1;rm -rf /", SLURM_JOBID=None))
    assert forged.returncode == 0 and "no valid SLURM_JOB_ID" in forged.stderr
    assert slurm_jobs(api) == []
