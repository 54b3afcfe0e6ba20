"""Ingest of sampler batches, several to a transaction.

Each message is one node's batch. A worker buffers them (celery-batches) and ingests a group
in one transaction: about `ingest_group_readings` (10,000) readings' worth of the fleet's batches
(`Settings.resolved_ingest_group_batches`, 125 of 80 readings at the defaults), or what it has
once the first has waited `ingest_group_wait_s`. A 10 s batch of 8 GPUs is 80 readings, and a
transaction of its own cost more than its readings did. Each batch still keeps its own task
result (Redis only): the node's sampler reads it to confirm that the ledger has the batch, and
re-sends a batch whose result never appears (a message the broker lost).
"""

from __future__ import annotations

import gc
import logging
import time

from celery import signals
from celery.backends.base import DisabledBackend
from celery.signals import worker_process_init
from celery_batches import SimpleRequest

from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for

from ..celery_app import app
from ..grouping import GroupedTask, stopping, store_successes
from ..ingest import BatchRejected, GiveBack, Retrying, ingest_group  # noqa: F401 — BatchRejected: results name it here
from ..queues import INGEST_TASK

log = logging.getLogger(__name__)
_settings = get_settings()


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


@app.task(
    name=INGEST_TASK,
    base=GroupedTask,
    flush_every=_settings.resolved_ingest_group_batches,
    flush_interval=_settings.ingest_group_wait_s,
    ignore_result=False,  # the sampler's confirmation (the app's default is to keep none)
    acks_late=True,  # idempotent per (node, seq): a redelivery after a crash counts once
)
def ingest_batch(requests: list[SimpleRequest]) -> dict:
    """Ingest a group of batches; returns the ids of those to put back on the queue."""
    try:
        return {"give_back": ingest_and_report(requests)}
    except Exception:  # a fault of ours after the batches were taken: they stay on the queue
        log.exception("ingest of a group of %d batches failed; they go back to the queue", len(requests))
        time.sleep(1)  # not a hot loop if the fault repeats
        return {"give_back": [r.id for r in requests]}


def ingest_and_report(requests: list[SimpleRequest]) -> list[str]:
    task = app.tasks[INGEST_TASK]
    settings = get_settings()
    began = time.perf_counter()
    log.info("ingesting a group of %d batches", len(requests))
    outcomes = ingest_group(
        engine_for(settings.resolved_database_url), [batch_of(r) for r in requests], clock=SystemClock(),
        retrying=Retrying(budget_s=settings.broker_visibility_timeout_s / 2, stopping=stopping),
        group_readings=settings.ingest_group_readings)
    took_s = time.perf_counter() - began
    done = [(r, o) for r, o in zip(requests, outcomes, strict=True) if isinstance(o, dict)]
    for request, outcome in done:  # as Celery logs a task of its own (the time is the group's)
        log.info("Task %s[%s] succeeded in %.3fs: %r", INGEST_TASK, request.id, took_s, outcome)
    give_back = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, GiveBack):
            log.warning("%s[%s] goes back to the queue: %s", INGEST_TASK, request.id, outcome.reason)
            give_back.append(request.id)
        elif isinstance(outcome, Exception):
            report_failure(task, request, outcome)
    try:
        store_successes(task.backend, done)
    except Exception:  # noqa: BLE001 — ingested all the same: a sampler that asks in vain re-sends
        log.exception("could not store the results of %d ingested batches", len(done))
    log.info("ingested %d of %d batches (%d intervals) in %.0f ms", len(done), len(requests),
             sum(o["intervals"] for _, o in done), 1000 * took_s)
    return give_back


def batch_of(request: SimpleRequest):
    return request.args[0] if request.args else request.kwargs.get("batch")


def report_failure(task, request: SimpleRequest, exc: Exception) -> None:
    """A batch not ingested for a fault of its own: stored as the task's failure (which a sampler
    reads: BatchRejected is set aside, anything else sent again later) and counted."""
    log.error("%s[%s] failed: %r", INGEST_TASK, request.id, exc)
    try:
        if not isinstance(task.backend, DisabledBackend):
            task.backend.mark_as_failure(request.id, exc, request=request, call_errbacks=False)
    except Exception:  # noqa: BLE001 — a sampler that asks in vain sends it again
        log.exception("could not store the failure of %s[%s]", INGEST_TASK, request.id)
    signals.task_failure.send(sender=task, task_id=request.id, exception=exc, args=request.args,
                              kwargs=request.kwargs, traceback=None, einfo=None)
