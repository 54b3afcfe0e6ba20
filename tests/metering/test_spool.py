"""The on-disk spool: ordering, atomic writes, and quarantine of unreadable files."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from accounting.metering import spool as spool_module
from accounting.metering.spool import CorruptBatch, Spool


def batch(seq: int, **extra) -> dict:
    return {"version": 1, "node": "n1", "seq": seq, "intervals": [], **extra}


def test_put_load_remove_round_trip(tmp_path):
    spool = Spool(tmp_path / "spool")
    for seq in (10, 2, 1):
        spool.put(batch(seq, payload=[seq] * 3))
    assert spool.pending() == [1, 2, 10]  # numeric order, oldest first
    assert spool.depth() == 3
    assert (tmp_path / "spool" / "batch-000000000010.json").is_file()
    assert spool.load(10) == batch(10, payload=[10, 10, 10])
    spool.remove(2)
    spool.remove(2)  # removing twice is harmless
    assert spool.pending() == [1, 10]
    with pytest.raises(FileNotFoundError):
        spool.load(2)


def test_pending_ignores_files_that_are_not_batches(tmp_path):
    spool = Spool(tmp_path)
    spool.put(batch(1))
    spool.write_state({"next_seq": 2})
    for name in ("batch-1.json", "batch-000000000003.json.bak", "notes.txt"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "batch-000000000004.json").mkdir()
    assert spool.pending() == [1]


def test_a_seq_is_written_once(tmp_path):
    spool = Spool(tmp_path)
    spool.put(batch(7, payload="first"))
    with pytest.raises(FileExistsError):
        spool.put(batch(7, payload="second"))
    assert spool.load(7)["payload"] == "first"


@pytest.mark.parametrize("seq", [None, "1", -1, True, 1.0])
def test_put_needs_an_integer_seq(tmp_path, seq):
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="seq"):
        spool.put({"seq": seq})
    assert spool.pending() == []


def test_write_is_fsynced_then_renamed_then_directory_fsynced(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(f"fsync-{kind}")
        real_fsync(fd)

    def replace(src, dst):
        assert os.path.dirname(src) == str(tmp_path)  # temp file in the same directory
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    spool.put(batch(1))
    assert calls == ["fsync-file", "replace", "fsync-dir"]


def test_crash_before_rename_leaves_old_state_and_no_temp_file(tmp_path, monkeypatch):
    spool = Spool(tmp_path)
    spool.write_state({"next_seq": 5})

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        spool.write_state({"next_seq": 6})
    with pytest.raises(OSError):
        spool.put(batch(5))
    monkeypatch.undo()
    assert spool.read_state() == {"next_seq": 5}
    assert spool.pending() == []
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_unserialisable_batch_writes_nothing(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(ValueError):
        spool.put(batch(1, energy=float("nan")))  # NaN is not JSON
    assert os.listdir(tmp_path) == []


def test_stale_temp_files_from_a_crash_are_removed_at_start(tmp_path):
    Spool(tmp_path).put(batch(1))
    (tmp_path / ".tmp-abc123.json").write_text('{"seq": 2, "half')
    spool = Spool(tmp_path)
    assert spool.pending() == [1]
    assert sorted(os.listdir(tmp_path)) == ["batch-000000000001.json"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"seq": 3, "intervals": [{"uuid": "GPU-a", "ene',
        b"",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'{"seq": 4}',
    ],
    ids=["truncated", "empty", "not-utf8", "not-an-object", "wrong-seq"],
)
def test_corrupt_batch_is_quarantined_with_a_warning(tmp_path, caplog, content):
    spool = Spool(tmp_path)
    spool.put(batch(2))
    (tmp_path / "batch-000000000003.json").write_bytes(content)
    spool.put(batch(4))
    with caplog.at_level(logging.WARNING, logger=spool_module.__name__):
        with pytest.raises(CorruptBatch) as info:
            spool.load(3)
    assert info.value.seq == 3
    assert info.value.moved_to == tmp_path / "corrupt" / "batch-000000000003.json"
    assert (tmp_path / "corrupt" / "batch-000000000003.json").read_bytes() == content
    assert spool.pending() == [2, 4]  # the good batches are untouched
    assert any("batch-000000000003.json" in r.getMessage() for r in caplog.records)


def test_quarantine_never_overwrites_an_earlier_corrupt_file(tmp_path):
    spool = Spool(tmp_path)
    for garbage in (b"first", b"second"):
        (tmp_path / "batch-000000000001.json").write_bytes(garbage)
        with pytest.raises(CorruptBatch):
            spool.load(1)
    corrupt = tmp_path / "corrupt"
    assert (corrupt / "batch-000000000001.json").read_bytes() == b"first"
    assert (corrupt / "batch-000000000001.json.1").read_bytes() == b"second"


def test_state_round_trip_and_absence(tmp_path):
    spool = Spool(tmp_path)
    assert spool.read_state() is None
    state = {"next_seq": 3, "readings": {"GPU-a": {"energy_mj": 12}}}
    spool.write_state(state)
    assert spool.read_state() == state
    assert json.loads((tmp_path / "state.json").read_text()) == state
    spool.write_state({"next_seq": 4})
    assert spool.read_state() == {"next_seq": 4}


@pytest.mark.parametrize("content", [b'{"next_seq": ', b"[]"])
def test_corrupt_state_is_quarantined_and_reads_as_none(tmp_path, caplog, content):
    spool = Spool(tmp_path)
    (tmp_path / "state.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger=spool_module.__name__):
        assert spool.read_state() is None
    assert (tmp_path / "corrupt" / "state.json").read_bytes() == content
    assert not (tmp_path / "state.json").exists()
    assert caplog.records
