"""Bad input over real HTTP: a 4xx naming the field, and nothing stored.

Bodies are sent as raw text, since `NaN`, `Infinity` and 1e400 are what a careless client's
JSON encoder writes and Python's parser reads. A second server, with a small body limit and a
short look-ahead, serves the body-limit and look-ahead cases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from accounting.clock import US_PER_HOUR, FakeClock
from accounting.config import Settings
from api import limits
from api.main import create_app
from tests.conftest import PG_URL, T0_US
from workers.processes import ApiServer

from .conftest import API_NOW_US, http_client, iso, job_payload, register

H = US_PER_HOUR
LIMIT_BYTES = 4096
AHEAD_S = 3600
TABLES = ("job", "allocation", "gpu", "work_report", "site")


def rows(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t: connection.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def post_raw(client: httpx.Client, path: str, text: str, method: str = "POST") -> httpx.Response:
    return client.request(method, path, content=text.encode(), headers={"Content-Type": "application/json"})


def with_field(body: dict, field: str, raw_value: str) -> str:
    """`body` as JSON text with `field` set to `raw_value` verbatim (NaN, 1e400 …)."""
    marker = "__RAW__"
    return json.dumps({**body, field: marker}).replace(f'"{marker}"', raw_value)


def assert_refused(response: httpx.Response, field: str) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == 422, response.text
    loc = response.json()["detail"][0]["loc"]
    assert loc[:2] == ["body", field], response.text


JOB = job_payload("bad", ["GPU-a", "GPU-b"], T0_US)
JOB_CASES = [
    ("model_parameters", "NaN"), ("model_parameters", "Infinity"), ("model_parameters", "-Infinity"),
    ("model_parameters", "1e400"), ("model_parameters", str(10**16)), ("model_parameters", "-7"),
    ("model_layers", str(10**30)), ("model_seq_len", "1.5"),
    ("external_id", json.dumps("x" * 201)), ("team", '""'), ("team", json.dumps("ml\u0000ops")),
    ("project", json.dumps("p" * 201)), ("kind", '"gpu"'), ("precision", '"fp64"'),
    ("gpu_uuids", json.dumps(["x" * 97])), ("gpu_uuids", json.dumps(["GPU-\u0000"])),
    ("gpu_uuids", json.dumps([f"GPU-{k}" for k in range(1025)])), ("gpu_uuids", "[NaN]"),
    ("started_at", '"2025-07-26T22:00:00"'),  # naive
    ("started_at", '"9999-12-31T23:59:59Z"'), ("started_at", '"0001-01-01T00:00:00+01:00"'),
    ("started_at", json.dumps(iso(API_NOW_US + 48 * H))),  # two days ahead of the server's clock
    ("started_at", "NaN"), ("started_at", "1e400"),
]


@pytest.mark.parametrize(("field", "raw"), JOB_CASES)
def test_a_bad_job_is_refused_naming_the_field_and_stores_nothing(api, pg_engine, field, raw):
    before = rows(pg_engine)
    assert_refused(post_raw(api, "/v1/jobs", with_field(JOB, field, raw)), field)
    assert rows(pg_engine) == before


WORK_CASES = [
    ("tokens", "NaN"), ("tokens", "Infinity"), ("tokens", "-1"), ("tokens", str(10**19)),
    ("flops", "1e400"), ("flops", str(10**40)), ("flops", str(10**30 + 1)), ("samples", "-Infinity"),
    ("steps", "1.5"), ("key", '""'), ("key", json.dumps("k" * 201)), ("key", json.dumps("k\u0000")),
    ("at", '"2025-07-27T00:00:00"'), ("at", '"9999-12-31T23:59:59Z"'), ("at", json.dumps(iso(API_NOW_US + 25 * H))),
]


@pytest.mark.parametrize(("field", "raw"), WORK_CASES)
def test_bad_work_is_refused_naming_the_field_and_stores_nothing(api, pg_engine, field, raw):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    before = rows(pg_engine)
    body = {"key": "k", "at": iso(T0_US + 60_000_000), "tokens": 1}
    assert_refused(post_raw(api, f"/v1/jobs/{job_id}/work", with_field(body, field, raw)), field)
    assert rows(pg_engine) == before


@pytest.mark.parametrize("raw", ['"2025-07-27T00:00:00"', '"9999-12-31T23:59:59Z"', "NaN",
                                 json.dumps(iso(API_NOW_US + 48 * H))])
def test_a_bad_end_is_refused_and_the_job_runs_on(api, raw):
    job_id = register(api, "run-1", ["GPU-a"], T0_US)["id"]
    assert_refused(post_raw(api, f"/v1/jobs/{job_id}/finish", with_field({}, "ended_at", raw)), "ended_at")
    assert api.get(f"/v1/jobs/{job_id}").json()["ended_at"] is None


SITE_CASES = [
    ("pue", "NaN"), ("pue", "Infinity"), ("pue", "0.5"), ("pue_by_month", '{"2026-01": NaN}'),
    ("pue_by_month", '{"2026-13x": 1.2}'), ("contract_g_per_kwh", "-Infinity"),
    ("residual_mix_g_per_kwh", "1e400"), ("tariff_id", str(2**40)), ("tariff_id", "0"),
    ("currency", '"\u20ac\u20ac\u20ac"'), ("name", json.dumps("lab\u0000")), ("name", json.dumps("n" * 201)),
    ("flat_price_per_kwh", '"1E+999"'), ("flat_price_per_kwh", '"NaN"'), ("flat_price_per_kwh", '"-0.10"'),
    ("timezone", '"Mars/Olympus_Mons"'), ("grid_zone", json.dumps("z" * 65)),
]


@pytest.mark.parametrize(("field", "raw"), SITE_CASES)
def test_a_bad_site_is_refused_naming_the_field_and_stores_nothing(api, pg_engine, field, raw):
    before = rows(pg_engine)
    assert_refused(post_raw(api, "/v1/sites", with_field({"name": "lab"}, field, raw)), field)
    assert rows(pg_engine) == before


@pytest.mark.parametrize(("field", "raw"), [("kg_co2e", "NaN"), ("kg_co2e", "-1"), ("lifetime_hours", "Infinity"),
                                            ("lifetime_hours", "0")])
def test_bad_embodied_carbon_is_refused_naming_the_field(api, field, raw):
    body = {"kg_co2e": 150.0, "lifetime_hours": 35_000.0}
    assert_refused(post_raw(api, "/v1/embodied/H100-SXM", with_field(body, field, raw), method="PUT"), field)


# ── path and query parameters: the bounds are in the routes (wired by the lead) ─────────────

def status_of(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[int, list | None]:
    """Status and `detail[0].loc`, without conftest's hook that turns a 5xx into an exception."""
    response = httpx.request(method, str(client.base_url).rstrip("/") + path, headers=client.headers,
                             timeout=15, **kwargs)
    detail = response.json().get("detail") if response.headers.get("content-type") == "application/json" else None
    return response.status_code, detail[0]["loc"] if isinstance(detail, list) else None


