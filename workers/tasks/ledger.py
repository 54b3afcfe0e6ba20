"""Ingest of sampler batches.

The task keeps its result (Redis only): the node's sampler reads it to confirm that the ledger has
a batch, and re-sends a batch whose result never appears (a message the broker lost).
"""

from __future__ import annotations

import gc
import logging

from celery.signals import worker_process_init
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for, session_scope
from accounting.errors import InvalidInput
from accounting.ledger import ingest

from ..celery_app import app
from ..queues import INGEST_TASK

log = logging.getLogger(__name__)


@worker_process_init.connect(weak=False, dispatch_uid="wattledger-ingest-gc")
def collect_less(**_) -> None:
    """Fewer garbage collections in a process that runs tasks. A batch decodes into a few objects
    per reading and ingest makes a few more, none in reference cycles (freed as they go); with
    CPython's default thresholds (a collection every 700 allocations, the whole heap whenever a
    quarter more survived), collections traversing the worker's heap took more time than the
    ingest itself. Start-up objects are frozen (never garbage), and a collection waits for
    100,000 allocations: cycles are still collected, later."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)


class BatchRejected(Exception):  # noqa: N818 — it names the outcome the sampler looks for
    """A batch the ledger refused as malformed. One plain message argument, so the result backend
    gives the sampler back this very type and it can tell a rejection from a transient failure."""


@app.task(
    name=INGEST_TASK,
    ignore_result=False,  # the sampler's confirmation (the app's default is to keep none)
    acks_late=True,  # idempotent per (node, seq): a redelivery after a crash counts once
    autoretry_for=(OperationalError, InterfaceError, IntegrityError),  # DB down / lock / race
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=30,
)
def ingest_batch(batch: dict) -> dict:
    engine = engine_for(get_settings().resolved_database_url)
    try:
        with session_scope(engine) as session:
            result = ingest.ingest_batch(session, batch, clock=SystemClock())
            session.commit()
    except InvalidInput as exc:
        # A batch our own sampler wrote should never be malformed: keep it in the log whole.
        log.error("rejected batch %s/%s: %s; batch=%r", batch.get("node"), batch.get("seq"), exc, batch)
        raise BatchRejected(f"batch {batch.get('node')}/{batch.get('seq')}: {exc}") from exc
    return {"node": result.node, "seq": result.seq, "duplicate": result.duplicate,
            "intervals": result.intervals, "energy_mj": result.energy_mj}
