"""Several batches in one call give exactly what ingesting them one after another gives: the same
samples, ledger, events, GPUs and per-batch results, whatever the nodes, duplicates and overlaps
(a re-sent batch under a new seq, two samplers on one GPU, the same batch twice in one call)."""

from __future__ import annotations

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounting.clock import US_PER_S, to_datetime
from accounting.jobs.models import Gpu
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch, ingest_batches, parse_batch
from accounting.ledger.models import GpuEvent, IngestedBatch, LedgerEntry, Sample, UnattributedUse
from accounting.ledger.reports import conservation_errors
from tests.conftest import T0_US
from tests.factories import job

S = US_PER_S
GPUS = {"n1": ["GPU-a", "GPU-b"], "n2": ["GPU-c", "GPU-a"]}  # GPU-a read by both nodes' samplers
NAMES = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]


@st.composite
def batches(draw) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        node = draw(st.sampled_from(sorted(GPUS)))
        intervals = []
        for _ in range(draw(st.integers(0, 8))):
            uuid = draw(st.sampled_from(GPUS[node]))
            start = T0_US + draw(st.integers(0, 7_200)) * S  # two hours: intervals cross the hour
            interval = {"uuid": uuid, "start_us": start, "end_us": start + draw(st.integers(1, 900)) * S,
                        "energy_mj": draw(st.integers(0, 10**9)),
                        "method": draw(st.sampled_from(["counter", "counter", "power-integral"]))}
            if draw(st.booleans()):
                interval["gpu_util_pct"] = draw(st.integers(0, 100))
            processes = draw(st.lists(st.sampled_from([
                {"pid": 1, "sm_pct": 60.0, "job_key": "slurm:j1", "user": "ann"},
                {"pid": 2, "sm_pct": 30.0, "job_key": "slurm:j2", "user": "bob"},
                {"pid": 3, "sm_pct": 10.0, "job_key": None, "user": "eve"},  # a stranger: unattributed
            ]), max_size=3, unique_by=lambda p: p["pid"]))
            if processes:
                interval["processes"] = processes
            intervals.append(interval)
        events = [{"uuid": GPUS[node][0], "at_us": T0_US, "kind": "counter-reset", "detail": "x"}] \
            if draw(st.booleans()) else []
        out.append({"version": 1, "node": node, "seq": draw(st.integers(1, 4)),  # seqs repeat: duplicates
                    "gpus": [{"uuid": u, "name": draw(st.sampled_from(NAMES)), "index": k}
                             for k, u in enumerate(GPUS[node])],
                    "intervals": intervals, "events": events})
    return out


def state(session) -> dict:
    """Every row ingest writes, GPUs named by uuid (PostgreSQL's ids are not rolled back)."""
    uuid_of = dict(session.execute(sa.select(Gpu.id, Gpu.uuid)).all())

    def rows(*columns) -> list[tuple]:
        named = [[uuid_of.get(v) if c.name == "gpu_id" else v for c, v in zip(columns, r, strict=True)]
                 for r in session.execute(sa.select(*columns))]
        return sorted((tuple(r) for r in named), key=repr)

    return {
        "samples": rows(*(c for c in Sample.__table__.c if c.name != "id")),
        "ledger": rows(*(c for c in LedgerEntry.__table__.c if c.name != "id")),
        "unattributed": rows(*(c for c in UnattributedUse.__table__.c if c.name != "id")),
        "events": rows(GpuEvent.gpu_id, GpuEvent.node, GpuEvent.at, GpuEvent.kind, GpuEvent.detail),
        "batches": rows(IngestedBatch.node, IngestedBatch.seq, IngestedBatch.intervals, IngestedBatch.energy_mj),
        "gpus": rows(Gpu.uuid, Gpu.node, Gpu.name, Gpu.model, Gpu.index),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raws=batches())
def test_batches_in_one_call_equal_one_after_another(session, clock, raws):
    clock.set(T0_US + 4 * 3600 * S)
    with session.begin_nested() as outer:  # jobs for both runs; rolled back after the example
        j1 = create_job(session, job("j1", ["GPU-a"], T0_US + 600 * S), clock=clock)
        create_job(session, job("j2", ["GPU-a", "GPU-c"], T0_US), clock=clock)
        finish_job(session, j1.id, to_datetime(T0_US + 5_000 * S), clock=clock)
        with session.begin_nested() as one_by_one:
            alone = [ingest_batch(session, raw, clock=clock) for raw in raws]
            expected = state(session)
            one_by_one.rollback()
        with session.begin_nested() as grouped:
            together = ingest_batches(session, [parse_batch(raw) for raw in raws], clock=clock)
            assert together == alone
            assert state(session) == expected
            assert conservation_errors(session) == []
            grouped.rollback()
        outer.rollback()