@pytest.mark.parametrize(("method", "path", "kwargs", "loc"), [
    pytest.param("GET", "/v1/jobs", {"params": {"offset": str(10**30)}}, ["query", "offset"]),
    pytest.param("GET", "/v1/jobs", {"params": {"team": "ml\u0000"}}, ["query", "team"]),
    pytest.param("GET", "/v1/jobs", {"params": {"from": "0001-01-01T00:00:00+01:00"}}, ["query", "from"]),
    pytest.param("GET", "/v1/jobs/9223372036854775806", {}, ["path", "job_id"]),
    pytest.param("GET", "/v1/jobs/1/work", {"params": {"offset": str(10**30)}}, ["query", "offset"]),
    pytest.param("GET", "/v1/statements/99999999999", {}, ["path", "statement_id"]),
    pytest.param("GET", "/v1/energy", {"params": {"from": "0001-01-01T01:00:00+01:06", "to": "2025-01-01T00:00:00Z"}},
                 ["query", "from"]),
    pytest.param("GET", "/v1/waste", {"params": {"from": "2025-01-01T00:00:00Z", "to": "9999-12-31T23:59:59-01:00"}},
                 ["query", "to"]),
    pytest.param("POST", "/v1/sites/lab/gpus", {"json": {"gpu_uuids": ["GPU-\u0000"]}}, ["body", "gpu_uuids"]),
    pytest.param("POST", "/v1/sites/lab/gpus", {"json": {"gpu_uuids": ["x" * 97]}}, ["body", "gpu_uuids"]),
    ("GET", "/v1/jobs/abc", {}, ["path", "job_id"]),
    ("GET", "/v1/jobs", {"params": {"limit": "NaN"}}, ["query", "limit"]),
])
def test_bad_path_and_query_values_are_422_naming_them(api, pg_engine, method, path, kwargs, loc):
    assert api.post("/v1/sites", json={"name": "lab"}).status_code == 201
    before = rows(pg_engine)
    status, got = status_of(api, method, path, **kwargs)
    assert (status, got[:2] if got else got) == (422, loc)
    assert rows(pg_engine) == before


