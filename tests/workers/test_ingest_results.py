"""A group's results go to Redis in two round trips, kept exactly as Celery's mark_as_done keeps
them: the sampler's confirmer reads them, they expire like any result, a success stays."""

from __future__ import annotations

import uuid

import redis
from celery import states
from celery_batches import SimpleRequest

from accounting.config import Settings
from accounting.metering.sampler import Delivery
from tests.conftest import REDIS_URL
from workers.celery_app import make_celery
from workers.grouping import store_successes
from workers.processes import batch_confirmer
from workers.queues import INGEST_TASK


def request(task_id: str, *, ignore_result: bool = False) -> SimpleRequest:
    return SimpleRequest(id=task_id, name=INGEST_TASK, args=({"node": "n"},), kwargs={}, delivery_info={},
                         hostname="worker@test", ignore_result=ignore_result, reply_to=None, correlation_id=None,
                         request_dict={})


def test_a_groups_results_are_celerys_results_and_a_success_stays():
    redis.Redis.from_url(REDIS_URL).flushdb()
    app = make_celery(Settings(broker_url=REDIS_URL))
    backend = app.backend
    fresh, failed, succeeded, ignored = (str(uuid.uuid4()) for _ in range(4))
    backend.mark_as_failure(failed, RuntimeError("database down"))  # an earlier run that failed
    backend.mark_as_done(succeeded, {"duplicate": False})  # an earlier run that ingested it
    store_successes(backend, [(request(fresh), {"seq": 1, "duplicate": False}),
                              (request(failed), {"seq": 2, "duplicate": False}),
                              (request(succeeded), {"seq": 3, "duplicate": True}),
                              (request(ignored, ignore_result=True), {"seq": 4})])
    assert (app.AsyncResult(fresh).state, app.AsyncResult(fresh).result) == (
        states.SUCCESS, {"seq": 1, "duplicate": False})
    assert app.AsyncResult(failed).result == {"seq": 2, "duplicate": False}  # a success replaces a failure
    assert app.AsyncResult(succeeded).result == {"duplicate": False}  # the first success stays
    assert app.AsyncResult(ignored).state == states.PENDING
    confirm = batch_confirmer(app)
    assert confirm(fresh) is confirm(failed) is Delivery.confirmed
    ttl_s = redis.Redis.from_url(REDIS_URL).ttl(backend.get_key_for_task(fresh))
    assert 0 < ttl_s <= app.conf.result_expires
