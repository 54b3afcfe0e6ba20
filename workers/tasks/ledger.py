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

from celery import signals, states
from celery.backends.base import DisabledBackend
from celery.backends.redis import RedisBackend
from celery.signals import worker_process_init
from celery_batches import Batches, SimpleRequest

from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for

from ..celery_app import app
from ..ingest import BatchRejected, GiveBack, ingest_group  # noqa: F401 — BatchRejected: its old home
from ..queues import INGEST_TASK, QueueName

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


class GroupedIngest(Batches):
    """celery-batches' Batches, made to survive a broker reconnection.

    A lost broker connection restarts the worker's consumer, which asks every task for its
    strategy again and starts a new timer; Batches kept the handle of its flush timer on the old
    one and so never started another: batches received after the reconnection waited for a full
    group, however long (found by tests/integration/test_fault_redis_outage.py)."""

    def Strategy(self, task, app, consumer):  # noqa: N802 — celery-batches' name
        self._tref = None  # the old timer went with the old consumer
        return super().Strategy(task, app, consumer)


@app.task(
    name=INGEST_TASK,
    base=GroupedIngest,
    flush_every=_settings.resolved_ingest_group_batches,
    flush_interval=_settings.ingest_group_wait_s,
    ignore_result=False,  # the sampler's confirmation (the app's default is to keep none)
    acks_late=True,  # idempotent per (node, seq): a redelivery after a crash counts once
)
def ingest_batch(requests: list[SimpleRequest]) -> None:
    task = app.tasks[INGEST_TASK]
    began = time.perf_counter()
    log.info("ingesting a group of %d batches", len(requests))
    outcomes = ingest_group(engine_for(get_settings().resolved_database_url), [batch_of(r) for r in requests],
                            clock=SystemClock())
    took_s = time.perf_counter() - began
    done = [(r, o) for r, o in zip(requests, outcomes, strict=True) if isinstance(o, dict)]
    for request, outcome in done:  # as Celery logs a task of its own (the time is the group's)
        log.info("Task %s[%s] succeeded in %.3fs: %r", INGEST_TASK, request.id, took_s, outcome)
    store_successes(task.backend, done)
    for request, outcome in zip(requests, outcomes, strict=True):
        if not isinstance(outcome, dict):
            report_other(task, request, outcome)
    log.info("ingested %d of %d batches (%d intervals) in %.0f ms", len(done), len(requests),
             sum(o["intervals"] for _, o in done), 1000 * (time.perf_counter() - began))


def batch_of(request: SimpleRequest):
    return request.args[0] if request.args else request.kwargs.get("batch")


def store_successes(backend, done: list[tuple[SimpleRequest, dict]]) -> None:
    """Each ingested batch's result, as Celery's `mark_as_done` keeps it (a success already there
    stays: a redelivered batch's duplicate run does not hide the run that ingested it), in two
    Redis round trips for the group where mark_as_done takes two per batch."""
    done = [(request, outcome) for request, outcome in done if not request.ignore_result]
    if not done or isinstance(backend, DisabledBackend):
        return
    if not isinstance(backend, RedisBackend):
        for request, outcome in done:
            backend.mark_as_done(request.id, outcome, request=request)
        return
    with backend.client.pipeline(transaction=False) as pipe:
        for request, _ in done:
            pipe.get(backend.get_key_for_task(request.id))
        stored = pipe.execute()
    done = [item for item, value in zip(done, stored, strict=True)
            if not value or backend.decode(value).get("status") != states.SUCCESS]
    with backend.client.pipeline(transaction=False) as pipe:
        for request, outcome in done:
            meta = backend._get_result_meta(result=outcome, state=states.SUCCESS, traceback=None, request=request)
            meta["task_id"] = request.id
            key, value = backend.get_key_for_task(request.id), backend.encode(meta)
            if backend.expires:
                pipe.setex(key, backend.expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)  # as RedisBackend._set: for anyone waiting on the result
        pipe.execute()


def report_other(task, request: SimpleRequest, outcome) -> None:
    """A batch not ingested: published again under the same task id (GiveBack), or failed (stored
    as the task's failure, which a sampler reads, and counted)."""
    name = f"{INGEST_TASK}[{request.id}]"
    if isinstance(outcome, GiveBack):
        try:
            task.apply_async(args=request.args, kwargs=request.kwargs, task_id=request.id,
                             queue=QueueName.ingest.value, compression="zlib", countdown=outcome.delay_s)
            log.warning("%s given back to the queue: %s", name, outcome.reason)
            return
        except Exception as exc:  # noqa: BLE001 — the broker too: the sampler sends it again
            log.error("%s could not be given back (%r); the sampler will send it again", name, exc)
            outcome = exc
    log.error("%s failed: %r", name, outcome)
    if not isinstance(task.backend, DisabledBackend):
        task.backend.mark_as_failure(request.id, outcome, request=request, call_errbacks=False)
    signals.task_failure.send(sender=task, task_id=request.id, exception=outcome, args=request.args,
                              kwargs=request.kwargs, traceback=None, einfo=None)
