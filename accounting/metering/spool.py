"""The node's on-disk spool: batches waiting for the broker, batches waiting for the ledger's
confirmation, and the sampler's state.

A directory holds `batch-<seq:012d>.json` files (not sent yet) and `state.json`. A batch sent
through a transport that can confirm delivery moves to `sent/` next to a receipt
(`batch-<seq>.receipt.json`: the transport's id for the send, when it was sent, how many times)
and stays there until the ledger confirms it; one the ledger refused as malformed moves to
`rejected/` for an operator. Every write is atomic (a temp file in the target directory, fsync,
os.replace, fsync of the directory), so after a crash a file is either the old version or the new
one, never half of each. A file that is unreadable anyway (a crash under older code, a disk error)
is moved aside to `corrupt/` with a warning: the operator can inspect it, and the sampler keeps
going.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accounting.clock import Clock
from accounting.errors import AccountingError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
CORRUPT_DIR = "corrupt"
SENT_DIR = "sent"
REJECTED_DIR = "rejected"
_TMP_PREFIX = ".tmp-"
_BATCH_RE = re.compile(r"^batch-(\d{12,20})\.json$")  # seqs past 10^12: a fresh spool starts at now in µs
_RECEIPT_RE = re.compile(r"^batch-(\d{12,20})\.receipt\.json$")


class CorruptBatch(AccountingError):
    """A spooled batch could not be read; it has been moved to `corrupt/`."""

    def __init__(self, seq: int, moved_to: Path) -> None:
        super().__init__(f"spooled batch {seq} is corrupt; moved to {moved_to}")
        self.seq = seq
        self.moved_to = moved_to


def fresh_first_seq(clock: Clock) -> int:
    """The first seq of a new spool: now in µs. The ledger counts a (node, seq) once, so a node
    that lost its spool (reinstalled under the same name) must not start at 1 again: its batches
    would be taken for old ones and dropped. An earlier spool started lower (at 1, or at its own
    start time) and sent at most one batch per flush, so it never got this far."""
    return max(1, clock.now_us())


def batch_name(seq: int) -> str:
    return f"batch-{seq:012d}.json"


def receipt_name(seq: int) -> str:
    return f"batch-{seq:012d}.receipt.json"


@dataclass(frozen=True)
class Shipment:
    """A sent batch waiting for the ledger's confirmation."""

    seq: int
    receipt: str | None  # the transport's id of the last send; None when the receipt is missing
    sent_us: int  # when it was last sent (0 when unknown: due for a re-send)
    sends: int


