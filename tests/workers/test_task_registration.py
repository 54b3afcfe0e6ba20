"""The Celery surface: registered task names, queues, beat entries (a snapshot)."""

from __future__ import annotations

from celery_batches import Batches

import workers.tasks.chargeback  # noqa: F401,I001  (registers the tasks)
import workers.tasks.ledger  # noqa: F401
import workers.tasks.maintenance  # noqa: F401
from accounting.config import Settings, get_settings
from workers.celery_app import _transport_options, app, make_celery
from workers.ingest import TRANSIENT
from workers.processes import batch_confirmer
from workers.queues import QueueName
from workers.schedule import BEAT_SCHEDULE


def test_registered_task_names_snapshot():
    assert sorted(name for name in app.tasks if not name.startswith("celery.")) == [
        "chargeback.build_statement",
        "ledger.ingest_batch",
        "maintenance.expire_samples",
    ]


def test_ingest_takes_groups_of_batches_late_acked_and_keeps_each_result():
    task = app.tasks["ledger.ingest_batch"]
    assert isinstance(task, Batches) and task.acks_late
    assert task.ignore_result is False  # the sampler confirms its batches by this result
    assert all(t.ignore_result for name, t in app.tasks.items() if name != "ledger.ingest_batch"
               and not name.startswith("celery."))
    settings = get_settings()
    assert task.flush_every == settings.resolved_ingest_group_batches
    assert task.flush_interval == settings.ingest_group_wait_s
    # A worker process must be let hold a whole group unacknowledged, or it waits for the timer.
    assert app.conf.worker_prefetch_multiplier >= task.flush_every
    assert {e.__name__ for e in TRANSIENT} == {"OperationalError", "InterfaceError"}


def test_every_beat_entry_expires_and_names_a_known_queue():
    for entry in BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
        assert entry["options"]["expires"] > 0
        assert entry["options"]["queue"] in {q.value for q in QueueName}


def test_redis_gets_a_visibility_timeout_and_the_embedded_broker_none():
    assert _transport_options(Settings(broker_url="redis://127.0.0.1:6379/0", broker_visibility_timeout_s=30)) == {
        "visibility_timeout": 30, "unacked_restore_interval": 10, "unacked_restore_throttle": 1,
    }
    assert _transport_options(Settings(broker_url="sqla+sqlite:///x.db")) == {}


def test_redis_keeps_ingest_results_past_the_resend_wait_and_the_embedded_broker_none():
    redis_app = make_celery(Settings(broker_url="redis://127.0.0.1:6379/3"))
    assert redis_app.conf.result_backend == "redis://127.0.0.1:6379/3"
    assert redis_app.conf.result_expires == 3600  # an hour: ≥ 4 × the 300 s re-send wait
    slow = make_celery(Settings(broker_url="redis://127.0.0.1:6379/3", resend_after_s=1800))
    assert slow.conf.result_expires == 7200
    assert batch_confirmer(redis_app) is not None
    publisher = make_celery(Settings(broker_url="redis://127.0.0.1:6379/3"), results=False)
    assert not publisher.conf.result_backend  # a sender never subscribes to result channels
    embedded = make_celery(Settings(broker_url="sqla+sqlite:///x.db"))
    assert not embedded.conf.result_backend and batch_confirmer(embedded) is None


def test_a_worker_reconnects_to_its_broker_for_as_long_as_it_takes():
    conf = make_celery(Settings(broker_url="redis://127.0.0.1:6379/3")).conf
    assert conf.broker_connection_retry and conf.broker_connection_max_retries is None


def test_resend_waits_past_the_visibility_timeout_by_default():
    assert Settings(broker_visibility_timeout_s=120).resolved_resend_after_s == 300
    assert Settings(broker_visibility_timeout_s=5, resend_after_s=12).resolved_resend_after_s == 12


def test_a_group_holds_about_ten_thousand_readings_of_the_fleets_batches():
    assert Settings().resolved_ingest_group_batches == 125  # 8 GPUs × 10 s at 1 Hz: 80 readings a batch
    assert Settings(flush_interval_s=300).resolved_ingest_group_batches == 4  # 2,400 readings a batch
    assert Settings(flush_interval_s=3600, sample_interval_s=0.1).resolved_ingest_group_batches == 1
    assert Settings(ingest_group_readings=800).resolved_ingest_group_batches == 10
    assert Settings(ingest_group_batches=7).resolved_ingest_group_batches == 7
