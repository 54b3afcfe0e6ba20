"""The database unreachable: 503 with Retry-After on every route, not a 500.

A PostgreSQL restart is the client's to wait out (the Slurm prolog and the work reporter
retry); a 500 would say the server is broken. The app here is served over real HTTP with an
engine pointed at a port where nothing listens.
"""

from __future__ import annotations

import httpx
import pytest

from accounting.config import Settings
from accounting.db import make_engine
from api.main import create_app
from workers.processes import ApiServer, free_port


@pytest.fixture(scope="module")
def down(tmp_path_factory):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone?connect_timeout=2"
    engine = make_engine(url)
    settings = Settings(home=tmp_path_factory.mktemp("home"), database_url=url)
    with ApiServer(create_app(settings, engine=engine)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
    engine.dispose()


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/1/energy"),
    ("POST", "/v1/jobs/1/finish"),
    ("GET", "/v1/chargeback?period=2025-07"),
])
def test_every_route_answers_503_with_retry_after(down, method, path):
    key = f"wl_abcdefghijkl_{'s' * 43}"  # well-formed, so the API must look it up
    response = down.request(method, path, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert "retry" in response.json()["detail"]


def test_readyz_says_unavailable_and_healthz_stays_up(down):
    assert down.get("/readyz").status_code == 503
    assert down.get("/healthz").status_code == 200
