"""The Celery app. Broker from settings: Redis in production, SQLAlchemy-on-SQLite embedded."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from accounting.config import Settings, get_settings

from .metrics import install_task_failure_counter
from .queues import QueueName
from .schedule import BEAT_SCHEDULE


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


def make_celery(settings: Settings | None = None) -> Celery:
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
        worker_prefetch_multiplier=1,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=BEAT_SCHEDULE,
        timezone="UTC",
    )
    return app


app = make_celery()
install_task_failure_counter(app)
