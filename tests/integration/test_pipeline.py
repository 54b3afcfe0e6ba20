"""The whole pipeline on real services: simulated fleet → sampler → Redis → a real Celery
worker → PostgreSQL ledger, with jobs registered over HTTP (an agent key, as the Slurm prolog
holds) and read back by the job's team, checked against ground truth."""

from __future__ import annotations

import httpx
import pytest

from accounting.clock import US_PER_S, FakeClock, to_datetime
from accounting.gpu.simulated import SimGpu, SimulatedFleet
from accounting.gpu.workloads import Inference, Training
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from api.main import create_app
from tests.api.conftest import new_key
from tests.conftest import T0_US
from tests.integration.conftest import ingested, wait_until
from workers.celery_app import make_celery
from workers.processes import ApiServer, batch_sender

pytestmark = pytest.mark.integration

MIN = 60 * US_PER_S
JOBS = {  # external id → (GPU indices, start min, end min, workload)
    "train": ((0, 1), 2, 25, Training(power_fraction=0.8, checkpoint_every_s=300, checkpoint_s=15)),
    "serve": ((2,), 0, 30, Inference(mean_load=0.5)),
    "short": ((3,), 11, 13, Training(power_fraction=0.9)),
}


def test_jobs_get_their_true_energy_and_the_ledger_reconciles(settings, workers, pg_engine, tmp_path):
    clock = FakeClock(T0_US)
    gpus = [SimGpu(f"GPU-it-{i}", model, i) for i, model in enumerate(["H100 SXM", "H100 SXM", "A100 SXM", "H200 SXM"])]
    fleet = SimulatedFleet(gpus, clock=clock, seed=11)
    for _, (indices, start, end, workload) in JOBS.items():
        for i in indices:
            fleet.assign(gpus[i].uuid, T0_US + start * MIN, T0_US + end * MIN, workload)
    fleet.reset_counter(gpus[1].uuid, T0_US + 10 * MIN + 500_000)  # driver reload mid-training
    sampler = Sampler(backend=fleet, spool=Spool(tmp_path / "spool"), clock=clock, node="it-node")
    send = batch_sender(make_celery(settings))
    workers.start()

    job_ids = {}
    agent, team = new_key(pg_engine, "agent"), new_key(pg_engine, "team", "it")
    with (ApiServer(create_app(settings, engine=pg_engine, clock=clock)) as api,
          httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {agent}"}) as http):
        for second in range(0, 30 * 60 + 1):
            clock.set(T0_US + second * US_PER_S)
            for name, (indices, start, end, _) in JOBS.items():
                if second == start * 60:
                    r = http.post("/v1/jobs", json={"external_id": name, "team": "it",
                                                    "gpu_uuids": [gpus[i].uuid for i in indices],
                                                    "started_at": to_datetime(clock.now_us()).isoformat()})
                    assert r.status_code == 201, r.text
                    job_ids[name] = r.json()["id"]
                if second == end * 60:
                    r = http.post(f"/v1/jobs/{job_ids[name]}/finish",
                                  json={"ended_at": to_datetime(clock.now_us()).isoformat()})
                    assert r.status_code == 200, r.text
            sampler.sample()
            if second % 30 == 0:
                sampler.flush()
                assert sampler.ship(send) >= 0
        sampler.flush()
        sampler.ship(send)
        assert sampler.spool.depth() == 0
        shipped = sampler.next_seq - 1
        wait_until(lambda: ingested(pg_engine) == shipped, 60, f"{shipped} batches to be ingested")
        assert http.get(f"/v1/jobs/{job_ids['train']}/energy").status_code == 403  # agents only write
        http.headers["Authorization"] = f"Bearer {team}"

        for name, (indices, start, end, _) in JOBS.items():
            truth_j = sum(fleet.true_energy_j(gpus[i].uuid, T0_US + start * MIN, T0_US + end * MIN) for i in indices)
            got = http.get(f"/v1/jobs/{job_ids[name]}/energy").json()
            assert got["unit"] == "J"
            assert got["energy"] == pytest.approx(truth_j, rel=1e-3), name
        estimated = http.get(f"/v1/jobs/{job_ids['train']}/energy").json()["estimated"]
        assert [e["gpu_uuid"] for e in estimated] == [gpus[1].uuid]  # the reset interval, flagged

    with pg_engine.connect() as connection:
        from sqlmodel import Session

        with Session(bind=connection) as session:
            totals = fleet_totals(session)
            assert totals.balanced
            assert conservation_errors(session) == []
    truth_all_j = sum(fleet.true_energy_j(g.uuid, T0_US, T0_US + 30 * MIN) for g in gpus)
    assert totals.measured_mj / 1000 == pytest.approx(truth_all_j, rel=1e-3)
