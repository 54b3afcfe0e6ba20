"""Which job a GPU process belongs to, read from /proc on the node: the real ProcessResolver.

A process's job comes from, in this order (or cgroup first with `cgroup_first=True`):

1. its environment at exec (/proc/<pid>/environ): `WATTLEDGER_JOB_KEY=<source>:<id>` verbatim,
   or a scheduler's job variable mapped to a source (`SLURM_JOB_ID=48121` → "slurm:48121");
2. its cgroup (/proc/<pid>/cgroup): Slurm's job cgroup (v1 `/slurm/uid_1000/job_48121/…`,
   v2 `/system.slice/slurmstepd.scope/job_48121/…`) → "slurm:48121", or a Kubernetes pod
   (`…/kubepods/burstable/pod<uid>/…`, `…kubepods-burstable-pod<uid with _>.slice…`) → "k8s:<uid>".

The user is the real uid of /proc/<pid>/status, named through pwd ("uid:<n>" when unknown).
The environment is the user's to set; the cgroup is not (slurmstepd and the kubelet put
processes there). Where chargeback must not be gamed, prefer `cgroup_first=True`.

A process that is gone or unreadable resolves to ProcessOwner(None, None), never an exception.
Results are cached per (pid, start time), since pids are reused, for `cache_ttl_s`.
"""

from __future__ import annotations

import pwd
import re
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from accounting.gpu.backend import ProcessOwner

JOB_KEY_VAR = "WATTLEDGER_JOB_KEY"
DEFAULT_ENV_VARS: tuple[str, ...] = ("SLURM_JOB_ID", JOB_KEY_VAR)
DEFAULT_ENV_SOURCES: Mapping[str, str] = {"SLURM_JOB_ID": "slurm"}

_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")  # Job.source: 1..64 characters
_EXTERNAL_ID = re.compile(r"[!-~]{1,200}")  # Job.external_id: printable ASCII, no spaces
_SLURM_JOB = re.compile(r"/job_(\d+)(?=/|$)")
_POD_UID = re.compile(
    r"(?:^|[/\-])pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})"
    r"(?=\.slice|/|$)"
)
_UNKNOWN = ProcessOwner(None, None)
_GONE = (FileNotFoundError, ProcessLookupError)  # ESRCH: the process exited while we read


class _Vanished(Exception):
    """The process exited (or its pid was reused) while it was being read."""


def job_key_from_environ(
    environ: Mapping[str, str], env_vars: Sequence[str], env_sources: Mapping[str, str]
) -> str | None:
    """The first of `env_vars` that is set and well-formed, as "<source>:<id>"."""
    for var in env_vars:
        value = environ.get(var, "").strip()
        if not value:
            continue
        if var == JOB_KEY_VAR:
            source, sep, external_id = value.partition(":")
            if sep and _SOURCE.fullmatch(source) and _EXTERNAL_ID.fullmatch(external_id):
                return value
        elif _EXTERNAL_ID.fullmatch(value):
            return f"{env_sources[var]}:{value}"
    return None


def job_key_from_cgroup(text: str) -> str | None:
    """A Slurm job or a Kubernetes pod named in the lines of a /proc/<pid>/cgroup file."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "slurm" in path and (match := _SLURM_JOB.search(path)):
            return f"slurm:{match.group(1)}"
        if "kubepods" in path and (match := _POD_UID.search(path)):
            return f"k8s:{match.group(1).replace('_', '-')}"
    return None


def parse_environ(raw: bytes) -> dict[str, str]:
    """NUL-separated NAME=value entries; the first definition of a name wins, as in getenv."""
    environ: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep and name and name not in environ:
            environ[name] = value
    return environ


def start_time_of(stat: str) -> int:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks after boot). The command name
    (field 2) is in parentheses and may hold spaces and parentheses: count from the last ')'."""
    return int(stat[stat.rindex(")") + 1 :].split()[19])


def real_uid_of(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


class ProcResolver:
    """ProcessResolver over a /proc tree (the real one, or a fake one in tests)."""

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        env_vars: Sequence[str] = DEFAULT_ENV_VARS,
        *,
        env_sources: Mapping[str, str] = DEFAULT_ENV_SOURCES,
        cache_ttl_s: float = 30.0,
        cgroup_first: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        unmapped = [v for v in env_vars if v != JOB_KEY_VAR and v not in env_sources]
        if unmapped:
            raise ValueError(f"no job source for environment variable(s) {unmapped}; add them to env_sources")
        bad = [s for s in env_sources.values() if not _SOURCE.fullmatch(s)]
        if bad:
            raise ValueError(f"job sources must be 1..64 of [A-Za-z0-9_.-]: {bad}")
        self.proc_root = Path(proc_root)
        self.env_vars = tuple(env_vars)
        self.env_sources = dict(env_sources)
        self.cache_ttl_s = cache_ttl_s
        self.cgroup_first = cgroup_first
        self._monotonic = monotonic
        self._cache: dict[tuple[int, int], tuple[float, ProcessOwner]] = {}

    def owner(self, pid: int) -> ProcessOwner:
        try:
            started = self._start_time(pid)
            now = self._monotonic()
            cached = self._cache.get((pid, started))
            if cached and now - cached[0] < self.cache_ttl_s:
                return cached[1]
            found = self._resolve(pid)
            if self._start_time(pid) != started:
                return _UNKNOWN  # the pid was reused while we read it
        except (_Vanished, OSError, ValueError, IndexError):
            return _UNKNOWN
        self._remember((pid, started), now, found)
        return found

    def _remember(self, key: tuple[int, int], now: float, found: ProcessOwner) -> None:
        if len(self._cache) >= 4096:  # drop expired entries (exited processes) now and then
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.cache_ttl_s}
        self._cache[key] = (now, found)

    def _start_time(self, pid: int) -> int:
        try:
            return start_time_of((self.proc_root / str(pid) / "stat").read_text())
        except _GONE as exc:
            raise _Vanished from exc

    def _read(self, pid: int, name: str) -> bytes | None:
        """A file of the process; None where we may not read it (another user's environ)."""
        try:
            return (self.proc_root / str(pid) / name).read_bytes()
        except _GONE as exc:
            raise _Vanished from exc
        except OSError:
            return None

    def _resolve(self, pid: int) -> ProcessOwner:
        readers = [self._from_environ, self._from_cgroup]
        if self.cgroup_first:
            readers.reverse()
        job_key = None
        for reader in readers:
            if job_key := reader(pid):
                break
        status = self._read(pid, "status")
        uid = real_uid_of(status.decode("utf-8", "replace")) if status is not None else None
        return ProcessOwner(job_key, user_name(uid) if uid is not None else None)

    def _from_environ(self, pid: int) -> str | None:
        raw = self._read(pid, "environ")
        if raw is None:
            return None
        return job_key_from_environ(parse_environ(raw), self.env_vars, self.env_sources)

    def _from_cgroup(self, pid: int) -> str | None:
        raw = self._read(pid, "cgroup")
        return job_key_from_cgroup(raw.decode("utf-8", "replace")) if raw is not None else None
