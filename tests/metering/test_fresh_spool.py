"""A node that lost its spool (reinstalled under the same name) is not taken for its old self.

The ledger counts a (node, seq) once. A fresh spool that started at seq 1 again had its batches
dropped as "already ingested" until its seqs passed the old ones: hours of energy lost without an
error. A fresh spool now starts at the clock's µs, above any seq an earlier spool reached.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from accounting.clock import US_PER_HOUR, US_PER_S, FakeClock
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Training
from accounting.ledger.ingest import ingest_batch
from accounting.ledger.models import LedgerEntry
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool, batch_name, fresh_first_seq
from tests.conftest import T0_US


def _batches(fleet, clock, spool_dir, start_us: int, flushes: int) -> list[dict]:
    sampler = Sampler(backend=fleet, spool=Spool(spool_dir), clock=clock, node="n1",
                      first_seq=fresh_first_seq(clock))
    sent: list[dict] = []
    for k in range(flushes * 10 + 1):
        clock.set(start_us + k * US_PER_S)
        sampler.sample()
        if k and k % 10 == 0:
            sampler.flush()
    sampler.ship(sent.append)
    return sent


def test_a_reinstalled_node_with_an_empty_spool_has_its_batches_counted(session, tmp_path):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM"], clock=clock, seed=1, node="n1")
    fleet.assign(fleet.gpus()[0].uuid, T0_US, T0_US + 2 * US_PER_HOUR, Training())
    before = _batches(fleet, clock, tmp_path / "old-spool", T0_US, flushes=3)
    after = _batches(fleet, clock, tmp_path / "new-spool", T0_US + US_PER_HOUR, flushes=3)  # spool lost

    assert min(b["seq"] for b in after) > max(b["seq"] for b in before)
    results = [ingest_batch(session, b, clock=clock) for b in before + after]
    assert not any(r.duplicate for r in results)
    booked = session.execute(sa.select(sa.func.sum(LedgerEntry.energy_mj))).scalar_one()
    shipped = sum(i["energy_mj"] for b in before + after for i in b["intervals"])
    assert booked == shipped > 0


def test_the_spool_lists_batches_whose_seq_has_more_than_twelve_digits(tmp_path):
    spool = Spool(tmp_path)
    seq = 1_764_000_000_000_000  # a fresh spool's first seq: now in µs
    spool.put({"seq": seq, "node": "n1"})
    assert (tmp_path / batch_name(seq)).exists()
    assert spool.pending() == [seq]
    assert json.loads((tmp_path / batch_name(seq)).read_text())["seq"] == seq
