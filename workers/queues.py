"""Every queue, named in one place."""

from enum import StrEnum


class QueueName(StrEnum):
    ingest = "ingest"  # sampler batches → ledger (central ingest workers)
    maintenance = "maintenance"  # beat: retention, checks


INGEST_TASK = "ledger.ingest_batch"
