"""The jobs API over real HTTP on PostgreSQL: registration, listing, errors, energy, probes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from accounting.clock import US_PER_HOUR, US_PER_S, FakeClock, to_datetime
from accounting.config import Settings
from accounting.db import make_engine
from api.main import create_app
from tests.conftest import T0_US
from tests.factories import batch
from workers.processes import ApiServer

from .conftest import (
    API_NOW_US,
    batch_mj,
    energy,
    finish,
    http_client,
    iso,
    job_payload,
    loc_of_error,
    names,
    register,
    totals,
    utc,
)

S, H = US_PER_S, US_PER_HOUR
MISSING = object()


# ── registering and reading ──────────────────────────────────────────────────────────────

def test_a_registered_job_reads_back_in_utc_and_its_gpus_are_known(api):
    body = job_payload("run-1", ["GPU-a", "GPU-b"], T0_US, model_parameters=7_000_000_000)
    body["started_at"] = "2025-07-27T00:00:10+02:00"  # T0 + 10 s, stated in another zone
    created = api.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert isinstance(job_id, int)
    assert created.json()["gpu_uuids"] == ["GPU-a", "GPU-b"]

    read = api.get(f"/v1/jobs/{job_id}").json()
    assert (read["external_id"], read["team"]) == ("run-1", "nlp")
    assert read["model_parameters"] == 7_000_000_000
    assert read["gpu_uuids"] == ["GPU-a", "GPU-b"]
    assert utc(read["started_at"]) == to_datetime(T0_US + 10 * S)
    assert utc(read["created_at"]) == to_datetime(API_NOW_US)
    assert read["ended_at"] is None

    gpus = {g["uuid"]: g for g in api.get("/v1/gpus").json()}
    assert set(gpus) == {"GPU-a", "GPU-b"}
    assert utc(gpus["GPU-a"]["first_seen_at"]) == to_datetime(API_NOW_US)


def test_the_answers_to_register_and_finish_state_their_times_in_utc(api):
    body = job_payload("run-1", ["GPU-a"], T0_US)
    body["started_at"] = "2025-07-27T00:00:10+02:00"
    created = api.post("/v1/jobs", json=body).json()
    finished = finish(api, created["id"], "2025-07-27T00:00:40+02:00").json()
    assert utc(created["started_at"]) == to_datetime(T0_US + 10 * S)
    assert utc(finished["ended_at"]) == to_datetime(T0_US + 40 * S)


def test_jobs_are_listed_by_team_and_by_the_time_they_ran(api):
    early = register(api, "early", ["GPU-a"], T0_US)["id"]
    assert finish(api, early, T0_US + H).status_code == 200  # ends exactly at `from`: excluded
    overlap = register(api, "overlap", ["GPU-b"], T0_US + H // 2)["id"]
    assert finish(api, overlap, T0_US + 2 * H).status_code == 200
    register(api, "running", ["GPU-c"], T0_US + 90 * 60 * S)
    register(api, "vision", ["GPU-d"], T0_US + 90 * 60 * S, team="vision")
    register(api, "late", ["GPU-e"], T0_US + 3 * H)  # starts exactly at `to`: excluded

    nlp = names(api.get("/v1/jobs", params={"team": "nlp"}))
    assert nlp == ["early", "overlap", "running", "late"]
    assert names(api.get("/v1/jobs", params={"team": "vision"})) == ["vision"]
    window = {"from": iso(T0_US + H), "to": iso(T0_US + 3 * H)}
    assert names(api.get("/v1/jobs", params=window)) == ["overlap", "running", "vision"]
    assert names(api.get("/v1/jobs", params={**window, "team": "nlp"})) == ["overlap", "running"]
    after = names(api.get("/v1/jobs", params={"from": iso(T0_US + 4 * H)}))
    assert after == ["running", "vision", "late"]
    assert names(api.get("/v1/jobs", params={"to": iso(T0_US + H // 2)})) == ["early"]


def test_limit_and_offset_page_through_jobs_in_start_order(api):
    for k in range(5):
        register(api, f"job-{k}", [f"GPU-{k}"], T0_US + k * 60 * S)
    assert names(api.get("/v1/jobs", params={"limit": 2})) == ["job-0", "job-1"]
    assert names(api.get("/v1/jobs", params={"limit": 2, "offset": 2})) == ["job-2", "job-3"]
    assert names(api.get("/v1/jobs", params={"limit": 10, "offset": 4})) == ["job-4"]
    assert names(api.get("/v1/jobs", params={"offset": 5})) == []
    assert loc_of_error(api.get("/v1/jobs", params={"limit": 0})) == ["query", "limit"]
    assert loc_of_error(api.get("/v1/jobs", params={"offset": -1})) == ["query", "offset"]


# ── bad input and errors ─────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("field", "value"), [
    ("team", MISSING),
    ("gpu_uuids", []),
    ("gpu_uuids", ["GPU-a", "GPU-b", "GPU-a"]),
    ("started_at", "2025-07-26T22:00:00"),  # no time zone
    ("started_at", iso(API_NOW_US + 48 * H)),  # the service's check, not the schema's
    ("model_parameters", 0),
    ("model_parameters", -7),
])
def test_a_bad_job_is_422_naming_the_field_and_stores_nothing(api, field, value):
    body = job_payload("bad", ["GPU-a", "GPU-b"], T0_US)
    if value is MISSING:
        del body[field]
    else:
        body[field] = value
    assert loc_of_error(api.post("/v1/jobs", json=body)) == ["body", field]
    assert api.get("/v1/jobs").json() == []
    assert api.get("/v1/gpus").json() == []


def test_bad_path_and_query_values_are_422_naming_them(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    assert loc_of_error(api.get("/v1/jobs/abc")) == ["path", "job_id"]
    assert loc_of_error(api.post("/v1/jobs/1.5/finish", json={})) == ["path", "job_id"]
    assert loc_of_error(api.get("/v1/jobs/abc/energy")) == ["path", "job_id"]
    for path in (f"/v1/jobs/{job_id}/energy", "/v1/ledger/totals"):
        assert loc_of_error(api.get(path, params={"unit": "GWh"})) == ["query", "unit"]


def test_a_finish_before_the_start_or_without_a_zone_is_422_and_the_job_runs_on(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US + 10 * S)["id"]
    assert loc_of_error(finish(api, job_id, T0_US + 5 * S)) == ["body", "ended_at"]
    assert loc_of_error(finish(api, job_id, "2025-07-26T22:00:40")) == ["body", "ended_at"]
    assert loc_of_error(finish(api, job_id, API_NOW_US + 48 * H)) == ["body", "ended_at"]
    assert api.get(f"/v1/jobs/{job_id}").json()["ended_at"] is None


def test_an_unknown_job_is_404(api):
    assert api.get("/v1/jobs/999999").status_code == 404
    assert finish(api, 999999, T0_US).status_code == 404
    assert api.get("/v1/jobs/999999/energy").status_code == 404
    assert "999999" in api.get("/v1/jobs/999999").json()["detail"]


def test_the_same_source_and_external_id_twice_is_409(api):
    first = register(api, "run-1", ["GPU-a"], T0_US)
    again = api.post("/v1/jobs", json=job_payload("run-1", ["GPU-b"], T0_US + S))
    assert again.status_code == 409, again.text
    assert str(first["id"]) in again.json()["detail"]
    register(api, "run-1", ["GPU-b"], T0_US, source="slurm")  # another source: another job
    assert len(api.get("/v1/jobs").json()) == 2


# ── energy ───────────────────────────────────────────────────────────────────────────────

def test_a_jobs_energy_is_exact_in_every_unit_and_its_end_returns_the_rest_to_idle(api, ingest):
    job_id = register(api, "run-1", ["GPU-a", "GPU-b"], T0_US + 10 * S)["id"]
    ingest(batch("node-1", 0, "GPU-a", T0_US, 60))
    ingest(batch("node-2", 0, "GPU-b", T0_US, 60, mj_per_s=200_000))
    assert energy(api, job_id)["energy_mj"] == batch_mj(10, 59) + batch_mj(10, 59, 200_000)

    assert finish(api, job_id, T0_US + 40 * S).status_code == 200  # a past end: re-attributed
    a_mj, b_mj = batch_mj(10, 39), batch_mj(10, 39, 200_000)
    joules = energy(api, job_id, "J")
    assert joules["energy_mj"] == a_mj + b_mj == 15_001_470
    assert type(joules["energy_mj"]) is int
    assert joules["unit"] == "J"
    assert joules["energy"] == pytest.approx(15_001.470, rel=1e-12)
    assert joules["per_gpu"] == [
        {"gpu_uuid": "GPU-a", "energy": pytest.approx(a_mj / 1e3, rel=1e-12)},
        {"gpu_uuid": "GPU-b", "energy": pytest.approx(b_mj / 1e3, rel=1e-12)},
    ]
    assert joules["by_method"] == {"exclusive": pytest.approx(15_001.470, rel=1e-12)}
    assert joules["gpu_hours"] == pytest.approx(2 * 30 / 3600, rel=1e-12)
    assert joules["estimated"] == []
    for unit, joules_per_unit in (("kWh", 3.6e6), ("MWh", 3.6e9)):
        converted = energy(api, job_id, unit)
        assert converted["unit"] == unit
        assert converted["energy"] == pytest.approx(15_001.470 / joules_per_unit, rel=1e-12)
        assert converted["energy_mj"] == 15_001_470

    books = totals(api)
    measured = batch_mj(0, 59) + batch_mj(0, 59, 200_000)
    assert books["balanced"] is True
    assert (books["measured_mj"], books["jobs_mj"]) == (measured, a_mj + b_mj)
    assert books["unattributed_mj"] == 0
    assert books["jobs_mj"] + books["idle_mj"] == books["measured_mj"]


def test_a_job_registered_after_its_samples_arrived_still_gets_their_energy(api, ingest):
    ingest(batch("node-1", 0, "GPU-a", T0_US, 60))
    assert totals(api)["jobs_mj"] == 0
    job_id = register(api, "late-1", ["GPU-a"], T0_US + 10 * S)["id"]
    assert energy(api, job_id)["energy_mj"] == batch_mj(10, 59)
    assert finish(api, job_id, T0_US + 40 * S).status_code == 200
    assert energy(api, job_id)["energy_mj"] == batch_mj(10, 39)
    books = totals(api)
    assert books["balanced"] is True
    assert books["jobs_mj"] == batch_mj(10, 39)
    assert books["idle_mj"] == batch_mj(0, 9) + batch_mj(40, 59)


def test_power_integrated_energy_is_listed_as_estimated(api, ingest):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    ingest(batch("node-1", 0, "GPU-a", T0_US, 10, method="power-integral"))
    answer = energy(api, job_id)
    assert answer["energy_mj"] == batch_mj(0, 9)
    assert answer["by_method"] == {"power-integral": pytest.approx(batch_mj(0, 9) / 1e3)}
    estimated = [(e["gpu_uuid"], utc(e["hour"])) for e in answer["estimated"]]
    assert estimated == [("GPU-a", to_datetime(T0_US))]
    assert answer["estimated"][0]["energy"] == pytest.approx(batch_mj(0, 9) / 1e3)


def test_a_retried_finish_changes_nothing_and_another_end_is_409(api, ingest):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    ingest(batch("node-1", 0, "GPU-a", T0_US, 60))
    assert finish(api, job_id, T0_US + 30 * S).status_code == 200
    job_before = api.get(f"/v1/jobs/{job_id}").json()
    energy_before, totals_before = energy(api, job_id), totals(api)

    retried = finish(api, job_id, "2025-07-27T00:00:30+02:00")  # the same instant, another zone
    assert retried.status_code == 200, retried.text
    assert utc(retried.json()["ended_at"]) == to_datetime(T0_US + 30 * S)
    conflict = finish(api, job_id, T0_US + 50 * S)
    assert conflict.status_code == 409, conflict.text
    assert api.get(f"/v1/jobs/{job_id}").json() == job_before
    assert energy(api, job_id) == energy_before == {**energy_before, "energy_mj": batch_mj(0, 29)}
    assert totals(api) == totals_before


# ── concurrent callers ───────────────────────────────────────────────────────────────────

def concurrently(url: str, calls: int, call, headers) -> list[int]:
    """The status codes of `calls` requests sent at once, each on its own connection."""

    def one(k: int) -> int:
        with httpx.Client(base_url=url, timeout=15, headers=headers) as client:
            return call(client, k).status_code

    with ThreadPoolExecutor(calls) as pool:
        return sorted(pool.map(one, range(calls)))


def test_simultaneous_registrations_of_one_job_give_one_201_and_409s(api, api_server):
    for attempt in range(3):  # the race is likely, not certain, to show in one attempt
        body = job_payload(f"race-{attempt}", ["GPU-a", "GPU-b"], T0_US)

        def post_the_same_job(client, _, body=body):
            return client.post("/v1/jobs", json=body)

        codes = concurrently(api_server.url, 8, post_the_same_job, api.headers)
        assert codes == [201] + [409] * 7


def test_simultaneous_finishes_at_different_times_give_one_200_and_409s(api, api_server):
    for attempt in range(3):
        job_id = register(api, f"race-{attempt}", ["GPU-a"], T0_US)["id"]

        def finish_at_its_own_second(client, k, job_id=job_id):
            return finish(client, job_id, T0_US + (k + 1) * S)

        codes = concurrently(api_server.url, 6, finish_at_its_own_second, api.headers)
        assert codes == [200] + [409] * 5


# ── probes and docs ──────────────────────────────────────────────────────────────────────

def test_probes_and_docs_are_served(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    spec = api.get("/openapi.json").json()
    expected = {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/energy", "/v1/gpus"}
    assert expected <= set(spec["paths"])
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()


def test_readyz_is_503_on_a_database_that_was_never_migrated(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    app = create_app(Settings(home=tmp_path), engine=engine, clock=FakeClock(API_NOW_US))
    try:
        with ApiServer(app) as server, http_client(server.url) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "unavailable"
            assert client.get("/healthz").status_code == 200
    finally:
        engine.dispose()


def test_ids_and_times_beyond_range_are_422_not_500(api):
    for path in ("/v1/jobs/99999999999999999999", "/v1/jobs/99999999999999999999/energy"):
        assert loc_of_error(api.get(path))[-1] == "job_id"
    assert loc_of_error(api.post("/v1/jobs/99999999999999999999/finish", json={}))[-1] == "job_id"
    body = job_payload("ancient", ["GPU-x"], T0_US) | {"started_at": "0001-01-01T00:00:00+05:00"}
    assert loc_of_error(api.post("/v1/jobs", json=body))[-1] == "started_at"
