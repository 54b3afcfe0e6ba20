"""The node's on-disk spool: batches waiting for the broker, and the sampler's state.

A directory holds `batch-<seq:012d>.json` files and `state.json`. Every write is atomic (a temp
file in the same directory, fsync, os.replace, fsync of the directory), so after a crash a file is
either the old version or the new one, never half of each. A file that is unreadable anyway (a
crash under older code, a disk error) is moved aside to `corrupt/` with a warning: the operator
can inspect it, and the sampler keeps going.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from accounting.errors import AccountingError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CORRUPT_DIR = "corrupt"
_TMP_PREFIX = ".tmp-"
_BATCH_RE = re.compile(r"^batch-(\d{12})\.json$")


class CorruptBatch(AccountingError):
    """A spooled batch could not be read; it has been moved to `corrupt/`."""

    def __init__(self, seq: int, moved_to: Path) -> None:
        super().__init__(f"spooled batch {seq} is corrupt; moved to {moved_to}")
        self.seq = seq
        self.moved_to = moved_to


def batch_name(seq: int) -> str:
    return f"batch-{seq:012d}.json"


class Spool:
    """Batches keyed by their `seq`, plus one state document, in one directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._drop_stale_temp_files()

    # batches

    def put(self, batch: dict[str, Any]) -> int:
        """Write `batch` under its `seq` atomically and durably; returns the seq.

        A seq is written once: an existing file with the same seq means two writers or a
        sampler that lost its state, and overwriting could lose a batch.
        """
        seq = batch.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"a spooled batch needs a non-negative integer seq, got {seq!r}")
        target = self.path / batch_name(seq)
        if target.exists():
            raise FileExistsError(f"spooled batch {seq} already exists at {target}")
        self._write_atomic(target, batch)
        return seq

    def pending(self) -> list[int]:
        """Seqs of the spooled batches, oldest first."""
        seqs = []
        for entry in os.scandir(self.path):
            match = _BATCH_RE.match(entry.name)
            if match and entry.is_file():
                seqs.append(int(match.group(1)))
        return sorted(seqs)

    def depth(self) -> int:
        return len(self.pending())

    def load(self, seq: int) -> dict[str, Any]:
        """The batch `seq`. Raises CorruptBatch (after quarantining it) if it cannot be read;
        FileNotFoundError if there is no such batch."""
        target = self.path / batch_name(seq)
        try:
            batch = self._read_json(target)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise CorruptBatch(seq, self._quarantine(target, exc)) from exc
        if not isinstance(batch, dict) or batch.get("seq") != seq:
            raise CorruptBatch(seq, self._quarantine(target, ValueError("not a batch for its seq")))
        return batch

    def remove(self, seq: int) -> None:
        """Delete batch `seq` (shipped); removing a missing batch is a no-op."""
        try:
            (self.path / batch_name(seq)).unlink()
        except FileNotFoundError:
            return
        self._fsync_dir()

    # state

    def read_state(self) -> dict[str, Any] | None:
        """The state document, or None when there is none (or it was corrupt and quarantined)."""
        target = self.path / STATE_FILE
        try:
            state = self._read_json(target)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._quarantine(target, exc)
            return None
        if not isinstance(state, dict):
            self._quarantine(target, ValueError("state is not a JSON object"))
            return None
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        self._write_atomic(self.path / STATE_FILE, state)

    # files

    @staticmethod
    def _read_json(target: Path) -> Any:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        return json.loads(target.read_bytes().decode("utf-8"))

    def _write_atomic(self, target: Path, document: dict[str, Any]) -> None:
        data = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".json", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        # The rename itself is durable only once the directory entry is on disk.
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # platforms that cannot open a directory (Windows)
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _quarantine(self, target: Path, reason: BaseException) -> Path:
        corrupt_dir = self.path / CORRUPT_DIR
        corrupt_dir.mkdir(exist_ok=True)
        dest = corrupt_dir / target.name
        n = 0
        while dest.exists():
            n += 1
            dest = corrupt_dir / f"{target.name}.{n}"
        os.replace(target, dest)
        self._fsync_dir()
        log.warning("spool file %s is unreadable (%s); moved to %s", target, reason, dest)
        return dest

    def _drop_stale_temp_files(self) -> None:
        # A temp file is a write that never reached os.replace: its writer never returned
        # success, so nothing refers to it.
        for entry in os.scandir(self.path):
            if entry.name.startswith(_TMP_PREFIX) and entry.is_file():
                log.info("removing unfinished spool write %s", entry.path)
                os.unlink(entry.path)
