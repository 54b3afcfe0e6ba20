"""GET /v1/rebound over real HTTP: two periods seeded through ingest and the API, the effects
in kWh adding up to the total change, and bad queries named."""

from __future__ import annotations

import math

import pytest

from accounting.clock import US_PER_HOUR, US_PER_S
from tests.api.conftest import finish, iso, loc_of_error, register
from tests.api.test_efficiency_api import readings
from tests.conftest import T0_US

S, H = US_PER_S, US_PER_HOUR
A100, H100 = 312e12, 989e12
RUN_S = 1800


def seed(api, ingest) -> None:
    # baseline hour: one A100 at 300 W doing MFU 0.4; the next hour: one H100 at 600 W, MFU 0.35
    for seq, (uuid, name, start, power, flops) in enumerate([
        ("GPU-a100", "NVIDIA A100-SXM4-80GB", T0_US, 300, 0.4 * A100 * RUN_S),
        ("GPU-h100", "NVIDIA H100 80GB HBM3", T0_US + H, 600, 0.35 * H100 * RUN_S),
    ]):
        raw = readings(seq, uuid, start, RUN_S // 10, power, 95, 80.0, 40.0, 30.0)
        raw["gpus"][0]["name"] = name
        ingest(raw)
        job = register(api, f"run-{seq}", [uuid], start, team="llm", kind="training")
        assert finish(api, job["id"], start + RUN_S * S).status_code == 200
        report = api.post(f"/v1/jobs/{job['id']}/work", json={"key": "all", "flops": round(flops),
                                                              "at": iso(start + RUN_S * S)})
        assert report.status_code == 201, report.text


def test_rebound_between_two_hours_by_team(api, ingest):
    seed(api, ingest)
    params = {"baseline": f"{iso(T0_US)}/{iso(T0_US + H)}", "current": f"{iso(T0_US + H)}/{iso(T0_US + 2 * H)}",
              "cohort": "team"}
    answer = api.get("/v1/rebound", params=params)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["baseline"]["energy_kwh"] == pytest.approx(300 * RUN_S / 3.6e6)
    assert body["current"]["energy_kwh"] == pytest.approx(600 * RUN_S / 3.6e6)
    effects = body["effects"]
    assert math.fsum(effects.values()) == pytest.approx(body["total_change_kwh"], rel=1e-9)
    # work grew 0.35·989 / (0.4·312) = 2.77×; energy per peak FLOP fell (600/989)/(300/312) = 0.63×
    assert effects["scale"] > 0 > effects["chip_intensity"] and effects["mix"] == 0
    assert effects["utilization"] > 0  # MFU fell from 0.40 to 0.35
    assert [c["cohort"] for c in body["cohorts"]] == ["llm"]
    assert body["cohorts"][0]["baseline"]["mfu"] == pytest.approx(0.4)
    assert "kWh" in body["summary"]


def test_by_gpu_model_a_move_to_new_chips_shows_as_mix(api, ingest):
    seed(api, ingest)
    body = api.get("/v1/rebound", params={"baseline": f"{iso(T0_US)}/{iso(T0_US + H)}",
                                          "current": f"{iso(T0_US + H)}/{iso(T0_US + 2 * H)}"}).json()
    assert {c["cohort"]: c["status"] for c in body["cohorts"]} == {"A100 SXM": "vanished", "H100 SXM": "new"}
    assert body["effects"]["mix"] == pytest.approx(body["total_change_kwh"])


@pytest.mark.parametrize("params, field", [
    ({"baseline": "2025-01-01"}, "baseline"), ({"current": "2025-02-01/2025-01-01"}, "current"),
    ({"cohort": "planet"}, "cohort"), ({"work": "watts"}, "work"),
])
def test_bad_rebound_queries_name_the_field(api, params, field):
    query = {"baseline": "2025-01-01/2025-02-01", "current": "2025-02-01/2025-03-01", **params}
    assert field in loc_of_error(api.get("/v1/rebound", params=query))
