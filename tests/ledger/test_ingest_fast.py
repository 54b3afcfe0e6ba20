"""The fast ingest path gives exactly what the general one gives: the hand check of intervals takes
what the Batch model takes (same values, same errors), the one-piece shortcut of attribution
gives the general shares, and ingest's ledger is the one re-attribution rebuilds from samples."""

from __future__ import annotations

import copy
import math

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from accounting.clock import US_PER_HOUR, US_PER_S, to_datetime, to_us
from accounting.jobs.models import Gpu
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.attribution import NO_SIGNALS, Tenancy, _pieces, attribute_interval
from accounting.ledger.batch import _US_MAX, Batch, _from_model, checked_batch
from accounting.ledger.ingest import ingest_batch
from accounting.ledger.models import GpuEvent, LedgerEntry, Sample
from accounting.ledger.reports import conservation_errors, fleet_totals
from accounting.ledger.service import SUMMED, reattribute
from tests.conftest import T0_US
from tests.factories import batch, job

GOOD = {"uuid": "GPU-a", "start_us": T0_US, "end_us": T0_US + US_PER_S, "energy_mj": 300_000, "method": "counter",
        "power_mw": 300_000, "gpu_util_pct": 40, "memory_util_pct": 10, "memory_used_bytes": 2**30,
        "sm_clock_mhz": 1_980, "sm_active_pct": 35.5, "tensor_active_pct": 12.0, "dram_bw_pct": 3.25,
        "pids": [11], "processes": [{"pid": 11, "sm_pct": 35.0, "job_key": "slurm:7", "user": "ann"}],
        "mig": [{"uuid": "MIG-a", "activity_pct": 20.0}]}
# Values a sampler (or a corrupt or hostile batch) might put in any field.
ODD = [None, 0, 1, -1, 5, 5.0, 5.5, True, False, "5", "", "x", "a:b", "\x00", "GPU-\x00", float("nan"), float("inf"),
       100, 101, 100.0, 100.5, 2**31, 2**31 + 1, 2**63, 10**8 + 1, 100_001, 10**15, 10**15 + 1, _US_MAX, _US_MAX + 1,
       [], [1], [True], [-1], [5.0], [2**31], [2**31 + 1], {}, "counter", "missing", "power-integral", "bogus",
       "n" * 96, "n" * 97, "n" * 200, "n" * 201, "n" * 300, "n" * 301]
# … and in a process's or a MIG instance's.
PART_ODD = [*ODD, ":a", ":ab", "ab:", "a:b:c", "ab", "slurm:7", "s:" + "n" * 298, "s:" + "n" * 299, 7, 7.0, 2**31 - 1]
ENTRIES = st.dictionaries(st.sampled_from(["pid", "sm_pct", "job_key", "user", "uuid", "activity_pct", "extra"]),
                          st.sampled_from(PART_ODD), max_size=5)


def short(value) -> str:
    return repr(value)[:20]


def typed(value):
    """The value with the type of every part, so that 5 and 5.0 differ."""
    if isinstance(value, list | tuple):
        return [type(value).__name__, [typed(v) for v in value]]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return [type(value).__name__, value]


def outcome(parse, raw: dict):
    try:
        return "ok", typed(parse(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        return "refused", first["loc"], first["msg"]


def by_model(raw: dict):
    return [_from_model(i) for i in Batch.model_validate(raw).intervals]


def by_hand(raw: dict):
    return checked_batch(raw).readings


def with_interval(interval) -> dict:
    raw = batch("n1", 1, "GPU-a", T0_US, 2)
    raw["intervals"].insert(1, interval)
    return raw


@pytest.mark.parametrize("key", sorted(GOOD))
@pytest.mark.parametrize("value", ODD, ids=short)
def test_the_hand_check_takes_and_refuses_what_the_model_does(key, value):
    raw = with_interval({**copy.deepcopy(GOOD), key: value})
    assert outcome(by_hand, raw) == outcome(by_model, raw)


@pytest.mark.parametrize(("part", "key"), [("processes", k) for k in ("pid", "sm_pct", "job_key", "user")]
                         + [("mig", k) for k in ("uuid", "activity_pct")])
@pytest.mark.parametrize("value", PART_ODD, ids=short)
def test_process_and_mig_fields_are_checked_as_the_model_checks_them(part, key, value):
    interval = copy.deepcopy(GOOD)
    interval[part][0][key] = value
    raw = with_interval(interval)
    assert outcome(by_hand, raw) == outcome(by_model, raw)


@pytest.mark.parametrize(("key", "item", "bound"), [("pids", 1, 4096), ("processes", {"pid": 1}, 4096),
                                                   ("mig", {"uuid": "MIG-a", "activity_pct": 1.0}, 8)])
@pytest.mark.parametrize("extra", [0, 1])
def test_list_bounds_are_the_models(key, item, bound, extra):
    raw = with_interval({**GOOD, key: [item] * (bound + extra)})
    assert outcome(by_hand, raw) == outcome(by_model, raw)
    assert outcome(by_hand, raw)[0] == ("refused" if extra else "ok")


@pytest.mark.parametrize("key", sorted(GOOD))
def test_a_missing_field_is_judged_as_the_model_judges_it(key):
    interval = copy.deepcopy(GOOD)
    del interval[key]
    raw = with_interval(interval)
    assert outcome(by_hand, raw) == outcome(by_model, raw)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(sorted(GOOD)), st.sampled_from(ODD) | st.lists(ENTRIES, max_size=3),
                               max_size=4),
       dropped=st.sets(st.sampled_from(sorted(GOOD)), max_size=2))
