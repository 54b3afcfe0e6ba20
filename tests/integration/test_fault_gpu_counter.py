"""An energy counter reset and a GPU lost for 20 s in the middle of a job on the simulated fleet:
no negative energy anywhere, and the job's record names the intervals that were estimated.

Real services: the shared PostgreSQL and Redis, a real `celery worker` process; the job is
registered and read through the accounting services on the database (not over HTTP).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock, to_datetime, to_us
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Training
from accounting.jobs.models import Gpu, JobCreate
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.models import GpuEvent, LedgerEntry, Method, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals, job_energy
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from tests.conftest import T0_US
from tests.integration.conftest import energy_by_gpu, ingested_seqs, wait_until
from workers.celery_app import make_celery
from workers.processes import batch_sender

pytestmark = pytest.mark.integration

NODE = "fault-node"
MIN = 60 * US_PER_S
JOB_START, JOB_END = T0_US + 1 * MIN, T0_US + 20 * MIN
RESET_AT = T0_US + 6 * MIN + 500_000  # driver reload: the counter restarts from 0
LOST = (T0_US + 10 * MIN, T0_US + 10 * MIN + 20 * US_PER_S)  # off the bus; back with a fresh counter


def test_counter_reset_and_lost_gpu_give_no_negative_energy_and_flag_the_estimates(settings, workers, pg_engine,
                                                                                     tmp_path):
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM", "H100 SXM", "A100 SXM"], clock=clock, seed=21, node="fault")
    reset_gpu, lost_gpu, other = (g.uuid for g in fleet.gpus())
    for uuid in (reset_gpu, lost_gpu):
        fleet.assign(uuid, JOB_START, JOB_END, Training(power_fraction=0.85))
    fleet.reset_counter(reset_gpu, RESET_AT)
    fleet.lose(lost_gpu, *LOST)
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node=NODE)
    send = batch_sender(make_celery(settings, results=False))
    shipped: list[dict] = []
    workers.start()

    job_id = None
    for second in range(0, 22 * 60 + 1):
        clock.set(T0_US + second * US_PER_S)
        if clock.now_us() in (JOB_START, JOB_END):
            # Let ingest catch up first: finishing a job while a batch of its GPUs is being ingested
            # can deadlock (job row → GPU rows against GPU rows → job row; see the report).
            wait_until(lambda: len(ingested_seqs(pg_engine, NODE)) == len(shipped), 30, "ingest to catch up")
            with Session(pg_engine) as session:
                if job_id is None:
                    job_id = create_job(session, JobCreate(external_id="train", team="faults", gpu_uuids=[
                        reset_gpu, lost_gpu], started_at=to_datetime(JOB_START)), clock=clock).id
                else:
                    finish_job(session, job_id, to_datetime(JOB_END), clock=clock)
                session.commit()
        sampler.sample()
        if second % 60 == 0:
            sampler.flush()
            sampler.ship(lambda batch: shipped.append(batch) or send(batch))
    wait_until(lambda: len(ingested_seqs(pg_engine, NODE)) == len(shipped), 60, "every batch to be ingested")
    assert ingested_seqs(pg_engine, NODE) == list(range(1, len(shipped) + 1))

    with Session(pg_engine) as session:
        record = job_energy(session, job_id)
        estimated = [(p.gpu_uuid, to_us(p.hour), p.energy_mj) for p in record.estimated]
        samples = session.execute(
            sa.select(Gpu.uuid, Sample.start_at, Sample.end_at, Sample.energy_mj)
            .join(Gpu, Gpu.id == Sample.gpu_id).where(Sample.method == Method.power_integral)
            .order_by(Sample.start_at)).all()
        events = session.execute(sa.select(Gpu.uuid, GpuEvent.kind).join(Gpu, Gpu.id == GpuEvent.gpu_id)
                                 .order_by(GpuEvent.at)).all()
        negative = {
            "samples": session.execute(sa.select(sa.func.min(Sample.energy_mj))).scalar_one(),
            "ledger": session.execute(sa.select(sa.func.min(LedgerEntry.energy_mj))).scalar_one(),
        }
        totals = fleet_totals(session)
        assert totals.balanced and conservation_errors(session) == []
    print(f"job {record.energy_mj} mJ, per GPU {record.per_gpu_mj}, by method {record.by_method_mj}; "
          f"estimated {estimated}; power-integral intervals {samples}; events {events}")

    assert min(negative.values()) >= 0 and all(mj > 0 for mj in record.per_gpu_mj.values())
    # The two estimated intervals, and only they: the one across the reset, the one across the loss.
    [(uuid_a, start_a, end_a, _), (uuid_b, start_b, end_b, _)] = samples
    assert uuid_a == reset_gpu and to_us(start_a) < RESET_AT <= to_us(end_a) and to_us(end_a) - to_us(start_a) == 1e6
    assert uuid_b == lost_gpu and to_us(start_b) < LOST[0] and to_us(end_b) >= LOST[1]
    # The job's record says so: one estimated piece per affected GPU, in the hour it happened.
    assert sorted((u, h) for u, h, _ in estimated) == sorted([(reset_gpu, T0_US), (lost_gpu, T0_US)])
    assert all(mj > 0 for _, _, mj in estimated)
    assert record.by_method_mj[Method.power_integral] == sum(mj for _, _, mj in estimated)
    assert [(u, k) for u, k in events if k != "read-error"] == [
        (reset_gpu, "counter-reset"), (lost_gpu, "gpu-lost"), (lost_gpu, "gpu-returned"), (lost_gpu, "counter-reset")]
    assert other not in record.per_gpu_mj

    truth_j = sum(fleet.true_energy_j(u, JOB_START, JOB_END) for u in (reset_gpu, lost_gpu))
    print(f"job {record.energy_mj / 1000:.3f} J against a true {truth_j:.3f} J")
    assert record.energy_mj / 1000 == pytest.approx(truth_j, rel=0.02)  # 20 s of 38 GPU-min estimated
    assert sum(energy_by_gpu(pg_engine, Sample).values()) == sum(
        i["energy_mj"] for b in shipped for i in b["intervals"]) == totals.measured_mj
