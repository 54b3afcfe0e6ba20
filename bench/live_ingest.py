"""Ingest going on in the background, as in production, while a benchmark reads.

A thread takes a small sampler batch into the ledger every `every_s` (the real
`ledger.ingest.ingest_batch`, one committed transaction each) for a few GPUs at the current
hour: the writes a statement cache must not be invalidated by, since they are outside every
finished month.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import SystemClock, hour_floor_us, to_datetime
from accounting.db import make_engine
from accounting.jobs.models import Gpu
from accounting.ledger.ingest import ingest_batch
from accounting.ledger.models import GpuEvent, IngestedBatch, LedgerEntry, Sample

STEP_US = 20_000  # each batch: one 20 ms interval per GPU
POWER_MW = 500_000  # 500 W


class LiveIngest(threading.Thread):
    def __init__(self, url: str, uuids: list[str], *, every_s: float = 0.02, node: str = "bench-live") -> None:
        super().__init__(name="live-ingest", daemon=True)
        self.url, self.uuids, self.every_s, self.node = url, uuids, every_s, node
        self.stop = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def __enter__(self) -> LiveIngest:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(30)

    def run(self) -> None:
        clock = SystemClock()
        engine = make_engine(self.url)
        start_us = clock.now_us()
        seq = start_us  # a fresh node's first seq, as a fresh spool numbers it
        try:
            while not self.stop.is_set():
                t0 = start_us + (seq - start_us) * STEP_US
                raw = {"version": 1, "node": self.node, "seq": seq,
                       "gpus": [],  # no description: the seeded GPUs stay exactly as they are
                       "intervals": [{"uuid": u, "start_us": t0, "end_us": t0 + STEP_US,
                                      "energy_mj": POWER_MW * STEP_US // 1_000_000_000, "method": "counter"}
                                     for u in self.uuids],
                       "events": []}
                with Session(engine) as session:
                    ingest_batch(session, raw, clock=clock)
                    session.commit()
                self.commits += 1
                seq += 1
                time.sleep(self.every_s)
        except BaseException as exc:  # noqa: BLE001 — reported by the benchmark
            self.error = exc
        finally:
            self._remove_what_it_added(engine, start_us)
            engine.dispose()

    def _remove_what_it_added(self, engine, start_us: int) -> None:
        """Leave the seeded database as it was (a later `--reuse` compares row counts)."""
        since = to_datetime(hour_floor_us(start_us))
        with Session(engine) as session:
            ids = sa.select(Gpu.id).where(Gpu.uuid.in_(self.uuids))
            for table in (LedgerEntry, Sample):
                column = table.hour if table is LedgerEntry else table.start_at
                session.execute(sa.delete(table).where(table.gpu_id.in_(ids), column >= since))
            session.execute(sa.delete(GpuEvent).where(GpuEvent.node == self.node))
            session.execute(sa.delete(IngestedBatch).where(IngestedBatch.node == self.node))
            session.commit()
