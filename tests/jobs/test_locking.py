"""Finishing a job while a batch of its GPUs is being ingested: no lock waits on each other.

Ingest locks the GPU rows, then writes ledger rows whose foreign key takes a KEY SHARE lock on
the job; finishing locks the job row, then the GPU rows. With FOR UPDATE on the job the two
waited on each other (PostgreSQL: "deadlock detected"); FOR NO KEY UPDATE does not conflict
with KEY SHARE, so the ingest goes on and the finish waits only for the GPU locks.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import FakeClock, to_datetime
from accounting.db import lock_gpus
from accounting.jobs.service import create_job, get_job
from accounting.ledger.models import LedgerEntry
from accounting.ledger.service import register_gpus
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


def test_registering_a_job_while_ingest_holds_one_of_its_gpus_waits_instead_of_deadlocking(pg_engine):
    """Ingest holds GPU a and will want GPU b; a job on [b, a] is registered meanwhile. Its
    allocations' foreign keys used to take KEY SHARE on b, then wait for a: a cycle."""
    truncate_all(pg_engine)
    clock = FakeClock(T0_US + 3_600_000_000)
    with Session(pg_engine) as setup:
        ids = register_gpus(setup, ["GPU-a", "GPU-b"], now_us=T0_US)
        setup.commit()
    failures: list[BaseException] = []

    def register_job() -> None:
        try:
            with Session(pg_engine) as registering:
                create_job(registering, job("j2", ["GPU-b", "GPU-a"], T0_US), clock=clock)
                registering.commit()
        except BaseException as exc:  # noqa: BLE001 — reported by the test below
            failures.append(exc)

    try:
        with Session(pg_engine) as ingesting:
            lock_gpus(ingesting, [ids["GPU-a"]])
            thread = threading.Thread(target=register_job)
            thread.start()
            _wait_for_a_lock_wait(pg_engine)
            ingesting.execute(sa.text("SET LOCAL lock_timeout = '3s'"))
            lock_gpus(ingesting, [ids["GPU-b"]])  # deadlocked (or timed out) before the fix
            ingesting.commit()
        thread.join(30)
        assert not thread.is_alive() and failures == []
    finally:
        truncate_all(pg_engine)


def _wait_for_a_lock_wait(engine, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()")).scalar_one()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the registration never waited for the ingest's GPU lock")
