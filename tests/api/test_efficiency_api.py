"""GET /v1/efficiency and GET /v1/waste over real HTTP on PostgreSQL, from sampler batches with
duty cycles and GPM signals, jobs registered and finished and work reported through the API.

Three H100s for 20 minutes: a training job at MFU 0.4 (600 W), an idle allocation (71 W, 0 %)
and a fake-busy job (133 W at a 100 % duty cycle, tensor pipes idle)."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, US_PER_S, to_datetime
from accounting.jobs.models import Job
from api.routes.efficiency import job_efficiency_public
from tests.api.conftest import finish, iso, loc_of_error, register, utc
from tests.conftest import T0_US

S, MIN, H = US_PER_S, 60 * US_PER_S, US_PER_HOUR
H100 = 989e12
RUN_S = 20 * 60
FLOPS = round(0.4 * H100 * RUN_S)  # 4.7472e17
PERIOD = {"from": iso(T0_US), "to": iso(T0_US + H)}
SIGNALS = {  # power W, duty cycle %, SM %, tensor %, DRAM %
    "train": (600, 97, 80.0, 45.0, 30.0),
    "idle": (71, 0, 0.0, 0.0, 0.0),
    "fake": (133, 100, 3.0, 0.0, 1.0),
}


def readings(seq: int, uuid: str, start_us: int, n: int, power_w: int, duty: int, sm: float, tensor: float,
             dram: float, step_s: int = 10) -> dict:
    """A sampler batch of n intervals of step_s seconds at steady readings."""
    return {
        "version": 1, "node": "n1", "seq": seq, "gpus": [{"uuid": uuid, "name": "NVIDIA H100 80GB HBM3", "index": 0}],
        "intervals": [
            {"uuid": uuid, "start_us": start_us + k * step_s * S, "end_us": start_us + (k + 1) * step_s * S,
             "energy_mj": power_w * step_s * 1000, "method": "counter", "gpu_util_pct": duty,
             "sm_active_pct": sm, "tensor_active_pct": tensor, "dram_bw_pct": dram}
            for k in range(n)
        ],
        "events": [],
    }


@pytest.fixture
def fleet(api, ingest) -> dict[str, int]:
    ids = {}
    for seq, (name, signals) in enumerate(SIGNALS.items()):
        ids[name] = register(api, name, [f"GPU-{name}"], T0_US, team="nlp" if name == "train" else "vision",
                             kind="training")["id"]
        ingest(readings(seq, f"GPU-{name}", T0_US, RUN_S // 10, *signals))
        assert finish(api, ids[name], T0_US + RUN_S * S).status_code == 200
    work = api.post(f"/v1/jobs/{ids['train']}/work", json={"key": "end", "flops": FLOPS, "at": iso(T0_US + RUN_S * S)})
    assert work.status_code == 201, work.text
    return ids


def test_efficiency_by_job_states_units_and_mfu(api, fleet):
    answer = api.get("/v1/efficiency", params={**PERIOD, "group_by": "job"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["group_by"] == "job" and "mfu" in body["units"] and body["units"]["_j"] == "joules"
    assert (utc(body["start"]), utc(body["end"])) == (to_datetime(T0_US), to_datetime(T0_US + H))
    groups = {g["group"]: g for g in body["groups"]}
    assert set(groups) == {"api:train", "api:idle", "api:fake"}
    train = groups["api:train"]
    assert train["flops"] == FLOPS and train["flops_by_provenance"] == {"reported": FLOPS}
    assert train["mfu"] == pytest.approx(0.4)
    assert train["energy_j"] == pytest.approx(600 * RUN_S) and train["allocated_gpu_s"] == RUN_S
    assert train["flop_per_j"] == pytest.approx(FLOPS / (600 * RUN_S))
    assert train["spec_flop_per_j"] == pytest.approx(H100 / 700)
    assert train["realized_vs_spec"] == pytest.approx(FLOPS / (600 * RUN_S) / (H100 / 700))
    assert (train["duty_cycle_pct"], train["tensor_active_pct"], train["mean_power_w"]) == pytest.approx((97, 45, 600))
    # no report: the hardware estimate of tensor pipes that never ran is 0 FLOPs
    assert groups["api:fake"]["flops_by_provenance"] == {"hardware-estimate": 0}
    assert groups["api:fake"]["mfu"] == 0


def test_efficiency_by_team_sums_before_dividing(api, fleet):
    body = api.get("/v1/efficiency", params={**PERIOD, "group_by": "team"}).json()
    vision = {g["group"]: g for g in body["groups"]}["vision"]
    assert (vision["jobs"], vision["mfu_jobs"]) == (2, 2)
    assert vision["energy_j"] == pytest.approx((71 + 133) * RUN_S)
    assert vision["allocated_gpu_s"] == 2 * RUN_S and vision["mfu"] == 0


def test_waste_flags_the_idle_and_the_fake_busy_job_with_evidence(api, fleet):
    answer = api.get("/v1/waste", params=PERIOD)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    found = {f["external_id"]: f for f in body["findings"]}
    assert set(found) == {"idle", "fake"}
    idle, fake = found["idle"], found["fake"]
    assert (idle["kind"], idle["severity"], idle["job_id"]) == ("idle-allocated", "waste", fleet["idle"])
    assert (utc(idle["start"]), utc(idle["end"])) == (to_datetime(T0_US), to_datetime(T0_US + RUN_S * S))
    assert idle["energy_at_stake_j"] == pytest.approx(71 * RUN_S) and idle["cost"] is None
    assert idle["evidence"]["duty_cycle_pct"] == 0 and idle["evidence"]["idle_power_w"] == 70
    assert fake["kind"] == "busy-but-useless" and fake["team"] == "vision"
    assert fake["evidence"]["duty_cycle_pct"] == 100 and fake["evidence"]["mean_power_w"] == pytest.approx(133)
    assert fake["evidence"]["tensor_active_pct"] == 0
    assert body["energy_at_stake_j"] == pytest.approx((71 + 133) * RUN_S)
    assert body["thresholds"]["idle_max_duty_cycle_pct"] == 5 and body["units"]


def test_the_efficiency_object_of_a_job(api, fleet, pg_engine, api_clock):
    with Session(pg_engine) as session:
        public = job_efficiency_public(session, session.get(Job, fleet["train"]), clock=api_clock)
    body = public.model_dump(mode="json")
    assert body["mfu"] == pytest.approx(0.4) and body["flops"] == FLOPS
    assert (body["flops_provenance"], body["work_share"], body["gpu_models"]) == ("reported", 1.0, ["H100 SXM"])
    assert body["peak_flop_per_s"] == pytest.approx(H100) and body["units"]["mfu"]
    assert (utc(body["start"]), utc(body["end"])) == (to_datetime(T0_US), to_datetime(T0_US + H))


def test_get_job_carries_its_efficiency(api, fleet):
    body = api.get(f"/v1/jobs/{fleet['train']}").json()
    assert body["external_id"] == "train"
    assert body["efficiency"]["mfu"] == pytest.approx(0.4) and body["efficiency"]["flops"] == FLOPS
    assert body["efficiency"]["flops_provenance"] == "reported"


def test_an_empty_period_answers_empty_lists(api):
    assert api.get("/v1/efficiency", params=PERIOD).json()["groups"] == []
    assert api.get("/v1/waste", params=PERIOD).json()["findings"] == []


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/efficiency", {"group_by": "planet"}, "group_by"),
    ("/v1/efficiency", {"to": iso(T0_US - H)}, "to"),
    ("/v1/efficiency", {"from": "2025-07-26T22:00:00"}, "from"),
    ("/v1/efficiency", {"from": "yesterday"}, "from"),
    ("/v1/waste", {"to": iso(T0_US)}, "to"),
    ("/v1/waste", {"to": "2025-07-27T00:00:00"}, "to"),
])
def test_bad_queries_name_the_field(api, path, params, field):
    assert loc_of_error(api.get(path, params={**PERIOD, **params}))[-1] == field


def test_a_missing_period_names_the_field(api):
    assert loc_of_error(api.get("/v1/waste", params={"from": iso(T0_US)}))[-1] == "to"
    assert loc_of_error(api.get("/v1/efficiency", params={"to": iso(T0_US)}))[-1] == "from"
