"""What a team key may not register, though the job is of its own team.

A job's GPUs decide whose energy it gets: a team key registering a job on another team's GPU
would halve that team's energy and read it back through the job; a project or cost centre of
another team would bill them for ours; a backdated start would re-attribute history. Found by a
review of the API keys; each case below was a 201 before.
"""

from __future__ import annotations

import pytest
from sqlmodel import Session

from accounting.clock import US_PER_HOUR, US_PER_S
from tests.api.conftest import API_NOW_US, T0_US, batch_mj, energy, iso, job_payload, register
from tests.factories import batch
from tests.work.test_waste import training_at_mfu

MINUTE_AGO = API_NOW_US - 60 * US_PER_S


def _refused(response, field: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["detail"].startswith(f"`{field}`"), response.text


def test_a_gpu_another_team_holds_is_refused_and_its_energy_untouched(api, client_for, ingest):
    bravo = register(api, "bravo-serve", ["GPU-b"], API_NOW_US - 600 * US_PER_S, team="bravo")["id"]
    ingest(batch("n2", 1, "GPU-b", API_NOW_US - 600 * US_PER_S, 60))
    before = energy(api, bravo)["energy_mj"]
    alpha = client_for("team", "alpha")
    _refused(alpha.post("/v1/jobs", json=job_payload("spy", ["GPU-b"], MINUTE_AGO, team="alpha")), "gpu_uuids")
    assert energy(api, bravo)["energy_mj"] == before == batch_mj(0, 59)


def test_a_gpu_the_fleet_does_not_know_is_refused(api, client_for):
    alpha = client_for("team", "alpha")
    _refused(alpha.post("/v1/jobs", json=job_payload("ghost", ["GPU-nobody"], MINUTE_AGO, team="alpha")),
             "gpu_uuids")
    assert api.get("/v1/gpus").json() == []  # and nothing was added to the fleet


def test_a_start_more_than_an_hour_ago_is_refused_for_team_keys_only(api, client_for):
    register(api, "seed", ["GPU-a"], MINUTE_AGO, team="alpha")  # makes GPU-a known
    two_hours_ago = API_NOW_US - 7200 * US_PER_S
    alpha = client_for("team", "alpha")
    _refused(alpha.post("/v1/jobs", json=job_payload("late", ["GPU-a"], two_hours_ago, team="alpha")), "started_at")
    agent = client_for("agent")  # the Slurm prolog, or a backfill, may
    assert agent.post("/v1/jobs", json=job_payload("late", ["GPU-a"], two_hours_ago, team="alpha")).status_code == 201


def test_another_team_s_project_or_cost_centre_is_refused(api, client_for):
    register(api, "bravo-train", ["GPU-b"], MINUTE_AGO, team="bravo", project="bravo-proj", cost_center="bravo-cc")
    register(api, "seed", ["GPU-a"], MINUTE_AGO, team="alpha")
    alpha = client_for("team", "alpha")
    for field, value in (("project", "bravo-proj"), ("cost_center", "bravo-cc")):
        body = job_payload(f"steal-{field}", ["GPU-a"], MINUTE_AGO, team="alpha", **{field: value})
        _refused(alpha.post("/v1/jobs", json=body), field)
    own = job_payload("mine", ["GPU-a"], MINUTE_AGO, team="alpha", project="alpha-proj", cost_center="alpha-cc")
    assert alpha.post("/v1/jobs", json=own).status_code == 201


def test_a_team_key_sees_its_low_mfu_finding_without_the_peers_median(api, client_for, pg_engine):
    """The peers are every team's jobs of that kind and model: with a few peers of its own at known
    MFU, a team could solve the median for another team's job (all these jobs are team nlp's here,
    which is the point: the answer must not depend on whose the peers are)."""
    with Session(pg_engine) as session:
        for name, mfu in (("p1", 0.40), ("p2", 0.42), ("p3", 0.38), ("slow", 0.1)):
            training_at_mfu(session, name, mfu)
        session.commit()
    span = {"from": iso(T0_US), "to": iso(T0_US + 6 * US_PER_HOUR)}
    as_admin = api.get("/v1/waste", params=span).json()["findings"]
    as_team = client_for("team", "nlp").get("/v1/waste", params=span).json()["findings"]
    assert [f["kind"] for f in as_admin] == [f["kind"] for f in as_team] == ["low-mfu"]
    assert as_admin[0]["evidence"]["peer_median_mfu"] == pytest.approx(0.40)
    assert "peer_median_mfu" not in as_team[0]["evidence"] and as_team[0]["evidence"]["peer_jobs"] == 3
