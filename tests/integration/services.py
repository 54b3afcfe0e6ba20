"""Throwaway services the fault tests may break: a Redis server and a PostgreSQL cluster of their
own, on free loopback ports, so stopping them never touches the machine's shared 5432 and 6379.

Each is a real server process; `stop()`/`start()` (and `restart()` for PostgreSQL) are what the
tests use to inject the fault, and `close()` leaves no process or data directory behind.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from workers.processes import free_port


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


class RedisServer:
    """`redis-server` with no persistence: a stop loses everything in it, as a crash would."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"redis-{self.starts}.log"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait(self.ping, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: the server exits without saving (persistence is off) and forgets every queue."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("no PostgreSQL server binaries (pg_ctl, initdb) found")
    return Path(pg_ctl).parent


class PgCluster:
    """A PostgreSQL cluster in a temp directory (initdb, pg_ctl), trust auth on loopback.

    initdb refuses to run as root: as root the cluster belongs to the `postgres` user.
    """

    def __init__(self) -> None:
        self.bin, self.port = _pg_bin(), free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wattledger-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout_s: float = 60) -> None:
        subprocess.run([*self._as, str(self.bin / args[0]), *args[1:]], check=True, timeout=timeout_s,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        log = ["-l", str(self.log)] if action in ("start", "restart") else []
        self._run("pg_ctl", action, "-D", str(self.data), *log, "-w", "-t", "30", *extra)

    def start(self) -> None:
        self._pg_ctl("start")
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session (their transactions roll back)."""
        self._pg_ctl("stop", "-m", mode)
        self.started = False

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")
        self.started = True

    def close(self) -> None:
        try:
            if self.started or (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except (subprocess.SubprocessError, OSError):
            self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
