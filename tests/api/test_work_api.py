"""The work API over real HTTP on PostgreSQL: reporting (idempotent by key), errors, totals."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from accounting.clock import US_PER_HOUR, US_PER_S, to_datetime
from tests.conftest import T0_US

from .conftest import API_NOW_US, http_client, iso, loc_of_error, register, utc

S, H = US_PER_S, US_PER_HOUR


def post_work(api, job_id: int, key: str, at_us: int = T0_US + 60 * S, **figures):
    return api.post(f"/v1/jobs/{job_id}/work", json={"key": key, "at": iso(at_us), **figures})


def test_a_report_is_created_once_and_a_repeat_of_its_key_is_a_duplicate(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    created = post_work(api, job_id, "k-1", tokens=4096, samples=8, steps=1)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["job_id"], body["key"], body["tokens"], body["flops"]) == (job_id, "k-1", 4096, None)
    assert (body["provenance"], body["duplicate"]) == ("reported", False)
    assert utc(body["received_at"]) == to_datetime(API_NOW_US)

    repeat = post_work(api, job_id, "k-1", tokens=1)  # a retry; a different body changes nothing
    assert repeat.status_code == 200, repeat.text
    assert repeat.json()["duplicate"] is True
    assert (repeat.json()["id"], repeat.json()["tokens"]) == (body["id"], 4096)

    read = api.get(f"/v1/jobs/{job_id}/work").json()
    assert [r["key"] for r in read["reports"]] == ["k-1"]
    assert read["totals"]["tokens"] == 4096
    assert read["reports"][0]["duplicate"] is False


def test_a_time_in_another_zone_is_answered_in_utc(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    response = api.post(f"/v1/jobs/{job_id}/work",
                        json={"key": "k", "at": "2025-07-27T00:01:00+02:00", "steps": 1})  # T0 + 60 s
    assert response.status_code == 201, response.text
    assert utc(response.json()["at"]) == to_datetime(T0_US + 60 * S)


def test_flop_counts_beyond_2_to_the_63_are_exact_json_integers(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    raw = '{"key": "big", "at": "' + iso(T0_US + 60 * S) + '", "flops": 10000000000000000000000007}'
    created = api.post(f"/v1/jobs/{job_id}/work", content=raw, headers={"content-type": "application/json"})
    assert created.status_code == 201, created.text
    assert '"flops":10000000000000000000000007' in created.text.replace(" ", "")
    assert post_work(api, job_id, "more", flops=2**64).status_code == 201

    read = api.get(f"/v1/jobs/{job_id}/work")
    totals = json.loads(read.text)["totals"]
    assert totals["flops"] == 10**25 + 7 + 2**64
    assert isinstance(totals["flops"], int)


def test_totals_state_units_and_the_model_estimate_of_the_reported_tokens(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US, kind="training", model_parameters=7_000_000_000)["id"]
    for n in range(4):  # 4 × 2.5e8 = 1e9 tokens
        assert post_work(api, job_id, f"k-{n}", at_us=T0_US + (n + 1) * 60 * S, tokens=250_000_000,
                         samples=1000, steps=10).status_code == 201
    read = api.get(f"/v1/jobs/{job_id}/work").json()
    assert read["units"] == {"flops": "FLOP", "tokens": "token", "samples": "sample", "steps": "step"}
    assert read["totals"] == {
        "flops": 0, "tokens": 10**9, "samples": 4000, "steps": 40, "reports": 4,
        "figures_reported": ["samples", "steps", "tokens"],
        "first_at": read["totals"]["first_at"], "last_at": read["totals"]["last_at"],
    }
    assert utc(read["totals"]["first_at"]) == to_datetime(T0_US + 60 * S)
    assert utc(read["totals"]["last_at"]) == to_datetime(T0_US + 240 * S)
    # 6 · 7e9 FLOP/token · 1e9 tokens = 4.2e19 FLOP
    assert read["model_estimate"] == {"flops": 42 * 10**18, "provenance": "model-estimate"}

    page = api.get(f"/v1/jobs/{job_id}/work", params={"limit": 2, "offset": 1}).json()
    assert [r["key"] for r in page["reports"]] == ["k-1", "k-2"]
    assert page["totals"]["reports"] == 4  # totals cover every report, whatever the page


def test_a_job_without_reports_or_model_size_has_zero_totals_and_no_estimate(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US, kind="training")["id"]
    read = api.get(f"/v1/jobs/{job_id}/work").json()
    assert read["reports"] == [] and read["model_estimate"] is None
    assert (read["totals"]["reports"], read["totals"]["figures_reported"], read["totals"]["first_at"]) == (0, [], None)


def test_an_unknown_job_is_404(api):
    assert post_work(api, 999_999, "k", tokens=1).status_code == 404
    assert api.get("/v1/jobs/999999/work").status_code == 404


@pytest.mark.parametrize(("change", "field"), [
    ({"tokens": -1}, "tokens"),
    ({"flops": 10**30 + 1}, "flops"),
    ({"steps": 1.5}, "steps"),
    ({"at": "2025-07-27T00:00:00"}, "at"),  # no time zone
    ({"at": iso(API_NOW_US + 25 * H)}, "at"),  # more than a day ahead
    ({"at": iso(T0_US - 2 * 60 * S)}, "at"),  # before the job started
    ({"key": ""}, "key"),
    ({"key": None}, "key"),
])
def test_bad_input_is_422_naming_the_field(api, change, field):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    body = {"key": "k", "at": iso(T0_US + 60 * S), "tokens": 1} | change
    body = {k: v for k, v in body.items() if v is not None}
    assert loc_of_error(api.post(f"/v1/jobs/{job_id}/work", json=body)) == ["body", field]
    assert api.get(f"/v1/jobs/{job_id}/work").json()["reports"] == []


def test_a_report_of_nothing_is_422_saying_what_to_report(api):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    response = api.post(f"/v1/jobs/{job_id}/work", json={"key": "k", "at": iso(T0_US + 60 * S)})
    assert response.status_code == 422, response.text
    assert "flops, tokens, samples, steps" in response.json()["detail"][0]["msg"]


def test_concurrent_twins_of_a_key_store_one_report(api, api_server):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]

    def send(_):
        with http_client(api_server.url, api.headers["Authorization"].removeprefix("Bearer ")) as client:
            return post_work(client, job_id, "twin", flops=10**20).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(send, range(8)))
    assert codes == [200] * 7 + [201]
    totals = api.get(f"/v1/jobs/{job_id}/work").json()["totals"]
    assert (totals["reports"], totals["flops"]) == (1, 10**20)
