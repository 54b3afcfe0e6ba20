"""Chargeback statements, against figures worked out by hand.

The scenario (all times UTC unless marked local; the site is in America/Los_Angeles):
- Tariff, local time: weekdays 12:00–18:00 on-peak $0.30/kWh, else $0.10 (weekends all $0.10).
- PUE 1.25; 1.50 for the local month 2026-11 (so the first 7 UTC hours of November, still
  October in Los Angeles, take 1.25).
- Grid zone TEST: intensity 200 + 10 × (UTC hour of day) gCO2e/kWh every hour from Oct 30 18:00
  to Nov 1 09:00; the idle hour Oct 30 17:00 has none. Contract (market) factor 50 g/kWh.
- Embodied: H100 SXM 2,000 kg over 40,000 h = 50 g per GPU-hour.
- One GPU. Oct 30 17:00–18:00 idle, 360,000,000 mJ (0.1 kWh). Job A (team nlp) from Oct 30
  18:00 (Fri 11:00 PDT) to Nov 1 09:20, 1,800,000,000 mJ (0.5 kWh, facility 0.625 kWh at 1.25) in
  every hour, except Oct 31 22:00, which the node delivers late. It crosses the on-peak start
  (Fri 12:00 PDT = 19:00) and end (18:00 PDT = Oct 31 01:00), and the DST change: Nov 1 08:00 and
  09:00 UTC are both 01:00 local (PDT, then PST), each metered and priced once.
  Nov 1 09:00–09:20 job A 600,000,000 mJ, 09:20–09:40 idle 300,000,000 mJ, 09:40–10:00 job B
  (team vision) 900,000,000 mJ.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlmodel import select

from accounting.chargeback.models import CarbonIntensity, EmbodiedCarbon, Site, Tariff
from accounting.chargeback.statements import (
    StatementCorrupted,
    build_statement,
    finalize,
    get_statement,
    to_csv,
)
from accounting.clock import FakeClock, to_us
from accounting.errors import InvalidInput
from accounting.jobs.models import Gpu, JobCreate
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.work.models import WorkReportCreate
from accounting.work.service import record_work

UUID = "GPU-la-1"
HOUR = timedelta(hours=1)
FULL_MJ = 1_800_000_000


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def batch(seq: int, intervals: list[tuple[datetime, datetime, int]]) -> dict:
    return {"version": 1, "node": "la-node", "seq": seq,
            "gpus": [{"uuid": UUID, "name": "NVIDIA H100 80GB HBM3", "index": 0}],
            "intervals": [{"uuid": UUID, "start_us": to_us(a), "end_us": to_us(b), "energy_mj": mj, "method": "counter"}
                          for a, b, mj in intervals], "events": []}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(to_us(utc(2026, 12, 1)))


@pytest.fixture
def fleet(session, clock):
    weekday = [[1 if 12 <= h < 18 else 0 for h in range(24)] for _ in range(12)]
    tariff = Tariff(name="TOU test", source="test", period_rates=["0.10", "0.30"], weekday_schedule=weekday,
                    weekend_schedule=[[0] * 24 for _ in range(12)])
    session.add(tariff)
    session.flush()
    site = Site(name="la", timezone="America/Los_Angeles", pue=1.25, pue_by_month={"2026-11": 1.5},
                grid_zone="TEST", tariff_id=tariff.id, contract_g_per_kwh=50.0)
    session.add(site)
    session.add(EmbodiedCarbon(gpu_model="H100 SXM", kg_co2e=2000, lifetime_hours=40_000))
    hour = utc(2026, 10, 30, 18)
    while hour <= utc(2026, 11, 1, 9):
        session.add(CarbonIntensity(zone="TEST", hour=hour, direct_g_per_kwh=200 + 10 * hour.hour))
        hour += HOUR
    session.flush()
    a = create_job(session, JobCreate(external_id="a", team="nlp", project="llm", cost_center="CC-1",
                                      gpu_uuids=[UUID], started_at=utc(2026, 10, 30, 18)), clock=clock)
    finish_job(session, a.id, utc(2026, 11, 1, 9, 20), clock=clock)
    b = create_job(session, JobCreate(external_id="b", team="vision", gpu_uuids=[UUID],
                                      started_at=utc(2026, 11, 1, 9, 40)), clock=clock)
    finish_job(session, b.id, utc(2026, 11, 1, 10), clock=clock)
    record_work(session, b.id, WorkReportCreate(key="b-1", flops=5 * 10**17, at=utc(2026, 11, 1, 10)), clock=clock)
    hours, hour = [], utc(2026, 10, 30, 18)
    while hour < utc(2026, 11, 1, 9):
        if hour != utc(2026, 10, 31, 22):  # delivered late
            hours.append((hour, hour + HOUR, FULL_MJ))
        hour += HOUR
    nine = utc(2026, 11, 1, 9)
    ingest_batch(session, batch(1, [(utc(2026, 10, 30, 17), utc(2026, 10, 30, 18), 360_000_000)] + hours), clock=clock)
    ingest_batch(session, batch(2, [(nine, nine + timedelta(minutes=20), 600_000_000),
                                    (nine + timedelta(minutes=20), nine + timedelta(minutes=40), 300_000_000),
                                    (nine + timedelta(minutes=40), nine + HOUR, 900_000_000)]), clock=clock)
    gpu = session.exec(select(Gpu).where(Gpu.uuid == UUID)).one()
    gpu.site_id = site.id
    session.flush()
    return site


def lines(statement: dict) -> dict[str, dict]:
    return {line["group"]: line for line in statement["lines"]}


def test_october_matches_the_hand_computation_to_the_cent_and_gram(session, clock, fleet):
    s = build_statement(session, period="2026-10", group_by="team", idle_policy="separate", clock=clock)
    nlp, idle = lines(s)["nlp"], lines(s)["(idle)"]
    # nlp: 29 metered hours (30 less the late one) × 0.625 facility kWh. On-peak: Fri 12:00–17:59 PDT = Oct 30
    # 19:00–Oct 31 00:59 UTC, 6 h × 0.625 × $0.30 = $1.125; off-peak 23 h × 0.625 × $0.10 = $1.4375;
    # $2.5625 → $2.56 (half-even).
    assert (nlp["energy_mj"], nlp["cost"], nlp["currency"]) == (29 * FULL_MJ, "2.56", "USD")
    assert nlp["energy_kwh"] == 14.5 and nlp["facility_kwh"] == 18.125 and nlp["gpu_hours"] == 29
    # Location: 0.625 × Σ(200 + 10h) over h = 18..23 (2,430) and h = 0..23 except 22 (7,140) = 0.625 × 9,570.
    assert nlp["co2e_location_g"] == pytest.approx(5981.25, abs=0.5)
    assert nlp["co2e_market_g"] == pytest.approx(906.25, abs=0.5)  # 18.125 kWh × 50
    assert nlp["embodied_co2e_g"] == pytest.approx(1450, abs=0.5)  # 29 GPU-h × 50
    assert nlp["unknown_price_kwh"] == nlp["unknown_location_carbon_kwh"] == 0
    # Idle hour Oct 30 17:00 (10:00 PDT Fri, off-peak): 0.1 kWh × 1.25 × $0.10 = $0.0125 → $0.01; no intensity
    # that hour: location carbon unknown (null) for its 0.125 facility kWh, never 0.
    assert (idle["kind"], idle["cost"], idle["co2e_location_g"]) == ("idle", "0.01", None)
    assert idle["unknown_location_carbon_kwh"] == 0.125
    assert idle["co2e_market_g"] == pytest.approx(6.25) and idle["embodied_co2e_g"] == pytest.approx(50)
    assert s["totals"]["USD"]["cost"] == "2.57"
    assert s["status"] == "open" and s["period"] == "2026-10" and s["adjustments"] == []


def test_november_local_month_pue_dst_and_the_three_idle_policies(session, clock, fleet):
    by_policy = {p: build_statement(session, period="2026-11", group_by="team", idle_policy=p, clock=clock)
                 for p in ("separate", "proportional", "none")}
    sep = lines(by_policy["separate"])
    # nlp: 00–06 UTC still local October (PUE 1.25): 7 × 0.625 = 4.375 kWh; 07:00 (00:00 PDT) and 08:00 (01:00 PDT)
    # at 1.5: 2 × 0.75 = 1.5; 09:00 (01:00 PST, the repeated hour) 600,000,000 mJ = 1/6 kWh × 1.5 = 0.25.
    # 6.125 kWh × $0.10 (weekend) = $0.6125 → $0.61.
    assert sep["nlp"]["facility_kwh"] == 6.125 and sep["nlp"]["cost"] == "0.61"
    # 0.625 × Σ(200 + 10h, h = 0..6) + 0.75 × 270 + 0.75 × 280 + 0.25 × 290 = 1,006.25 + 202.5 + 210 + 72.5
    assert sep["nlp"]["co2e_location_g"] == pytest.approx(1491.25, abs=0.5)
    assert sep["nlp"]["embodied_co2e_g"] == pytest.approx(466.667, abs=0.5)  # 9⅓ GPU-h × 50
    # vision: 0.25 kWh × 1.5 = 0.375 × $0.10 = $0.0375 → $0.04; idle 1/12 kWh × 1.5 = 0.125 → $0.0125 → $0.01.
    assert (sep["vision"]["cost"], sep["(idle)"]["cost"]) == ("0.04", "0.01")
    assert sep["(idle)"]["co2e_location_g"] == pytest.approx(36.25)  # 0.125 × 290
    # Proportional: the 300,000,000 mJ idle of 09:00 split 600 : 900 → nlp 120,000,000, vision 180,000,000.
    # nlp $0.6125 + 1/30 kWh × 1.5 × $0.10 ($0.005) = $0.6175 → $0.62; vision $0.0375 + $0.0075 = $0.045 → $0.04.
    prop = lines(by_policy["proportional"])
    assert "(idle)" not in prop
    assert (prop["nlp"]["energy_mj"], prop["vision"]["energy_mj"]) == (9 * FULL_MJ + 720_000_000, 1_080_000_000)
    assert (prop["nlp"]["cost"], prop["vision"]["cost"]) == ("0.62", "0.04")
    assert prop["nlp"]["co2e_location_g"] == pytest.approx(1505.75, abs=0.5)  # + 0.05 kWh × 290
    assert prop["vision"]["embodied_co2e_g"] == pytest.approx(26.667, abs=0.5)  # ⅓ h × 50 + ⅗ of idle's 16.67
    assert set(lines(by_policy["none"])) == {"nlp", "vision"}
    # Useful work: vision reported 5e17 FLOPs on 900,000 J over 1,200 s of an H100 SXM (989e12 FLOP/s dense BF16).
    assert sep["vision"]["flops"] == 5 * 10**17 and sep["nlp"]["flops"] is None
    assert sep["vision"]["flop_per_j"] == pytest.approx(5e17 / 900_000)
    assert sep["vision"]["mfu"] == pytest.approx(5e17 / (989e12 * 1200))
    metered = 9 * FULL_MJ + 600_000_000 + 300_000_000 + 900_000_000
    for policy, statement in by_policy.items():
        r = statement["reconciliation"]
        assert r["balanced"] and r["metered_mj"] == metered, policy
        assert r["lines_mj"] + r["idle_mj"] + r["unattributed_mj"] == metered
        assert r["idle_mj"] == (0 if policy == "proportional" else 300_000_000)
        assert Decimal(r["lines_j"]) + Decimal(r["idle_j"]) + Decimal(r["unattributed_j"]) == Decimal(r["metered_j"])


def test_other_groupings_and_csv(session, clock, fleet):
    s = build_statement(session, period="2026-11", group_by="cost_center", idle_policy="none", clock=clock)
    assert set(lines(s)) == {"CC-1", "(unknown)"}
    text = to_csv(s)
    header = text.splitlines()[0].split(",")
    assert {"energy_kwh", "facility_kwh", "cost", "co2e_location_g", "gpu_hours"} <= set(header)
    assert len(text.splitlines()) == 1 + len(s["lines"])
    assert "CC-1" in text and ",0.61," in text


def test_finalize_is_immutable_and_late_data_becomes_next_months_adjustment(session, clock, fleet):
    final = finalize(session, period="2026-10", group_by="team", idle_policy="separate", clock=clock)
    assert final.content["status"] == "final" and len(final.content_hash) == 64
    assert finalize(session, period="2026-10", group_by="team", idle_policy="separate", clock=clock).id == final.id
    content, digest = dict(final.content), final.content_hash
    # The late hour Oct 31 22:00 (15:00 PDT Sat, off-peak): 0.625 facility kWh, $0.0625; 0.625 × 420 g.
    ingest_batch(session, batch(3, [(utc(2026, 10, 31, 22), utc(2026, 10, 31, 23), FULL_MJ)]), clock=clock)
    clock.advance(3600)
    again = get_statement(session, final.id)
    assert again.content_hash == digest and again.content == content
    assert lines(again.content)["nlp"]["cost"] == "2.56"
    assert lines(build_statement(session, period="2026-10", group_by="team", idle_policy="separate",
                                 clock=clock))["nlp"]["cost"] == "2.62"  # $2.625 → $2.62 (half-even)
    november = build_statement(session, period="2026-11", group_by="team", idle_policy="separate", clock=clock)
    [adj] = november["adjustments"]
    assert (adj["for_period"], adj["group"], adj["currency"]) == ("2026-10", "nlp", "USD")
    assert adj["energy_mj"] == FULL_MJ and adj["cost"] == "0.06"  # $2.62 − $2.56
    assert adj["facility_kwh"] == pytest.approx(0.625)
    assert adj["co2e_location_g"] == pytest.approx(262.5) and adj["co2e_market_g"] == pytest.approx(31.25)
    assert adj["embodied_co2e_g"] == pytest.approx(50)
    # Once November is final with that adjustment, December carries nothing more for October.
    finalize(session, period="2026-11", group_by="team", idle_policy="separate", clock=clock)
    december = build_statement(session, period="2026-12", group_by="team", idle_policy="separate", clock=clock)
    assert december["adjustments"] == []


def test_a_tampered_statement_is_refused(session, clock, fleet):
    final = finalize(session, period="2026-10", group_by="team", idle_policy="none", clock=clock)
    final.content = {**final.content, "period": "2026-09"}
    session.flush()
    with pytest.raises(StatementCorrupted):
        get_statement(session, final.id)


def test_an_unpriced_site_reports_unknown_cost_not_zero(session, clock, fleet):
    fleet.tariff_id = None
    session.flush()
    nlp = lines(build_statement(session, period="2026-11", group_by="team", idle_policy="separate",
                                clock=clock))["nlp"]
    assert nlp["cost"] is None and nlp["unknown_price_kwh"] == 6.125


@pytest.mark.parametrize(("field", "kwargs"), [("period", {"period": "2026-13"}), ("group_by", {"group_by": "x"}),
                                               ("idle_policy", {"idle_policy": "even"})])
def test_bad_input_names_the_field(session, clock, field, kwargs):
    args = {"period": "2026-10", "group_by": "team", "idle_policy": "separate"} | kwargs
    with pytest.raises(InvalidInput) as info:
        build_statement(session, clock=clock, **args)
    assert info.value.field == field
