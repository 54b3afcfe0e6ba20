"""ProcResolver on a fake /proc tree of real files, and on this machine's real /proc."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounting.gpu.backend import ProcessOwner, ProcessResolver
from accounting.metering.discovery import ProcResolver, job_key_from_cgroup, start_time_of

ME = pwd.getpwuid(os.getuid()).pw_name
POD = "1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e"
POD_ = POD.replace("-", "_")

CGROUP_V1_SLURM = """\
12:pids:/slurm/uid_1000/job_48121/step_0/task_0
11:devices:/slurm/uid_1000/job_48121/step_0
4:memory:/slurm/uid_1000/job_48121/step_0/task_0
1:name=systemd:/system.slice/slurmd.service
"""
CGROUP_V2_SLURM = "0::/system.slice/slurmstepd.scope/job_48121/step_batch/user/task_0\n"


def stat_line(pid: int, start: int, comm: str = "python3") -> str:
    # Fields 3..52 of proc(5); field 22 (starttime) is the 20th after the command name.
    after = ["S", "1", str(pid), str(pid), "0", "-1", "4194560"] + ["0"] * 12 + [str(start)] + ["0"] * 30
    return f"{pid} ({comm}) {' '.join(after)}\n"


def status_text(uid: int) -> str:
    return (f"Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\n"
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")


def fake_process(root: Path, pid: int, *, environ: dict[str, str] | bytes | None = None, cgroup: str = "0::/\n",
                 uid: int | None = None, start: int = 5000, comm: str = "python3") -> Path:
    """A /proc/<pid> directory with stat, status, environ (NUL-separated) and cgroup files."""
    proc = root / str(pid)
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "stat").write_text(stat_line(pid, start, comm))
    (proc / "status").write_text(status_text(os.getuid() if uid is None else uid))
    if isinstance(environ, bytes):
        raw = environ
    else:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", **(environ or {})}
        raw = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    (proc / "environ").write_bytes(raw)
    (proc / "cgroup").write_text(cgroup)
    return proc


def unknown_uid() -> int:
    uid = 3_999_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def test_it_is_a_process_resolver():
    assert isinstance(ProcResolver(), ProcessResolver)


def test_slurm_job_id_in_the_environment(tmp_path):
    fake_process(tmp_path, 101, environ={"SLURM_JOB_ID": "48121", "SLURM_STEP_ID": "0"})
    assert ProcResolver(tmp_path).owner(101) == ProcessOwner("slurm:48121", ME)


def test_wattledger_job_key_is_taken_verbatim(tmp_path):
    fake_process(tmp_path, 102, environ={"WATTLEDGER_JOB_KEY": "api:train-7b:run=3"})
    assert ProcResolver(tmp_path).owner(102).job_key == "api:train-7b:run=3"


@pytest.mark.parametrize(
    "bad", ["train-7b", ":x", "bad source:1", "k8s:", "k8s:a b", "x" * 65 + ":1", "a:" + "y" * 201]
)
def test_a_malformed_job_key_is_ignored(tmp_path, bad):
    fake_process(tmp_path, 103, environ={"WATTLEDGER_JOB_KEY": bad}, cgroup=CGROUP_V2_SLURM)
    assert ProcResolver(tmp_path).owner(103).job_key == "slurm:48121"  # the cgroup answers instead
    fake_process(tmp_path, 104, environ={"WATTLEDGER_JOB_KEY": bad})
    assert ProcResolver(tmp_path).owner(104) == ProcessOwner(None, ME)


def test_the_first_listed_variable_wins(tmp_path):
    fake_process(tmp_path, 105, environ={"WATTLEDGER_JOB_KEY": "api:x1", "SLURM_JOB_ID": "7"})
    assert ProcResolver(tmp_path).owner(105).job_key == "slurm:7"
    assert ProcResolver(tmp_path, ("WATTLEDGER_JOB_KEY", "SLURM_JOB_ID")).owner(105).job_key == "api:x1"


def test_a_configured_variable_maps_to_its_source(tmp_path):
    fake_process(tmp_path, 106, environ={"PBS_JOBID": "1234.pbs-server"})
    sources = {"PBS_JOBID": "pbs", "SLURM_JOB_ID": "slurm"}
    resolver = ProcResolver(tmp_path, ("PBS_JOBID", "SLURM_JOB_ID"), env_sources=sources)
    assert resolver.owner(106).job_key == "pbs:1234.pbs-server"
    with pytest.raises(ValueError, match="LSB_JOBID"):
        ProcResolver(tmp_path, ("LSB_JOBID",))
    with pytest.raises(ValueError, match="sources"):
        ProcResolver(tmp_path, ("LSB_JOBID",), env_sources={"LSB_JOBID": "l s f"})


def test_environ_parsing_nul_bytes_equals_in_values_and_bad_utf8(tmp_path):
    raw = b"A=1\0JUNK\0OPTS=a=b=c\0NAME=caf\xe9\0SLURM_JOB_ID=99\0SLURM_JOB_ID=100\0"
    fake_process(tmp_path, 107, environ=raw)
    assert ProcResolver(tmp_path).owner(107).job_key == "slurm:99"  # getenv takes the first
    fake_process(tmp_path, 108, environ=b"")  # a zombie's environ is empty
    assert ProcResolver(tmp_path).owner(108) == ProcessOwner(None, ME)


@pytest.mark.parametrize(("cgroup", "expected"), [
    (CGROUP_V1_SLURM, "slurm:48121"),
    (CGROUP_V2_SLURM, "slurm:48121"),
    ("0::/system.slice/slurmstepd.scope/job_7/step_extern/user/sleep\n", "slurm:7"),
    ("0::/system.slice/gpu-node01_slurmstepd.scope/job_8/step_0/user/task_0\n", "slurm:8"),  # several slurmd
    ("4:memory:/slurm_gpu-node01/uid_1000/job_9/step_batch/task_0\n", "slurm:9"),
    ("0::/system.slice/slurmstepd.scope/job_48121\n", "slurm:48121"),
    (f"11:memory:/kubepods/burstable/pod{POD}/0f3c2e1d9a8b7c6d5e4f\n", f"k8s:{POD}"),
    (f"11:memory:/kubepods/pod{POD}/0f3c2e1d9a8b\n", f"k8s:{POD}"),  # Guaranteed QoS
    (f"11:cpu,cpuacct:/kubepods/besteffort/pod{POD}/4d5e\n", f"k8s:{POD}"),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/cri-containerd-4d5e.scope\n",
     f"k8s:{POD}"),
    (f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-4d5e.scope\n", f"k8s:{POD}"),
    (f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{POD_}.slice/docker-1.scope\n", f"k8s:{POD}"),
    ("0::/kubepods/burstable/pod6b3c1a8e0f8c4a5e9d7b2f1e3c4d5a6b/abc\n", "k8s:6b3c1a8e0f8c4a5e9d7b2f1e3c4d5a6b"),
    ("0::/\n", None),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("12:pids:/docker/4d5e6f\n0::/system.slice/docker-4d5e6f.scope\n", None),
    ("0::/system.slice/slurmd.service\n", None),
    ("0::/user.slice/job_12/pod\n", None),  # neither Slurm nor Kubernetes
    ("", None),
])
def test_cgroup_paths(tmp_path, cgroup, expected):
    assert job_key_from_cgroup(cgroup) == expected
    fake_process(tmp_path, 200, cgroup=cgroup)
    assert ProcResolver(tmp_path).owner(200) == ProcessOwner(expected, ME)


def test_the_environment_comes_before_the_cgroup_unless_told(tmp_path):
    fake_process(tmp_path, 201, environ={"SLURM_JOB_ID": "1"}, cgroup=CGROUP_V2_SLURM)
    assert ProcResolver(tmp_path).owner(201).job_key == "slurm:1"
    assert ProcResolver(tmp_path, cgroup_first=True).owner(201).job_key == "slurm:48121"


def test_the_user_is_the_real_uid_by_name(tmp_path):
    fake_process(tmp_path, 301, uid=0)
    assert ProcResolver(tmp_path).owner(301).user == pwd.getpwuid(0).pw_name
    nobody = unknown_uid()
    fake_process(tmp_path, 302, uid=nobody)
    assert ProcResolver(tmp_path).owner(302).user == f"uid:{nobody}"


def test_a_command_name_with_spaces_and_parentheses(tmp_path):
    fake_process(tmp_path, 303, environ={"SLURM_JOB_ID": "5"}, comm="my (odd) ) proc", start=777)
    assert start_time_of((tmp_path / "303" / "stat").read_text()) == 777
    assert ProcResolver(tmp_path).owner(303).job_key == "slurm:5"


def test_a_vanished_or_unreadable_process_is_unknown(tmp_path, monkeypatch):
    resolver = ProcResolver(tmp_path)
    assert resolver.owner(999) == ProcessOwner(None, None)  # no such process
    (tmp_path / "998").mkdir()
    (tmp_path / "998" / "stat").write_text("garbage")
    assert resolver.owner(998) == ProcessOwner(None, None)
    proc = fake_process(tmp_path, 401, environ={"SLURM_JOB_ID": "3"})
    (proc / "environ").unlink()  # exited between reading stat and environ
    assert resolver.owner(401) == ProcessOwner(None, None)

    fake_process(tmp_path, 402, environ={"SLURM_JOB_ID": "3"}, cgroup=CGROUP_V1_SLURM)
    real_read_bytes = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path.name == "environ":
            raise PermissionError(13, "Permission denied", str(path))  # another user's process
        if path.name == "status" and path.parent.name == "403":
            raise ProcessLookupError(3, "No such process")
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert resolver.owner(402) == ProcessOwner("slurm:48121", ME)  # the cgroup still tells
    fake_process(tmp_path, 403, cgroup=CGROUP_V1_SLURM)
    assert resolver.owner(403) == ProcessOwner(None, None)


def test_results_are_cached_per_pid_and_start_time(tmp_path):
    now = [100.0]
    resolver = ProcResolver(tmp_path, cache_ttl_s=10, monotonic=lambda: now[0])
    fake_process(tmp_path, 501, environ={"SLURM_JOB_ID": "1"}, start=1000)
    assert resolver.owner(501).job_key == "slurm:1"
    fake_process(tmp_path, 501, environ={"SLURM_JOB_ID": "2"}, start=1000)  # same process, say, re-read
    now[0] += 5
    assert resolver.owner(501).job_key == "slurm:1"  # cached
    now[0] += 6
    assert resolver.owner(501).job_key == "slurm:2"  # expired
    fake_process(tmp_path, 501, environ={"SLURM_JOB_ID": "3"}, start=2000)  # the pid is reused
    assert resolver.owner(501).job_key == "slurm:3"  # at once, not from the cache


def test_this_process_on_the_real_proc():
    owner = ProcResolver().owner(os.getpid())
    assert owner.user == ME
    assert owner.job_key is None or ":" in owner.job_key


def test_a_real_child_process_with_a_job_key():
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "WATTLEDGER_JOB_KEY")}
    env["WATTLEDGER_JOB_KEY"] = "api:discovery-test"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        resolver = ProcResolver()
        assert resolver.owner(child.pid) == ProcessOwner("api:discovery-test", ME)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ProcResolver().owner(child.pid) == ProcessOwner(None, None)
