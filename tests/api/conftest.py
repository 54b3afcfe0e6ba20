"""The app served over real HTTP on loopback (uvicorn on a thread), on PostgreSQL.

One server per test session; every test starts and ends with empty tables. The server's clock
stands still at API_NOW_US, six hours after T0, so every time a test uses is in the past
unless it says otherwise. `api` carries an admin key; `client_for(role, team)` gives clients
with keys of other roles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.auth.service import create_key
from accounting.clock import US_PER_HOUR, FakeClock, to_datetime
from accounting.config import Settings
from accounting.ledger.ingest import IngestResult, ingest_batch
from api.main import create_app
from tests.conftest import PG_URL, T0_US, truncate_all
from tests.factories import job
from workers.processes import ApiServer

API_NOW_US = T0_US + 6 * US_PER_HOUR


def iso(t_us: int) -> str:
    return to_datetime(t_us).isoformat()


def job_payload(external_id: str, uuids: list[str], start_us: int, **extra) -> dict:
    """A valid POST /v1/jobs body (from the shared factory), as JSON."""
    return job(external_id, uuids, start_us, **extra).model_dump(mode="json", exclude_none=True)


def _no_server_error(response: httpx.Response) -> None:
    # Bad input must never surface as a 500; only /readyz may answer 503, on purpose.
    if response.status_code >= 500 and response.request.url.path != "/readyz":
        response.read()
        raise AssertionError(f"{response.request.method} {response.request.url} → "
                             f"{response.status_code}: {response.text}")


def http_client(base_url: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, timeout=15, headers=headers,
                        event_hooks={"response": [_no_server_error]})


def new_key(engine: sa.Engine, role: str, team: str | None = None, *, clock: FakeClock | None = None) -> str:
    """A key of `role` (and `team`), committed as `wattledger keys create` does."""
    with Session(engine) as session:
        _, key = create_key(session, role=role, team=team, name=f"test {role}", clock=clock or FakeClock(T0_US))
        session.commit()
    return key


# Calls and readings shared by the API tests.

def register(api: httpx.Client, external_id: str, uuids: list[str], start_us: int, **extra) -> dict:
    response = api.post("/v1/jobs", json=job_payload(external_id, uuids, start_us, **extra))
    assert response.status_code == 201, response.text
    return response.json()


def finish(api: httpx.Client, job_id: int, ended_at: str | int) -> httpx.Response:
    return api.post(f"/v1/jobs/{job_id}/finish",
                    json={"ended_at": iso(ended_at) if isinstance(ended_at, int) else ended_at})


def energy(api: httpx.Client, job_id: int, unit: str = "J") -> dict:
    response = api.get(f"/v1/jobs/{job_id}/energy", params={"unit": unit})
    assert response.status_code == 200, response.text
    return response.json()


def totals(api: httpx.Client) -> dict:
    response = api.get("/v1/ledger/totals")
    assert response.status_code == 200, response.text
    return response.json()


def batch_mj(first: int, last: int, base: int = 300_000) -> int:
    """Σ of factories.batch's 1 s intervals number first..last (interval k holds base + k mJ)."""
    return sum(base + k for k in range(first, last + 1))


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [j["external_id"] for j in response.json()]


def loc_of_error(response: httpx.Response) -> list:
    assert response.status_code == 422, response.text
    return response.json()["detail"][0]["loc"]


def utc(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), f"{value} is not stated in UTC"
    return parsed


@pytest.fixture(scope="session")
def api_clock() -> FakeClock:
    return FakeClock(API_NOW_US)


@pytest.fixture(scope="session")
def api_server(pg_engine: sa.Engine, api_clock: FakeClock, tmp_path_factory) -> Iterator[ApiServer]:
    settings = Settings(home=tmp_path_factory.mktemp("home"), database_url=PG_URL)
    with ApiServer(create_app(settings, engine=pg_engine, clock=api_clock)) as server:
        yield server


@pytest.fixture
def api(api_server: ApiServer, pg_engine: sa.Engine) -> Iterator[httpx.Client]:
    """An HTTP client of the served app with an admin key; the tables (keys too) are emptied
    before and after the test."""
    truncate_all(pg_engine)
    with http_client(api_server.url, new_key(pg_engine, "admin")) as client:
        yield client
    truncate_all(pg_engine)


@pytest.fixture
def client_for(api: httpx.Client, api_server: ApiServer, pg_engine: sa.Engine
               ) -> Iterator[Callable[..., httpx.Client]]:
    """client_for(role, team=None): a client with a new key of that role, for this test."""
    clients: list[httpx.Client] = []

    def _client(role: str, team: str | None = None) -> httpx.Client:
        clients.append(http_client(api_server.url, new_key(pg_engine, role, team)))
        return clients[-1]

    yield _client
    for client in clients:
        client.close()


@pytest.fixture
def ingest(pg_engine: sa.Engine, api_clock: FakeClock) -> Callable[[dict], IngestResult]:
    """Take a sampler batch into the ledger in its own committed transaction, as the worker does."""

    def _ingest(raw: dict) -> IngestResult:
        with Session(pg_engine) as session:
            result = ingest_batch(session, raw, clock=api_clock)
            session.commit()
        assert not result.duplicate
        return result

    return _ingest