class Spool:
    """Batches keyed by their `seq`, plus one state document, in one directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.sent_dir = self.path / SENT_DIR
        self._drop_stale_temp_files(self.path)
        if self.sent_dir.is_dir():
            self._drop_stale_temp_files(self.sent_dir)
            self._drop_orphan_receipts()

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
        """Seqs of the batches not sent yet, oldest first."""
        return _batch_seqs(self.path)

    def depth(self) -> int:
        return len(self.pending())

    def load(self, seq: int, *, sent: bool = False) -> dict[str, Any]:
        """The batch `seq` (from `sent/` when `sent`). Raises CorruptBatch (after quarantining
        it) if it cannot be read; FileNotFoundError if there is no such batch."""
        target = (self.sent_dir if sent else self.path) / batch_name(seq)
        try:
            batch = self._read_json(target)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise CorruptBatch(seq, self._quarantine_batch(target, seq, exc)) from exc
        if not isinstance(batch, dict) or batch.get("seq") != seq:
            raise CorruptBatch(seq, self._quarantine_batch(target, seq, ValueError("not a batch for its seq")))
        return batch

    def remove(self, seq: int) -> None:
        """Delete batch `seq` (shipped); removing a missing batch is a no-op."""
        try:
            (self.path / batch_name(seq)).unlink()
        except FileNotFoundError:
            return
        self._fsync_dir(self.path)

    # batches sent, waiting for the ledger's confirmation

    def mark_sent(self, seq: int, *, receipt: str, sent_us: int) -> None:
        """Batch `seq` went out under `receipt`: keep it in `sent/` until the ledger confirms it.

        The receipt is written before the batch moves, so a crash in between leaves the batch
        pending, to be sent again: harmless, the ledger counts a (node, seq) once.
        """
        self.sent_dir.mkdir(exist_ok=True)
        previous = self._read_receipt(seq)
        sends = previous.sends + 1 if previous else 1
        self._write_atomic(self.sent_dir / receipt_name(seq),
                           {"seq": seq, "receipt": receipt, "sent_us": sent_us, "sends": sends})
        source = self.path / batch_name(seq)
        if source.exists():
            os.replace(source, self.sent_dir / batch_name(seq))
            self._fsync_dir(self.sent_dir)
            self._fsync_dir(self.path)

    def awaiting(self) -> list[Shipment]:
        """The sent batches not confirmed yet, oldest first."""
        if not self.sent_dir.is_dir():
            return []
        return [self._read_receipt(seq) or Shipment(seq, None, 0, 0) for seq in _batch_seqs(self.sent_dir)]

    def confirmed(self, seq: int) -> None:
        """The ledger has batch `seq`: forget it (the batch first, then its receipt)."""
        for name in (batch_name(seq), receipt_name(seq)):
            try:
                (self.sent_dir / name).unlink()
            except FileNotFoundError:
                pass
        self._fsync_dir(self.sent_dir)

    def reject(self, seq: int) -> Path:
        """The ledger refused batch `seq` as malformed: move it to `rejected/` for an operator;
        returns where it went."""
        dest = self._move_aside(self.sent_dir / batch_name(seq), REJECTED_DIR)
        try:
            (self.sent_dir / receipt_name(seq)).unlink()
        except FileNotFoundError:
            pass
        self._fsync_dir(self.sent_dir)
        return dest

    def rejected(self) -> int:
        """How many batches wait in `rejected/` for an operator."""
        folder = self.path / REJECTED_DIR
        return sum(1 for e in os.scandir(folder) if e.is_file()) if folder.is_dir() else 0

    def _read_receipt(self, seq: int) -> Shipment | None:
        try:
            doc = self._read_json(self.sent_dir / receipt_name(seq))
            return Shipment(seq, str(doc["receipt"]), int(doc["sent_us"]), int(doc["sends"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # Without its receipt the batch is simply due for a re-send, which is harmless.
            log.warning("receipt of sent batch %d is unreadable (%s); it will be sent again", seq, exc)
            return None

    def _drop_orphan_receipts(self) -> None:
        # A receipt whose batch is gone: a crash between confirming the batch and its receipt.
        for entry in os.scandir(self.sent_dir):
            match = _RECEIPT_RE.match(entry.name)
            if match and not (self.sent_dir / batch_name(int(match.group(1)))).exists():
                os.unlink(entry.path)

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
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".json", dir=target.parent)
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
        self._fsync_dir(target.parent)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # platforms that cannot open a directory (Windows)
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _quarantine(self, target: Path, reason: BaseException) -> Path:
        dest = self._move_aside(target, CORRUPT_DIR)
        log.warning("spool file %s is unreadable (%s); moved to %s", target, reason, dest)
        return dest

    def _quarantine_batch(self, target: Path, seq: int, reason: BaseException) -> Path:
        dest = self._quarantine(target, reason)
        if target.parent == self.sent_dir:
            (self.sent_dir / receipt_name(seq)).unlink(missing_ok=True)
        return dest

    def _move_aside(self, target: Path, folder_name: str) -> Path:
        """Move `target` into the spool's `folder_name/` without overwriting anything there."""
        folder = self.path / folder_name
        folder.mkdir(exist_ok=True)
        dest = folder / target.name
        n = 0
        while dest.exists():
            n += 1
            dest = folder / f"{target.name}.{n}"
        os.replace(target, dest)
        self._fsync_dir(folder)
        self._fsync_dir(target.parent)
        return dest

    @staticmethod
    def _drop_stale_temp_files(path: Path) -> None:
        # A temp file is a write that never reached os.replace: its writer never returned
        # success, so nothing refers to it.
        for entry in os.scandir(path):
            if entry.name.startswith(_TMP_PREFIX) and entry.is_file():
                log.info("removing unfinished spool write %s", entry.path)
                os.unlink(entry.path)


def _batch_seqs(folder: Path) -> list[int]:
    seqs = []
    for entry in os.scandir(folder):
        match = _BATCH_RE.match(entry.name)
        if match and entry.is_file():
            seqs.append(int(match.group(1)))
    return sorted(seqs)
