"""The statement as build_statement shapes it (totals per currency, method texts by key) is what
the PDF shows: the one currency's totals, every method text, the sites as factors."""

from accounting.chargeback.present import for_pdf

STATEMENT = {
    "period": "2024-07", "group_by": "team", "idle_policy": "proportional",
    "lines": [{"kind": "group", "group": "nlp", "currency": "EUR", "cost": "31.27"},
              {"kind": "idle", "group": "(idle)", "currency": "EUR", "cost": "3.15"}],
    "totals": {"EUR": {"cost": "34.42", "energy_kwh": 500.0, "gpu_hours": 700.0}},
    "method": {"cost": "Σ per (GPU, hour) …", "co2e_location": "hourly intensity …",
               "sites": [{"site": "eu-west", "pue": 1.2, "tariff": None}], "embodied_g_per_gpu_hour": {}},
}


def test_one_currency_totals_and_method_texts():
    st = for_pdf(STATEMENT)
    assert (st["currency"], st["totals"]["cost"], st["groups"]) == ("EUR", "34.42", 1)
    assert list(st["method"]["texts"]) == ["Cost", "Carbon, location-based"]
    assert st["method"]["factors"] == {"site eu-west": {"pue": 1.2}}
    assert st["idle_label"].startswith("Idle no group used")


def test_several_currencies_add_energy_not_money():
    st = for_pdf({**STATEMENT, "totals": {"EUR": {"cost": "1.00", "energy_kwh": 1.0},
                                           "USD": {"cost": "2.00", "energy_kwh": 2.0}}})
    assert st["totals"]["cost"] is None and st["totals"]["energy_kwh"] == 3.0 and st["currency"] == "EUR / USD"
