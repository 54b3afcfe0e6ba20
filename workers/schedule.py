"""Beat schedule. Every entry expires, so a backlog after downtime does not pile up."""

from datetime import timedelta

from .queues import QueueName

BEAT_SCHEDULE = {
    "expire-raw-samples": {
        "task": "maintenance.expire_samples",
        "schedule": timedelta(hours=1),
        "options": {"queue": QueueName.maintenance.value, "expires": 50 * 60},
    },
}
