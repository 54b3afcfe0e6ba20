"""The Celery app. Broker from settings: Redis in production, SQLAlchemy-on-SQLite embedded.

With Redis, the same server keeps task results, for one task only: ingest stores its outcome so the
node's sampler can tell a batch the ledger has from one a broker lost (see `batch_confirmer`).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from accounting.config import Settings, get_settings

from .metrics import install_task_failure_counter
from .queues import QueueName
from .schedule import BEAT_SCHEDULE

# A confirmation must outlive the sampler's wait before re-sending; one that expired unread only
# costs a re-send, which ingest ignores as a duplicate. Redis holds ~0.4 KB per result: at
# 10,000 GPUs (125 batches/s) an hour is ~0.2 GB, a day would be ~4.6 GB (docs/scaling.md).
MIN_RESULT_EXPIRES_S = 3600


def result_expires_s(settings: Settings) -> int:
    return max(MIN_RESULT_EXPIRES_S, round(4 * settings.resolved_resend_after_s))


def _result_settings(settings: Settings, results: bool) -> dict:
    url = settings.resolved_broker_url
    if not results or not url.startswith(("redis://", "rediss://")):
        # The embedded SQLAlchemy broker keeps no results: its sampler deletes a batch once sent.
        return {}
    return {
        "result_backend": url,
        "result_expires": result_expires_s(settings),
        # A sampler asking about its batches while Redis hangs must not hang with it.
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 10,
    }


def _transport_options(settings: Settings) -> dict:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        # A message whose worker died unacknowledged goes back to the queue after the
        # visibility timeout; sweep for such messages often enough to notice soon after.
        timeout_s = settings.broker_visibility_timeout_s
        return {
            "visibility_timeout": timeout_s,
            "unacked_restore_interval": max(1, min(10, timeout_s // 2)),
            "unacked_restore_throttle": 1,
        }
    return {}  # the SQLAlchemy transport hands its options to create_engine: give it none


def make_celery(settings: Settings | None = None, *, results: bool = True) -> Celery:
    """The app; `results=False` gives a publisher that keeps no results. A sender should publish
    through one: with a result backend Celery subscribes the sender to every task's result channel,
    and while Redis is down that subscription retries for ~20 s (then needs an app restart) before
    the send fails, where a results-less publisher fails at once and the batch waits in the spool.
    A worker still stores the ingest result: that is the task's own setting (`ignore_result`)."""
    settings = settings or get_settings()
    app = Celery("wattledger", broker=settings.resolved_broker_url)
    app.conf.update(
        include=["workers.tasks.ledger", "workers.tasks.maintenance", "workers.tasks.chargeback"],
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(q.value) for q in QueueName],
        task_default_queue=QueueName.ingest.value,
        task_routes={
            "ledger.*": {"queue": QueueName.ingest.value},
            "maintenance.*": {"queue": QueueName.maintenance.value},
            "chargeback.*": {"queue": QueueName.maintenance.value},  # heavy: keep it off ingest
        },
        # A worker that dies mid-task gives the message back; ingest is idempotent.
        task_reject_on_worker_lost=True,
        # The ingest task buffers up to a group of batches (workers/tasks/ledger.py): a worker
        # process must be let hold that many unacknowledged.
        worker_prefetch_multiplier=settings.resolved_ingest_group_batches,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A worker whose broker went away keeps reconnecting (every 2, 4 … 30 s) for as long as it
        # takes, instead of exiting after 100 tries.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        beat_schedule=BEAT_SCHEDULE,
        timezone="UTC",
        **_result_settings(settings, results),
    )
    return app


app = make_celery()
install_task_failure_counter(app)
