"""The sampler's batch format at the door of the ledger: a bad field is InvalidInput naming it,
and nothing is stored; a batch within the bounds is taken whole."""

from __future__ import annotations

import copy

import pytest
import sqlalchemy as sa

from accounting.errors import InvalidInput
from accounting.ledger.batch import MAX_GPUS, MAX_PIDS
from accounting.ledger.ingest import ingest_batch, parse_batch
from tests.conftest import T0_US
from tests.factories import batch

GOOD = batch("node-1", 7, "GPU-a", T0_US, 3)


def changed(path: tuple, value) -> dict:
    raw = copy.deepcopy(GOOD)
    *parents, last = path
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


@pytest.mark.parametrize(("path", "value", "field"), [
    (("node",), "node\x00", "node"),
    (("seq",), 2**63, "seq"),
    (("seq",), -1, "seq"),
    (("created_us",), 10**17, "created_us"),
    (("gpus", 0, "uuid"), "GPU-\x00", "gpus.0.uuid"),
    (("gpus", 0, "name"), "n" * 201, "gpus.0.name"),
    (("gpus",), [{"uuid": f"GPU-{k}"} for k in range(MAX_GPUS + 1)], "gpus"),
    (("intervals", 0, "energy_mj"), float("nan"), "intervals.0.energy_mj"),
    (("intervals", 0, "memory_used_bytes"), 2**63, "intervals.0.memory_used_bytes"),
    (("intervals", 0, "sm_active_pct"), float("inf"), "intervals.0.sm_active_pct"),
    (("intervals", 0, "pids"), [-1], "intervals.0.pids.0"),
    (("intervals", 0, "pids"), list(range(MAX_PIDS + 1)), "intervals.0.pids"),
    (("intervals", 0, "processes"), [{"pid": 1, "user": "root\x00"}], "intervals.0.processes.0.user"),
    (("intervals", 0, "processes"), [{"pid": 1, "job_key": "slurm:\x00"}], "intervals.0.processes.0.job_key"),
    (("events",), [{"at_us": T0_US, "kind": "xid", "detail": "\x00"}], "events.0.detail"),
])
def test_a_bad_field_is_invalid_input_naming_it(path, value, field):
    with pytest.raises(InvalidInput) as raised:
        parse_batch(changed(path, value))
    assert raised.value.field == field


def test_a_bad_batch_stores_nothing(session, clock):
    with pytest.raises(InvalidInput):
        ingest_batch(session, changed(("node",), "node\x00"), clock=clock)
    assert session.execute(sa.text("SELECT count(*) FROM ingestedbatch")).scalar_one() == 0
    assert session.execute(sa.text("SELECT count(*) FROM gpu")).scalar_one() == 0


def test_a_batch_within_the_bounds_is_taken_whole(session, clock):
    raw = changed(("intervals", 0, "pids"), list(range(MAX_PIDS)))
    result = ingest_batch(session, raw, clock=clock)
    assert (result.duplicate, result.intervals) == (False, 3)
