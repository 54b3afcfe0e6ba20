"""The demo's chargeback: a site with the real grid and market data from ../shared/data (Great
Britain's hourly carbon intensity of 2024, Belgium's day-ahead prices), the demo's GPUs placed
there, and the month's statement as the API gives it."""

from __future__ import annotations

import httpx
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from accounting.chargeback.carbon import import_electricitymaps_csv
from accounting.chargeback.prices import import_price_csv
from accounting.demo.scenario import SHARED_DATA

CARBON_FILE = SHARED_DATA / "electricitymaps_GB_2024_hourly.csv"
PRICES_FILE = SHARED_DATA / "entsoe_BE_day_ahead_prices_2022-2024_EUR_per_kWh.csv"
SITE = {"name": "demo-eu-west", "timezone": "Europe/London", "pue": 1.2, "grid_zone": "GB", "currency": "EUR",
        "price_series": "BE-day-ahead", "residual_mix_g_per_kwh": 380.0}


def set_up_site(engine, client: httpx.Client, gpu_uuids: list[str]) -> None:
    """Load the real factor files (as `wattledger import carbon|prices` would) and place the GPUs."""
    with Session(engine) as session:
        import_electricitymaps_csv(session, CARBON_FILE.read_text(encoding="utf-8"))
        import_price_csv(session, PRICES_FILE.read_text(encoding="utf-8"), series=SITE["price_series"],
                         currency="EUR", tz="Europe/Brussels")
        session.commit()
    client.post("/v1/sites", json=SITE).raise_for_status()
    client.post(f"/v1/sites/{SITE['name']}/gpus", json={"gpu_uuids": gpu_uuids}).raise_for_status()


def statement(client: httpx.Client, period: str) -> dict:
    answer = client.get("/v1/chargeback", params={"period": period, "group_by": "team",
                                                  "idle_policy": "proportional", "format": "json"})
    answer.raise_for_status()
    body = answer.json()["statement"]
    return {"period": period, "group_by": "team", "idle_policy": "proportional",
            "lines": [{k: line.get(k) for k in ("group", "energy_kwh", "facility_kwh", "cost", "currency",
                                                 "co2e_location_g", "co2e_market_g", "idle_kwh")}
                      for line in body["lines"]],
            "totals": body["totals"], "reconciliation": body["reconciliation"]}


def render_statement(chargeback: dict, console: Console) -> None:
    table = Table(title=f"Chargeback {chargeback['period']} by team (idle spread in proportion) — site "
                        f"{SITE['name']}: PUE {SITE['pue']}, Belgian day-ahead prices, GB grid carbon")
    for column in ("team", "GPU kWh", "facility kWh", "cost", "CO2e location (kg)", "CO2e market (kg)"):
        table.add_column(column, justify="left" if column == "team" else "right")
    for line in chargeback["lines"]:
        loc, mkt = line["co2e_location_g"], line["co2e_market_g"]
        table.add_row(line["group"], f"{line['energy_kwh']:.3f}", f"{line['facility_kwh']:.3f}",
                      f"{line['currency']} {line['cost']}" if line["cost"] is not None else "—",
                      "—" if loc is None else f"{loc / 1000:.3f}", "—" if mkt is None else f"{mkt / 1000:.3f}")
    console.print(table)
    r = chargeback["reconciliation"]
    verdict = "balanced" if r["balanced"] else "NOT BALANCED"
    console.print(f"statement reconciliation: lines {r['lines_j']} J + idle {r['idle_j']} J + unattributed "
                  f"{r['unattributed_j']} J = metered {r['metered_j']} J: {verdict}")
