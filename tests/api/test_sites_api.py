"""Sites over real HTTP: created with their factors, GPUs placed at them, bad input named."""

from __future__ import annotations

import pytest

from tests.api.conftest import loc_of_error


def test_a_site_with_its_gpus(api):
    made = api.post("/v1/sites", json={"name": "eu-west", "timezone": "Europe/London", "pue": 1.2,
                                      "grid_zone": "GB", "currency": "eur", "price_series": "BE-DAM",
                                      "pue_by_month": {"2024-01": 1.3}, "residual_mix_g_per_kwh": 380})
    assert made.status_code == 201, made.text
    assert made.json()["currency"] == "EUR" and made.json()["pue_by_month"] == {"2024-01": 1.3}
    placed = api.post("/v1/sites/eu-west/gpus", json={"gpu_uuids": ["GPU-a", "GPU-b"]})
    assert placed.status_code == 200 and placed.json()["gpus"] == 2
    assert [s["name"] for s in api.get("/v1/sites").json()] == ["eu-west"]
    assert api.post("/v1/sites", json={"name": "eu-west"}).status_code == 409
    assert api.post("/v1/sites/nowhere/gpus", json={"gpu_uuids": ["GPU-a"]}).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "timezone": "Mars/Olympus"}, "timezone"), ({"name": "x", "pue": 0.9}, "pue"),
    ({"name": "x", "flat_price_per_kwh": "cheap"}, "flat_price_per_kwh"),
    ({"name": "x", "pue_by_month": {"July": 1.2}}, "pue_by_month"), ({"name": "x", "tariff_id": 999}, "tariff_id"),
])
def test_bad_sites_name_the_field(api, body, field):
    assert field in loc_of_error(api.post("/v1/sites", json=body))


def test_embodied_carbon_of_a_gpu_model(api):
    put = api.put("/v1/embodied/H100 SXM", json={"kg_co2e": 1500, "lifetime_hours": 43800})
    assert put.status_code == 200 and put.json()["kg_co2e"] == 1500
    again = api.put("/v1/embodied/H100 SXM", json={"kg_co2e": 1600, "lifetime_hours": 43800})
    assert again.json()["kg_co2e"] == 1600
    assert "gpu_model" in loc_of_error(api.put("/v1/embodied/Voodoo2", json={"kg_co2e": 1, "lifetime_hours": 1}))
    assert "lifetime_hours" in loc_of_error(api.put("/v1/embodied/H100 SXM", json={"kg_co2e": 1, "lifetime_hours": 0}))
