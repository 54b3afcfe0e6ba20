"""Finishing a job while a batch of its GPUs is being ingested: no lock waits on each other.

Ingest locks the GPU rows, then writes ledger rows whose foreign key takes a KEY SHARE lock on
the job; finishing locks the job row, then the GPU rows. With FOR UPDATE on the job the two
waited on each other (PostgreSQL: "deadlock detected"); FOR NO KEY UPDATE does not conflict
with KEY SHARE, so the ingest goes on and the finish waits only for the GPU locks.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import FakeClock, to_datetime
from accounting.db import lock_gpus
from accounting.jobs.service import create_job, get_job
from accounting.ledger.models import LedgerEntry
from tests.conftest import T0_US, truncate_all
from tests.factories import job


def test_a_job_locked_for_finishing_does_not_block_ingest_writing_its_ledger(pg_engine):
    truncate_all(pg_engine)
    clock = FakeClock(T0_US + 3_600_000_000)
    with Session(pg_engine) as setup:
        created = create_job(setup, job("j1", ["GPU-a"], T0_US), clock=clock)
        setup.commit()
        job_id = created.id
        gpu_id = setup.execute(sa.text("SELECT id FROM gpu WHERE uuid = 'GPU-a'")).scalar_one()
    try:
        with Session(pg_engine) as finishing, Session(pg_engine) as ingesting:
            get_job(finishing, job_id, for_update=True)  # the finish path's first lock
            ingesting.execute(sa.text("SET LOCAL lock_timeout = '2s'"))  # a wait fails instead of hanging
            lock_gpus(ingesting, [gpu_id])
            ingesting.execute(sa.insert(LedgerEntry.__table__).values(
                gpu_id=gpu_id, hour=to_datetime(T0_US), account=f"job:{job_id}", job_id=job_id,
                method="counter", energy_mj=1, gpu_us=1))  # raises LockNotAvailable under FOR UPDATE
            ingesting.commit()
            finishing.rollback()
    finally:
        truncate_all(pg_engine)
