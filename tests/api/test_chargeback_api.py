"""GET /v1/chargeback, POST /v1/statements/{period}/finalize, GET /v1/statements/{id}, over real HTTP."""

from __future__ import annotations

import csv
import io

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.chargeback.models import Site
from accounting.jobs.models import Gpu
from tests.api.conftest import T0_US, batch_mj, loc_of_error, register
from tests.factories import batch

PERIOD = "2025-07"  # T0 is 2025-07-26 22:00 UTC


@pytest.fixture
def metered(api, ingest, pg_engine) -> int:
    """One job of team nlp on GPU-a for a minute at a flat $100/kWh site (PUE 1): 18,001,770 mJ."""
    register(api, "j1", ["GPU-a"], T0_US, team="nlp")
    ingest(batch("n1", 1, "GPU-a", T0_US, 60))
    with Session(pg_engine) as session:
        site = Site(name="flat", flat_price_per_kwh="100.00", contract_g_per_kwh=10.0)
        session.add(site)
        session.flush()
        session.execute(sa.update(Gpu).where(Gpu.uuid == "GPU-a").values(site_id=site.id))
        session.commit()
    return batch_mj(0, 59)


def test_open_statement_as_json_and_mwh(api, metered):
    response = api.get("/v1/chargeback", params={"period": PERIOD, "group_by": "team", "idle_policy": "separate"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] is None and body["content_hash"] is None and body["statement"]["status"] == "open"
    [line] = body["statement"]["lines"]
    # 18,001,770 mJ = 0.0050004917 kWh × $100 = $0.50004917 → $0.50; market 0.0050004917 kWh × 10 g.
    assert (line["group"], line["energy_mj"], line["cost"], line["currency"]) == ("nlp", metered, "0.50", "USD")
    assert line["co2e_market_g"] == pytest.approx(metered / 3.6e9 * 10, abs=1e-3)
    assert line["co2e_location_g"] is None  # the site has no grid zone: unknown, not 0
    recon = body["statement"]["reconciliation"]
    assert recon["balanced"] and recon["metered_mj"] == metered
    mwh = api.get("/v1/chargeback", params={"period": PERIOD, "unit": "MWh"}).json()
    assert mwh["unit"] == "MWh"
    assert mwh["statement"]["lines"][0]["energy_mwh"] == pytest.approx(line["energy_kwh"] / 1000)


def test_csv_has_units_in_the_header_and_a_row_per_line(api, metered):
    response = api.get("/v1/chargeback", params={"period": PERIOD, "format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 1 and rows[0]["group"] == "nlp" and rows[0]["cost"] == "0.50"
    assert {"energy_kwh", "facility_kwh", "co2e_location_g", "gpu_hours"} <= set(rows[0])


def test_pdf_is_a_pdf_or_a_clear_501(api, metered):
    response = api.get("/v1/chargeback", params={"period": PERIOD, "format": "pdf"})
    if response.status_code == 501:
        assert "pdf" in response.json()["detail"].lower()
    else:
        assert response.status_code == 200 and response.content.startswith(b"%PDF")


@pytest.mark.parametrize(("params", "field"), [
    ({"period": "2025-7"}, "period"), ({"period": "2025-13"}, "period"),
    ({"period": PERIOD, "group_by": "user"}, "group_by"), ({"period": PERIOD, "idle_policy": "even"}, "idle_policy"),
    ({"period": PERIOD, "format": "xml"}, "format"), ({"period": PERIOD, "unit": "GJ"}, "unit"),
])
def test_bad_input_is_a_422_naming_the_field(api, params, field):
    assert loc_of_error(api.get("/v1/chargeback", params=params))[-1] == field


def test_finalize_then_read_it_back(api, metered):
    url = f"/v1/statements/{PERIOD}/finalize"
    created = api.post(url, params={"group_by": "team", "idle_policy": "separate"})
    assert created.status_code == 201, created.text
    first = created.json()
    assert len(first["content_hash"]) == 64
    again = api.post(url, params={"group_by": "team", "idle_policy": "separate"})
    assert again.status_code == 201 and again.json()["id"] == first["id"]  # idempotent
    stored = api.get(f"/v1/statements/{first['id']}")
    assert stored.status_code == 200
    assert stored.json()["content_hash"] == first["content_hash"]
    assert stored.json()["statement"]["status"] == "final"
    current = api.get("/v1/chargeback", params={"period": PERIOD}).json()
    assert (current["id"], current["statement"]["status"]) == (first["id"], "final")
    assert api.get("/v1/statements/999999").status_code == 404
    assert loc_of_error(api.post("/v1/statements/07-2025/finalize"))[-1] == "period"
    assert loc_of_error(api.post(url, params={"idle_policy": "even"}))[-1] == "idle_policy"
