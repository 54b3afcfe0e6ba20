"""A Celery task that takes its messages in groups (celery-batches), made safe for accounting.

`Batches` acknowledges a group once its task returns, whatever happened. `GroupedTask` leaves the
verdict to the task: it returns the ids of the messages to put back on the queue, and those are
rejected with requeue (back at the head of the queue), the rest acknowledged. A worker process
lost in the middle of a group (killed, out of memory) puts the whole group back at once, instead
of leaving it reserved until the worker restarts. And after a broker reconnection the flush timer
is started again.

`stopping()` tells a task, in any worker process (prefork children too), that the worker was asked
to shut down: the main process sets an event its children inherit.
"""

from __future__ import annotations

import logging
import multiprocessing

from celery import states
from celery.backends.base import DisabledBackend
from celery.backends.redis import RedisBackend
from celery.signals import worker_shutting_down
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

log = logging.getLogger(__name__)

# Made before the pool forks (task modules are imported first), so every child shares it.
_shutting_down = multiprocessing.Event()


@worker_shutting_down.connect(weak=False, dispatch_uid="wattledger-shutting-down")
def _on_shutdown(**_) -> None:
    _shutting_down.set()


def stopping() -> bool:
    """Whether this worker was asked to shut down (warm or cold)."""
    return _shutting_down.is_set()


class GroupedTask(Batches):
    abstract = True

    def Strategy(self, task, app, consumer):  # noqa: N802 — celery-batches' name
        # A reconnection restarts the consumer with a new timer; Batches kept the handle of its
        # flush timer on the old one and never started another, so batches received afterwards
        # waited for a full group (found by tests/integration/test_fault_redis_outage.py).
        self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests):
        """As Batches.flush, with the task's verdict on each message (see the module's doc)."""
        requests = list(requests)
        simple = ([SimpleRequest.from_request(r) for r in requests],)

        def on_return(result) -> None:
            back = set(result.get("give_back", ())) if isinstance(result, dict) else {r.id for r in requests}
            if not isinstance(result, dict):
                log.error("a group of %d %s messages ended without a verdict (%r): all go back to the queue",
                          len(requests), self.name, result)
            for request in requests:
                if request.id in back:
                    request.reject(requeue=True)
                else:
                    request.acknowledge()

        def on_error(exc_info) -> None:  # the worker process was lost (prefork)
            log.error("a worker process was lost during a group of %d %s messages (%s): all go back to the queue",
                      len(requests), self.name, getattr(exc_info, "exception", exc_info))
            for request in requests:
                request.reject(requeue=True)

        return self._pool.apply_async(apply_batches_task, (self, simple, 0, None),
                                      callback=on_return, error_callback=on_error)


def store_successes(backend, done: list[tuple[SimpleRequest, dict]]) -> None:
    """Each successful request's result, as Celery's `mark_as_done` keeps it (a success already
    there stays: a redelivered batch's duplicate run does not hide the run that ingested it), in
    two Redis round trips for the group where mark_as_done takes two per request."""
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