def test_any_interval_gets_the_models_verdict(changes, dropped):
    interval = {k: v for k, v in {**copy.deepcopy(GOOD), **changes}.items() if k not in dropped}
    raw = with_interval(interval)
    assert outcome(by_hand, raw) == outcome(by_model, raw)


@pytest.mark.parametrize("intervals", [None, (), "x", [GOOD] * 3, [1, GOOD]], ids=repr)
def test_odd_interval_lists_are_judged_by_the_model(intervals):
    raw = batch("n1", 1, "GPU-a", T0_US, 1) | {"intervals": copy.deepcopy(intervals)}
    assert outcome(by_hand, raw) == outcome(by_model, raw)


def test_the_first_error_is_the_models_even_when_the_head_is_bad_too():
    raw = with_interval({**GOOD, "energy_mj": -1}) | {"events": [{"at_us": -1, "kind": "x"}]}
    assert outcome(by_hand, raw) == outcome(by_model, raw)
    assert outcome(by_hand, raw)[1] == ("intervals", 1, "energy_mj")


H = US_PER_HOUR
EDGES = st.integers(0, 12).map(lambda k: k * H // 4) | st.integers(0, 3 * H)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(start=st.integers(0, 8).map(lambda k: k * H // 4) | st.integers(0, 2 * H),
       length=st.integers(1, 8).map(lambda k: k * H // 4) | st.integers(1, 3) | st.integers(1, 2 * H),
       energy=st.integers(0, 10**12), method=st.sampled_from(["counter", "power-integral", "missing"]),
       held=st.lists(st.tuples(st.integers(1, 4), EDGES, st.none() | EDGES), max_size=4))
def test_the_one_piece_shortcut_gives_the_general_shares(start, length, energy, method, held):
    tenancies = [Tenancy(job_id, a, b) for job_id, a, b in held]
    fast = attribute_interval(start, start + length, energy, method, tenancies)
    general = _pieces(start, start + length, energy, method, tenancies, NO_SIGNALS)

    def plain(shares):
        return sorted((s.hour_us, s.job_id or 0, str(s.method), s.energy_mj, s.gpu_us) for s in shares)

    assert plain(fast) == plain(general)
    assert sum(s.energy_mj for s in fast) == energy


# Through the database (PostgreSQL: COPY and array upserts; SQLite: plain INSERTs).

S = US_PER_S


def reading(uuid: str, start_us: int, seconds: int = 1, **extra) -> dict:
    return {"uuid": uuid, "start_us": start_us, "end_us": start_us + seconds * S, "method": "counter",
            "energy_mj": 400_000 * seconds + start_us // S % 997, **extra}


def ledger(session) -> list[tuple]:
    return sorted(tuple(row) for row in session.execute(sa.select(
        LedgerEntry.gpu_id, LedgerEntry.hour, LedgerEntry.account, LedgerEntry.method,
        *(LedgerEntry.__table__.c[c] for c in SUMMED))))


def test_ingest_books_what_re_attribution_rebuilds_from_the_samples(session, clock):
    clock.set(T0_US + 3 * H)
    start = T0_US + H - 30 * S  # the batch crosses an hour
    a = create_job(session, job("a", ["GPU-a"], start + 5 * S + S // 2), clock=clock)  # starts inside an interval
    b = create_job(session, job("b", ["GPU-b"], T0_US), clock=clock)
    c = create_job(session, job("c", ["GPU-b"], T0_US), clock=clock)  # b and c share GPU-b
    finish_job(session, c.id, to_datetime(start + 40 * S), clock=clock)
    finish_job(session, a.id, to_datetime(start + 50 * S), clock=clock)
    intervals = [reading(uuid, start + k * S, gpu_util_pct=k % 101, sm_active_pct=k / 3 if k % 2 else None)
                 for k in range(60) for uuid in ("GPU-a", "GPU-b", "GPU-c")]
    intervals += [reading("GPU-a", start + 60 * S, 5, method="power-integral"), reading("GPU-c", start + 60 * S, 5)]
    raw = {"version": 1, "node": "n1", "seq": 1, "gpus": [{"uuid": u, "name": "NVIDIA H100 80GB HBM3"}
                                                           for u in ("GPU-a", "GPU-b", "GPU-c")],
           "intervals": intervals}
    ingest_batch(session, raw, clock=clock)
    booked = ledger(session)
    assert {row[2] for row in booked} == {"idle", f"job:{a.id}", f"job:{b.id}", f"job:{c.id}"}
    # activity-µs, summed independently: GPU-c is idle throughout
    gpu_c = session.execute(sa.select(Gpu.id).where(Gpu.uuid == "GPU-c")).scalar_one()
    mine = [i for i in intervals if i["uuid"] == "GPU-c"]
    sums = {name: sum(r[4 + k] for r in booked if r[0] == gpu_c) for k, name in enumerate(SUMMED)}
    assert sums["sm_active_us"] == sum(round((i["end_us"] - i["start_us"]) * i["sm_active_pct"] / 100)
                                       for i in mine if i.get("sm_active_pct") is not None)
    assert sums["gpm_known_us"] == S * sum(1 for i in mine if i.get("sm_active_pct") is not None)
    assert sums["busy_us"] == sum(S * i["gpu_util_pct"] // 100 for i in mine if "gpu_util_pct" in i)
    assert sums["util_known_us"] == 60 * S and sums["gpu_us"] == 65 * S
    gpu_ids = list(session.execute(sa.select(Gpu.id)).scalars())
    assert reattribute(session, gpu_ids, T0_US) == len(intervals)
    assert ledger(session) == booked
    assert conservation_errors(session) == [] and fleet_totals(session).balanced


def test_samples_hold_every_reading_as_sent(session, clock):
    detailed = {**GOOD, "processes": [{"pid": 11, "sm_pct": 35, "job_key": "slurm:7", "user": "ann", "x": 1}]}
    raw = {"version": 1, "node": "n1", "seq": 1, "intervals": [detailed, reading("GPU-a", GOOD["end_us"])]}
    ingest_batch(session, raw, clock=clock)
    s = Sample.__table__
    rows = session.execute(sa.select(s).order_by(s.c.start_at)).mappings().all()
    assert [(to_us(r["start_at"]), to_us(r["end_at"]), r["energy_mj"]) for r in rows] == [
        (i["start_us"], i["end_us"], i["energy_mj"]) for i in raw["intervals"]]
    first = dict(rows[0])
    assert {k: first[k] for k in ("power_mw", "gpu_util_pct", "memory_used_bytes", "sm_active_pct", "dram_bw_pct")} \
        == {k: GOOD[k] for k in ("power_mw", "gpu_util_pct", "memory_used_bytes", "sm_active_pct", "dram_bw_pct")}
    assert typed(first["processes"]) == typed([{"pid": 11, "sm_pct": 35.0, "job_key": "slurm:7", "user": "ann"}])
    assert first["mig"] == GOOD["mig"] and rows[1]["processes"] is None and rows[1]["mig"] is None


def test_a_long_stored_interval_is_found_under_a_later_batch(session, clock):
    # after a gap the sampler sends one interval for the whole gap: 3 h here
    ingest_batch(session, {"version": 1, "node": "n1", "seq": 1, "intervals": [reading("GPU-a", T0_US, 3 * 3600)]},
                 clock=clock)
    inside = [reading("GPU-a", T0_US + 2 * H + k * S) for k in range(10)]
    late = {"version": 1, "node": "n2", "seq": 1, "intervals": [*inside, reading("GPU-a", T0_US + 3 * H)]}
    result = ingest_batch(session, late, clock=clock)
    assert (result.intervals, result.energy_mj) == (1, late["intervals"][-1]["energy_mj"])
    kinds = session.execute(sa.select(GpuEvent.kind)).scalars().all()
    assert kinds.count("overlap-dropped") == 10
    assert conservation_errors(session) == []


def test_a_gpu_is_rewritten_only_when_its_description_changes_or_a_minute_passed(session, clock):
    def seen() -> tuple:
        return session.execute(sa.select(Gpu.last_seen_at, Gpu.name, Gpu.model).where(Gpu.uuid == "GPU-a")).one()

    for seq, (advance_s, name) in enumerate([(0, "NVIDIA H100 80GB HBM3"), (30, "NVIDIA H100 80GB HBM3"),
                                             (1, "NVIDIA A100-SXM4-80GB"), (59, "NVIDIA A100-SXM4-80GB"),
                                             (1, "NVIDIA A100-SXM4-80GB")]):
        clock.advance(advance_s)
        ingest_batch(session, batch("n1", seq, "GPU-a", T0_US + seq * 10 * S, 1, name=name), clock=clock)
        last_seen, stored_name, model = seen()
        expected_s = {0: 0, 1: 0, 2: 31, 3: 31, 4: 91}[seq]  # 30 s later: unchanged; renamed; a minute on
        assert (to_us(last_seen) - T0_US) // S == expected_s, seq
        assert stored_name == name and model == ("H100 SXM" if "H100" in name else "A100 SXM")