def test_a_group_counts_each_batch_once_and_reports_each(session, clock):
    def one(node: str, seq: int, start_s: int) -> dict:
        return {"version": 1, "node": node, "seq": seq, "intervals": [
            {"uuid": f"GPU-{node}", "start_us": T0_US + start_s * S, "end_us": T0_US + (start_s + 10) * S,
             "energy_mj": 3_000_000, "method": "counter"}]}

    ingest_batch(session, one("x", 1, 0), clock=clock)
    raws = [one("x", 1, 0), one("x", 2, 10), one("y", 1, 0), one("x", 2, 10), one("x", 3, 5)]
    results = ingest_batches(session, [parse_batch(r) for r in raws], clock=clock)
    assert [(r.node, r.seq, r.duplicate, r.intervals, r.energy_mj) for r in results] == [
        ("x", 1, True, 1, 3_000_000),  # ingested before
        ("x", 2, False, 1, 3_000_000),
        ("y", 1, False, 1, 3_000_000),
        ("x", 2, True, 1, 3_000_000),  # twice in the group: the second is the duplicate
        ("x", 3, False, 0, 0),  # overlaps x/1 and x/2: dropped, with an event
    ]
    assert session.scalar(sa.select(sa.func.count()).select_from(IngestedBatch)) == 4
    assert session.scalar(sa.select(sa.func.sum(Sample.energy_mj))) == 9_000_000
    assert session.execute(sa.select(GpuEvent.node, GpuEvent.kind)).all() == [("x", "overlap-dropped")]


def test_a_job_registered_while_a_group_is_attributed_early_gets_its_energy(session, clock, monkeypatch):
    """Attribution runs before the GPUs are locked; a job that another transaction registers in
    between is seen under the lock, and the batches are attributed again with it."""
    import accounting.ledger.ingest as ingest_module

    def raw(seq: int, start_s: int) -> dict:
        return {"version": 1, "node": "n1", "seq": seq, "gpus": [{"uuid": "GPU-a", "name": NAMES[0]}],
                "intervals": [{"uuid": "GPU-a", "start_us": T0_US + (start_s + k) * S,
                               "end_us": T0_US + (start_s + k + 1) * S, "energy_mj": 500_000, "method": "counter"}
                              for k in range(10)]}

    clock.set(T0_US + 3600 * S)
    ingest_batch(session, raw(1, 0), clock=clock)  # GPU-a is known: the next group is attributed early
    real = ingest_module.register_gpus
    registered = []

    def register_after_a_job_appears(*args, **kwargs):
        if not registered:  # the other transaction commits its job just before our lock
            registered.append(create_job(session, job("late", ["GPU-a"], T0_US + 10 * S), clock=clock))
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "register_gpus", register_after_a_job_appears)
    ingest_batches(session, [parse_batch(raw(2, 10)), parse_batch(raw(3, 20))], clock=clock)
    accounts = dict(session.execute(sa.select(LedgerEntry.account, sa.func.sum(LedgerEntry.energy_mj))
                                    .group_by(LedgerEntry.account)).all())
    assert accounts == {"idle": 5_000_000, f"job:{registered[0].id}": 10_000_000}
    assert conservation_errors(session) == []


def test_a_group_attributed_early_is_not_attributed_again_when_nothing_changed(session, clock, monkeypatch):
    import accounting.ledger.ingest as ingest_module

    def raw(seq: int) -> dict:
        return {"version": 1, "node": "n1", "seq": seq, "gpus": [{"uuid": "GPU-a", "name": NAMES[0]}],
                "intervals": [{"uuid": "GPU-a", "start_us": T0_US + (10 * seq + k) * S,
                               "end_us": T0_US + (10 * seq + k + 1) * S, "energy_mj": 400_000, "method": "counter"}
                              for k in range(10)]}

    clock.set(T0_US + 3600 * S)
    create_job(session, job("j", ["GPU-a"], T0_US), clock=clock)
    ingest_batch(session, raw(0), clock=clock)  # GPU-a known and described as the group describes it
    calls = []
    real = ingest_module._deltas
    monkeypatch.setattr(ingest_module, "_deltas", lambda *a: calls.append(1) or real(*a))
    results = ingest_batches(session, [parse_batch(raw(seq)) for seq in (1, 2, 3)], clock=clock)
    assert [r.intervals for r in results] == [10, 10, 10]
    assert len(calls) == 3  # once each, before the lock; the signals under the lock were the same
    calls.clear()
    ingest_batches(session, [parse_batch(raw(seq)) for seq in (4, 4)], clock=clock)
    assert len(calls) == 2  # the second is a duplicate: nothing to attribute again