# ── a server with a small body limit and a short look-ahead ─────────────────────────────────

@pytest.fixture(scope="module")
def strict_server(pg_engine: sa.Engine, tmp_path_factory) -> Iterator[ApiServer]:
    settings = Settings(home=tmp_path_factory.mktemp("strict"), database_url=PG_URL,
                        api_max_body_bytes=LIMIT_BYTES, api_max_future_s=AHEAD_S)
    app = create_app(settings, engine=pg_engine, clock=FakeClock(API_NOW_US))
    limits.install(app, settings)  # a no-op once create_app installs it
    with ApiServer(app) as server:
        yield server


@pytest.fixture
def strict(api: httpx.Client, strict_server: ApiServer) -> Iterator[httpx.Client]:
    """A client of the strict server with `api`'s admin key (the same database)."""
    with http_client(strict_server.url) as client:
        client.headers.update({k: v for k, v in api.headers.items() if k.lower() == "authorization"})
        yield client


def test_create_app_installs_the_body_limit(pg_engine):
    assert getattr(create_app(Settings(database_url=PG_URL), engine=pg_engine).state, "body_limit_installed", False)


def padded_job(size: int) -> bytes:
    body = job_payload("big", ["GPU-a"], T0_US) | {"project": ""}
    text = json.dumps(body)
    return json.dumps(body | {"project": "p" * (size - len(text))}).encode()


def test_a_body_over_the_limit_is_413_naming_it_and_stores_nothing(strict, pg_engine):
    before = rows(pg_engine)
    body = padded_job(LIMIT_BYTES + 1)
    assert len(body) == LIMIT_BYTES + 1
    response = strict.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert str(LIMIT_BYTES) in response.json()["detail"]
    assert rows(pg_engine) == before


def test_a_streamed_body_is_cut_off_at_the_limit(strict, pg_engine):
    """No Content-Length (chunked): counted while read, refused once past the limit."""
    before = rows(pg_engine)

    def chunks():
        yield b'{"external_id": "'
        for _ in range(64):  # 64 KiB offered, 4 KiB allowed
            yield b"x" * 1024

    response = strict.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert str(LIMIT_BYTES) in response.json()["detail"]
    assert rows(pg_engine) == before


def test_a_body_at_the_limit_is_read(strict):
    body = padded_job(LIMIT_BYTES)
    response = strict.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text  # read and validated: `project` is too long
    assert response.json()["detail"][0]["loc"] == ["body", "project"]


@pytest.mark.parametrize(("path", "field"), [("/v1/jobs", "started_at"), ("finish", "ended_at"), ("work", "at")])
def test_a_time_further_ahead_than_the_setting_is_refused(strict, pg_engine, path, field):
    when = iso(API_NOW_US + 2 * AHEAD_S * 1_000_000)  # inside the default day, outside the setting
    if path == "/v1/jobs":
        response = strict.post(path, json=job_payload("ahead", ["GPU-a"], API_NOW_US) | {field: when})
    else:
        job_id = register(strict, "run-1", ["GPU-a"], T0_US)["id"]
        body = {"ended_at": when} if path == "finish" else {"key": "k", "at": when, "tokens": 1}
        response = strict.post(f"/v1/jobs/{job_id}/{path}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert str(AHEAD_S) in response.json()["detail"][0]["msg"]
