"""Roles and team isolation over real HTTP: one table of every endpoint × role → status, on two
teams' data (jobs, ledger, work reports, a finalized statement), and what a team key sees.

Team A is `alpha`; team B is `bravo`, whose names all contain "bravo" so that any leak shows in
the text of an answer. The team key in the table is alpha's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlmodel import Session

from accounting.ledger.ingest import ingest_batch
from accounting.ledger.service import register_gpus
from tests.api.conftest import API_NOW_US, T0_US, batch_mj, http_client, iso, job_payload, new_key, register
from tests.conftest import truncate_all
from tests.factories import batch

A, B = "alpha", "bravo"
PERIOD = "2025-07"  # T0 is 2025-07-26 22:00 UTC
H = 3600 * 10**6
B_MJ_PER_S = 777_000  # bravo's GPU draws a figure found nowhere else: its energy is recognizable
B_ENERGY_J = batch_mj(0, 59, base=B_MJ_PER_S) // 1000  # 46,621 J, as an integer prefix of any rendering


@dataclass
class World:
    a: int  # alpha's job id
    b: int  # bravo's job id
    statement: int  # a finalized statement of PERIOD, grouped by team
    clients: dict[str, httpx.Client]  # role → a client with a key of it (alpha's for team)


@pytest.fixture(scope="module")
def world(api_server, pg_engine, api_clock) -> Iterator[World]:
    """Seeded once for the module (the table's writes are repeatable): alpha and bravo each ran a
    job on a GPU of their own for a minute and reported work; GPU-a sits at a site; the month's
    statement is final. Every test of this module uses it, none the `api` fixture."""
    truncate_all(pg_engine)
    keys = {role: new_key(pg_engine, role, A if role == "team" else None) for role in ("admin", "finance",
                                                                                      "team", "agent")}
    clients = {role: http_client(api_server.url, key) for role, key in keys.items()}
    clients["no key"] = http_client(api_server.url)
    admin = clients["admin"]
    a = register(admin, "alpha-train", ["GPU-a"], T0_US, team=A, project="alpha-proj", user="alpha-user")["id"]
    b = register(admin, "bravo-train", ["GPU-b"], T0_US, team=B, project="bravo-proj", user="bravo-user")["id"]
    with Session(pg_engine) as session:
        register_gpus(session, ["GPU-free-a", "GPU-free-b"], now_us=T0_US)
        for raw in (batch("n1", 1, "GPU-a", T0_US, 60), batch("n2", 1, "GPU-b", T0_US, 60, mj_per_s=B_MJ_PER_S)):
            ingest_batch(session, raw, clock=api_clock)
        session.commit()
    for job_id in (a, b):
        work = {"key": "w1", "at": iso(T0_US + 30 * 10**6), "flops": 10**18, "tokens": 1000}
        assert admin.post(f"/v1/jobs/{job_id}/work", json=work).status_code == 201
    assert admin.post("/v1/sites", json={"name": "eu", "flat_price_per_kwh": "0.10"}).status_code == 201
    assert admin.post("/v1/sites/eu/gpus", json={"gpu_uuids": ["GPU-a"]}).status_code == 200
    final = admin.post(f"/v1/statements/{PERIOD}/finalize")
    assert final.status_code == 201, final.text
    yield World(a, b, final.json()["id"], clients)
    for client in clients.values():
        client.close()
    truncate_all(pg_engine)


SPAN = {"from": iso(T0_US - H), "to": iso(T0_US + 2 * H)}
REBOUND = {"baseline": f"{iso(T0_US - 2 * H)}/{iso(T0_US - H)}", "current": f"{iso(T0_US - H)}/{iso(T0_US + H)}"}


def _job(team: str) -> dict:  # {role} makes each role's registration a new job
    # On a GPU the fleet knows and no other team holds, started a minute ago: what a team key may
    # register (tests/api/test_team_registration.py has what it may not).
    return job_payload(f"new-{team}-{{role}}", [f"GPU-free-{team[0]}"], API_NOW_US - 60 * 10**6, team=team)


# A request: (method, path with {a} {b} {statement} filled from Seeded, query, JSON body).
Request = tuple[str, str, dict | None, dict | None]
WORK = {"key": "w-{role}", "at": iso(T0_US + 45 * 10**6), "tokens": 5}
FINISH = {"ended_at": iso(T0_US + 2 * H)}

# endpoint                                                             admin finance team agent no key
TABLE: list[tuple[str, Request, tuple[int, int, int, int, int]]] = [
    ("register a job of alpha", ("POST", "/v1/jobs", None, _job(A)), (201, 403, 201, 201, 401)),
    ("register a job of bravo", ("POST", "/v1/jobs", None, _job(B)), (201, 403, 403, 201, 401)),
    ("finish alpha's job", ("POST", "/v1/jobs/{a}/finish", None, FINISH), (200, 403, 200, 200, 401)),
    ("finish bravo's job", ("POST", "/v1/jobs/{b}/finish", None, FINISH), (200, 403, 404, 200, 401)),
    ("read alpha's job", ("GET", "/v1/jobs/{a}", None, None), (200, 200, 200, 200, 401)),
    ("read bravo's job", ("GET", "/v1/jobs/{b}", None, None), (200, 200, 404, 200, 401)),
    ("list jobs", ("GET", "/v1/jobs", None, None), (200, 200, 200, 403, 401)),
    ("list bravo's jobs", ("GET", "/v1/jobs", {"team": B}, None), (200, 200, 200, 403, 401)),
    ("alpha's job energy", ("GET", "/v1/jobs/{a}/energy", None, None), (200, 200, 200, 403, 401)),
    ("bravo's job energy", ("GET", "/v1/jobs/{b}/energy", None, None), (200, 200, 404, 403, 401)),
    ("report alpha's work", ("POST", "/v1/jobs/{a}/work", None, WORK), (201, 403, 201, 403, 401)),
    ("report bravo's work", ("POST", "/v1/jobs/{b}/work", None, WORK), (201, 403, 404, 403, 401)),
    ("read alpha's work", ("GET", "/v1/jobs/{a}/work", None, None), (200, 200, 200, 403, 401)),
    ("read bravo's work", ("GET", "/v1/jobs/{b}/work", None, None), (200, 200, 404, 403, 401)),
    ("GPUs", ("GET", "/v1/gpus", None, None), (200, 200, 200, 403, 401)),
    ("ledger totals", ("GET", "/v1/ledger/totals", None, None), (200, 200, 200, 403, 401)),
    ("energy by team", ("GET", "/v1/energy", SPAN, None), (200, 200, 200, 403, 401)),
    ("energy by job", ("GET", "/v1/energy", SPAN | {"group_by": "job"}, None), (200, 200, 200, 403, 401)),
    ("energy by project", ("GET", "/v1/energy", SPAN | {"group_by": "project", "idle_policy": "proportional"},
                           None), (200, 200, 200, 403, 401)),
    ("energy by GPU model", ("GET", "/v1/energy", SPAN | {"group_by": "gpu_model"}, None), (200, 200, 403, 403, 401)),
    ("unattributed processes", ("GET", "/v1/unattributed", SPAN, None), (200, 200, 403, 403, 401)),
    ("efficiency by team", ("GET", "/v1/efficiency", SPAN, None), (200, 200, 200, 403, 401)),
    ("efficiency by GPU model", ("GET", "/v1/efficiency", SPAN | {"group_by": "gpu_model"}, None),
     (200, 200, 200, 403, 401)),
    ("waste", ("GET", "/v1/waste", SPAN, None), (200, 200, 200, 403, 401)),
    ("rebound", ("GET", "/v1/rebound", REBOUND | {"cohort": "team"}, None), (200, 200, 403, 403, 401)),
    ("chargeback by team", ("GET", "/v1/chargeback", {"period": PERIOD}, None), (200, 200, 200, 403, 401)),
    ("chargeback as CSV", ("GET", "/v1/chargeback", {"period": PERIOD, "format": "csv"}, None),
     (200, 200, 200, 403, 401)),
    ("chargeback by project", ("GET", "/v1/chargeback", {"period": PERIOD, "group_by": "project"}, None),
     (200, 200, 403, 403, 401)),
    ("finalize a statement", ("POST", "/v1/statements/2025-06/finalize", None, None), (201, 201, 403, 403, 401)),
    ("read a stored statement", ("GET", "/v1/statements/{statement}", None, None), (200, 200, 403, 403, 401)),
    ("create a site", ("POST", "/v1/sites", None, {"name": "us-{role}"}), (201, 403, 403, 403, 401)),
    ("list sites", ("GET", "/v1/sites", None, None), (200, 200, 200, 403, 401)),
    ("place GPUs", ("POST", "/v1/sites/eu/gpus", None, {"gpu_uuids": ["GPU-b"]}), (200, 403, 403, 403, 401)),
    ("embodied carbon", ("PUT", "/v1/embodied/H100 SXM", None, {"kg_co2e": 150, "lifetime_hours": 35040}),
     (200, 403, 403, 403, 401)),
    ("liveness", ("GET", "/healthz", None, None), (200, 200, 200, 200, 200)),
    ("readiness", ("GET", "/readyz", None, None), (200, 200, 200, 200, 200)),
    ("metrics", ("GET", "/metrics", None, None), (200, 200, 200, 200, 200)),
]
ROLES = ("admin", "finance", "team", "agent", "no key")


def _fill(value, role: str):
    if isinstance(value, str):
        return value.replace("{role}", role.replace(" ", "-"))
    if isinstance(value, dict):
        return {k: _fill(v, role) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, role) for v in value]
    return value


def call(world: World, role: str, request: Request) -> httpx.Response:
    method, path, query, body = request
    path = path.format(a=world.a, b=world.b, statement=world.statement)
    return world.clients[role].request(method, path, params=query, json=_fill(body, role))


@pytest.mark.parametrize(("what", "request_", "role", "expected"), [
    pytest.param(what, request, role, statuses[k], id=f"{what} as {role}")
    for what, request, statuses in TABLE for k, role in enumerate(ROLES)
])
def test_the_role_table(world, what, request_, role, expected):
    response = call(world, role, request_)
    assert response.status_code == expected, f"{what} as {role}: {response.status_code} {response.text[:300]}"
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if expected == 403:
        assert "team keys" in response.json()["detail"] or "allowed roles" in response.json()["detail"]


def test_the_table_covers_every_route_of_the_api(world):
    paths = world.clients["no key"].get("/openapi.json").json()["paths"]
    routes = {(m.upper(), p) for p, ops in paths.items() for m in ops} | {("GET", "/metrics")}
    covered = {(r[0], r[1].replace("{a}", "{job_id}").replace("{b}", "{job_id}")
                .replace("{statement}", "{statement_id}").replace("/eu/", "/{name}/")
                .replace("H100 SXM", "{gpu_model}").replace("2025-06", "{period}")) for _, r, _ in TABLE}
    assert routes == covered


def test_a_team_key_never_sees_another_team_s_data(world):
    # Not the public probes and /metrics: their labels are the fleet's (GPU, node), for anyone.
    for what, request, statuses in TABLE:
        if request[0] != "GET" or statuses[2] != 200 or statuses[4] == 200:
            continue
        response = call(world, "team", request)
        assert response.status_code == 200, what
        assert "bravo" not in response.text.lower(), f"{what} shows bravo's names: {response.text[:500]}"
        assert str(B_ENERGY_J) not in response.text, f"{what} shows bravo's energy"
        if request[1].startswith("/v1/jobs"):  # answers about jobs: bravo's id is nowhere
            assert f'"id":{world.b},' not in response.text, f"{what} shows bravo's job id"
            assert f'"job_id":{world.b},' not in response.text, f"{what} shows bravo's job id"


def test_what_a_team_key_sees_of_shared_answers(world):
    team, admin = world.clients["team"], world.clients["admin"]
    # (the table's tests may have registered more jobs of both teams by now)
    assert {j["team"] for j in team.get("/v1/jobs").json()} == {A}
    assert team.get("/v1/jobs", params={"team": B}).json() == []
    energy = team.get("/v1/energy", params=SPAN).json()
    assert [g["group"] for g in energy["groups"]] == [A]
    assert energy["total_j"] == admin.get("/v1/energy", params=SPAN).json()["total_j"]  # the fleet's, stated
    jobs = [g["group"] for g in team.get("/v1/efficiency", params=SPAN | {"group_by": "job"}).json()["groups"]]
    assert "api:alpha-train" in jobs and all(g.startswith(("api:alpha-", "api:new-alpha-")) for g in jobs)
    statement = team.get("/v1/chargeback", params={"period": PERIOD}).json()
    assert [line["group"] for line in statement["statement"]["lines"]] == [A]
    assert statement["statement"]["scope"]["team"] == A
    assert statement["id"] == world.statement  # the final statement, its alpha part
    full = admin.get(f"/v1/statements/{world.statement}").json()["statement"]
    assert {line["group"] for line in full["lines"]} >= {A, B}
    refused = team.get(f"/v1/statements/{world.statement}")
    assert "GET /v1/chargeback" in refused.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/jobs/{id}", "/v1/jobs/{id}/energy", "/v1/jobs/{id}/work"])
def test_another_team_s_job_answers_exactly_as_a_job_that_does_not_exist(world, path):
    team = world.clients["team"]
    missing = world.a + world.b + 1000
    other = team.get(path.format(id=world.b))
    nothing = team.get(path.format(id=missing))
    assert other.status_code == nothing.status_code == 404
    assert other.text.replace(str(world.b), "N") == nothing.text.replace(str(missing), "N")
    assert dict(other.headers).keys() == dict(nothing.headers).keys()


def test_a_team_cannot_take_another_team_s_job_key(world):
    taken = world.clients["team"].post("/v1/jobs", json=job_payload("bravo-train", ["GPU-x"], T0_US, team=A))
    assert taken.status_code == 409 and str(world.b) not in taken.text
