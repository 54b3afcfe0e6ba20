"""API keys over real HTTP: what is refused (401) and why, what is public by setting, and the
`wattledger keys` commands run as processes on their own database."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.auth.models import ApiKey
from accounting.auth.service import authenticate, create_key, revoke
from accounting.clock import FakeClock
from accounting.config import Settings
from api.main import create_app
from tests.api.conftest import T0_US, http_client, new_key
from tests.conftest import PG_URL
from workers.processes import ApiServer

REFUSED = "the API key is not valid (malformed, unknown or revoked)"


def assert_401(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert detail in response.json()["detail"]


def test_no_key_is_401_saying_how_to_send_one(api, api_server):
    with http_client(api_server.url) as anonymous:
        assert_401(anonymous.get("/v1/jobs"), "Authorization: Bearer <key>")
        # refused before the body is looked at: no 422 that would tell a stranger the schema
        assert_401(anonymous.post("/v1/jobs", json={"nonsense": True}), "API key is required")


@pytest.mark.parametrize("header", [
    "Basic dXNlcjpwYXNz",  # another scheme
    "Bearer",  # no key
    "Bearer wl_AAAAAAAAAAAA_" + "A" * 43,  # well-formed, unknown
    "Bearer not-a-key",  # malformed
])
def test_a_key_that_is_not_one_is_401(api, api_server, header):
    with http_client(api_server.url) as client:
        response = client.get("/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_a_key_with_a_wrong_secret_or_revoked_is_401(api, api_server, pg_engine):
    key = new_key(pg_engine, "finance")
    forged = f"{key[:16]}{'B' if key[16] != 'B' else 'C'}{key[17:]}"  # wl_<12-char id>_<secret>: one secret char
    with http_client(api_server.url) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert_401(client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"}), REFUSED)
        with Session(pg_engine) as session:
            revoke(session, key[3:15], clock=FakeClock(T0_US))
            session.commit()
        assert_401(client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}), REFUSED)


def test_a_role_that_may_not_is_403_naming_the_roles_that_may(client_for):
    response = client_for("agent").get("/v1/ledger/totals")
    assert response.status_code == 403
    assert response.json()["detail"] == "agent keys may not do this; allowed roles: admin, finance, team"


def test_only_the_hash_is_stored(api, pg_engine):
    with Session(pg_engine) as session:
        row, key = create_key(session, role="team", team="nlp", name="ci", clock=FakeClock(T0_US))
        session.commit()
        stored = session.execute(sa.select(ApiKey.__table__)).all()
        assert key not in repr(stored) and key.rsplit("_", 1)[-1] not in repr(stored)
        assert re.fullmatch(r"[0-9a-f]{64}", row.secret_sha256)
        assert authenticate(session, key).team == "nlp"
        assert authenticate(session, key + "x") is None


def test_the_openapi_document_declares_the_bearer_scheme(api):
    spec = api.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key: `wattledger keys create --role …` prints one."}
    assert spec["paths"]["/v1/jobs"]["get"]["security"] == [{"HTTPBearer": []}]


def test_probes_and_metrics_are_public_by_default(api, api_server):
    with http_client(api_server.url) as anonymous:
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path


@pytest.fixture
def private_server(api, pg_engine, api_clock, tmp_path) -> Iterator[str]:
    settings = Settings(home=tmp_path, database_url=PG_URL, api_public_health=False, api_public_metrics=False)
    with ApiServer(create_app(settings, engine=pg_engine, clock=api_clock)) as server:
        yield server.url


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_settings_make_probes_and_metrics_need_any_valid_key(private_server, pg_engine, path):
    with http_client(private_server) as client:
        assert_401(client.get(path), "is not public")
        assert_401(client.get(path, headers={"Authorization": "Bearer wl_AAAAAAAAAAAA_" + "A" * 43}), REFUSED)
        agent = new_key(pg_engine, "agent")  # the least of roles is enough
        assert client.get(path, headers={"Authorization": f"Bearer {agent}"}).status_code == 200


# ── the `wattledger keys` commands ─────────────────────────────────────────────────────────

def wattledger(home, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")} | {"WATTLEDGER_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_keys_create_list_revoke(tmp_path):
    made = wattledger(tmp_path, "keys", "create", "--role", "team", "--team", "nlp", "--name", "nlp CI")
    assert made.returncode == 0, made.stderr
    key = re.search(r"^API key: (wl_\S+)$", made.stdout, re.MULTILINE).group(1)
    assert "not shown again" in made.stdout
    key_id = key.split("_")[1]

    listed = wattledger(tmp_path, "keys", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and "nlp CI" in listed.stdout
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout

    with sqlite3.connect(tmp_path / "wattledger.db") as db:  # what is on disk: the hash, never the key
        (stored,) = db.execute("SELECT key_id, secret_sha256, role, team FROM api_key").fetchall()
    assert stored[0] == key_id and stored[2:] == ("team", "nlp") and key not in str(stored)

    revoked = wattledger(tmp_path, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout
    assert "revoked" in wattledger(tmp_path, "keys", "list").stdout
    missing = wattledger(tmp_path, "keys", "revoke", "nosuchkey")
    assert missing.returncode == 1 and "not found" in missing.stdout


@pytest.mark.parametrize(("args", "says"), [
    (("--role", "team"), "--team: a team key needs its team"),
    (("--role", "finance", "--team", "nlp"), "--team: only team keys have a team"),
    (("--role", "root"), "--role: one of admin, finance, team, agent"),
])
def test_keys_create_refuses_what_makes_no_sense(tmp_path, args, says):
    result = wattledger(tmp_path, "keys", "create", *args)
    assert result.returncode == 2 and says in result.stdout, result.stdout + result.stderr
    assert "API key:" not in result.stdout
