"""The wire form of a batch (version 2, columns) carries exactly what version 1 carries, and is
checked at least as strictly: whatever it accepts, version 1 accepts with the same values; what
it refuses, it refuses naming the field."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounting.clock import US_PER_S, FakeClock
from accounting.errors import InvalidInput
from accounting.gpu.simulated import SimulatedFleet
from accounting.gpu.workloads import Inference, Training
from accounting.ledger.batch import _US_MAX
from accounting.ledger.columnar import FIELDS, to_wire
from accounting.ledger.ingest import parse_batch
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool
from tests.conftest import T0_US
from tests.ledger.test_ingest_fast import ODD, typed

PROCESS = st.fixed_dictionaries({"pid": st.integers(0, 2**31), "sm_pct": st.none() | st.floats(0, 100),
                                 "job_key": st.none() | st.sampled_from(["slurm:1", "k8s:ns/pod"]),
                                 "user": st.none() | st.text(max_size=5).filter(lambda s: "\x00" not in s)})
MIG = st.fixed_dictionaries({"uuid": st.sampled_from(["MIG-a", "MIG-b"]), "activity_pct": st.integers(0, 100)})


@st.composite
def intervals(draw) -> dict:
    start = draw(st.integers(0, _US_MAX - 10 * US_PER_S))
    optional = {
        "power_mw": st.integers(0, 10**8), "gpu_util_pct": st.integers(0, 100), "memory_util_pct": st.integers(0, 100),
        "memory_used_bytes": st.integers(0, 2**63 - 1), "sm_clock_mhz": st.integers(0, 100_000),
        "sm_active_pct": st.floats(0, 100) | st.integers(0, 100), "tensor_active_pct": st.floats(0, 100),
        "dram_bw_pct": st.floats(0, 100),
    }
    interval = {"uuid": draw(st.sampled_from(["GPU-a", "GPU-b", "GPU-c"])), "start_us": start,
                "end_us": start + draw(st.integers(1, 10 * US_PER_S)), "energy_mj": draw(st.integers(0, 10**15)),
                "method": draw(st.sampled_from(["counter", "power-integral", "missing"]))}
    for field, values in optional.items():
        if draw(st.booleans()):
            interval[field] = draw(st.none() | values)
    if draw(st.booleans()):
        interval["processes"] = draw(st.lists(PROCESS, max_size=3))
    if draw(st.booleans()):
        interval["mig"] = draw(st.lists(MIG, max_size=2))
    return interval


def v1(intervals_: list[dict]) -> dict:
    return {"version": 1, "node": "n1", "seq": 7, "created_us": T0_US,
            "gpus": [{"uuid": "GPU-a", "name": "NVIDIA H100 80GB HBM3", "index": 0}],
            "intervals": intervals_, "events": [{"uuid": "GPU-a", "at_us": T0_US, "kind": "gpu-lost", "detail": "x"}],
            "state_after": {"version": 1, "baselines": {"GPU-a": {"energy_mj": 5}}}}


def from_wire(wire: dict) -> dict:
    """The version 1 batch a wire batch stands for (what version 1 would be asked to accept)."""
    columns = wire["intervals"]
    out = []
    for k in range(len(columns["gpu"])):
        interval = {"uuid": columns["uuids"][columns["gpu"][k]]}
        for field in FIELDS:
            if field in columns:
                value = columns[field][k]
                if value is not None or field not in ("processes", "mig"):
                    interval[field] = value
        out.append(interval)
    return {**{k: v for k, v in wire.items() if k != "intervals"}, "version": 1, "intervals": out}


def same(a, b) -> bool:
    return (a.node, a.seq, a.created_us, a.gpus, a.events) == (b.node, b.seq, b.created_us, b.gpus, b.events) \
        and typed([tuple(r) for r in a.readings]) == typed([tuple(r) for r in b.readings])


@settings(max_examples=200, deadline=None)
@given(st.lists(intervals(), max_size=12))
def test_the_wire_form_carries_what_version_1_carries(items):
    batch = v1(items)
    wire = to_wire(batch)
    assert "state_after" not in wire and wire["version"] == 2
    assert same(parse_batch(wire), parse_batch(batch))


def test_a_samplers_batches_travel_whole():
    clock = FakeClock(T0_US)
    fleet = SimulatedFleet.build(["H100 SXM", "A100 SXM", "H200 SXM"], clock=clock, seed=4, node="w")
    for gpu, workload in zip(fleet.gpus(), [Training(), Inference(mean_load=0.4), None], strict=True):
        if workload:
            fleet.assign(gpu.uuid, T0_US, T0_US + 300 * US_PER_S, workload, tenant="slurm:7")
    import tempfile

    with tempfile.TemporaryDirectory() as spool:
        sampler = Sampler(backend=fleet, spool=Spool(spool), clock=clock, node="w1", resolver=fleet)
        batches = []
        for second in range(301):
            clock.set(T0_US + second * US_PER_S)
            sampler.sample()
            if second and second % 60 == 0:
                batches.append(sampler.flush())
    assert sum(len(b["intervals"]) for b in batches) == 900
    assert any(i["processes"] for b in batches for i in b["intervals"])  # process detail travels too
    for batch in batches:
        assert same(parse_batch(to_wire(batch)), parse_batch(batch))


WIRE = to_wire(v1([{"uuid": "GPU-a", "start_us": T0_US + k * US_PER_S, "end_us": T0_US + (k + 1) * US_PER_S,
                    "energy_mj": 300_000, "method": "counter", "power_mw": 300_000, "gpu_util_pct": 50,
                    "sm_active_pct": 40.0, "processes": [{"pid": 9, "sm_pct": 40.0, "job_key": "slurm:1",
                                                          "user": "ann"}]} for k in range(4)]))


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: c.update(count=5), "intervals.gpu"),
    (lambda c: c.update(count=-1), "intervals.count"),
    (lambda c: c["gpu"].__setitem__(2, 1), "intervals.gpu.2"),
    (lambda c: c["uuids"].__setitem__(0, "x" * 97), "intervals.uuids"),
    (lambda c: c["energy_mj"].__setitem__(1, -1), "intervals.energy_mj.1"),
    (lambda c: c["energy_mj"].__setitem__(1, 5.0), "intervals.energy_mj.1"),
    (lambda c: c["energy_mj"].__setitem__(1, True), "intervals.energy_mj.1"),
    (lambda c: c["end_us"].__setitem__(3, c["start_us"][3]), "intervals.end_us.3"),
    (lambda c: c["method"].__setitem__(0, "guess"), "intervals.method.0"),
    (lambda c: c["power_mw"].__setitem__(2, 10**8 + 1), "intervals.power_mw.2"),
    (lambda c: c["gpu_util_pct"].__setitem__(2, "50"), "intervals.gpu_util_pct.2"),
    (lambda c: c["sm_active_pct"].__setitem__(1, float("nan")), "intervals.sm_active_pct.1"),
    (lambda c: c["sm_active_pct"].__setitem__(1, 100.5), "intervals.sm_active_pct.1"),
    (lambda c: c["processes"].__setitem__(3, [{"pid": -1}]), "intervals.processes.3.0.pid"),
    (lambda c: c["processes"].__setitem__(3, [{"pid": 1, "job_key": "nocolon"}]), "intervals.processes.3.0.job_key"),
    (lambda c: c["processes"].__setitem__(0, "pid 9"), "intervals.processes.0"),
    (lambda c: c.pop("start_us"), "intervals.start_us"),
])
def test_a_bad_column_is_refused_naming_the_field(change, field):
    wire = copy.deepcopy(WIRE)
    change(wire["intervals"])
    with pytest.raises(InvalidInput) as refused:
        parse_batch(wire)
    assert refused.value.field == field or refused.value.field.startswith(field + "."), refused.value


def test_a_bad_head_is_refused_as_in_version_1():
    for change, field in [({"node": ""}, "node"), ({"seq": -1}, "seq"), ({"intervals": [1]}, "intervals"),
                          ({"gpus": [{"uuid": ""}]}, "gpus.0.uuid")]:
        with pytest.raises(InvalidInput) as refused:
            parse_batch({**WIRE, **change})
        assert refused.value.field == field, (change, refused.value)


COLUMNS = [f for f in WIRE["intervals"] if f != "count"] + ["gpu_util_pct", "memory_used_bytes", "dram_bw_pct", "mig"]


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(COLUMNS), index=st.integers(0, 3), value=st.sampled_from(ODD + [None, [], {}]),
       whole=st.booleans())
def test_whatever_the_wire_form_accepts_version_1_accepts_alike(field, index, value, whole):
    wire = copy.deepcopy(WIRE)
    columns = wire["intervals"]
    if whole or field not in columns:
        columns[field] = value if whole else [None] * 4
    if not whole:
        columns[field][min(index, len(columns[field]) - 1)] = value
    try:
        parsed = parse_batch(wire)
    except InvalidInput as refused:
        assert refused.field.startswith("intervals"), refused
        return
    assert same(parsed, parse_batch(from_wire(wire)))


GOOD_INTERVAL = {"uuid": "GPU-a", "start_us": T0_US, "end_us": T0_US + US_PER_S, "energy_mj": 1, "method": "counter"}


@pytest.mark.parametrize(("change", "field"), [
    ({"intervals": [{"start_us": 1}]}, "intervals"), ({"intervals": ["not an interval"]}, "intervals"),
    ({"intervals": [{"uuid": ["GPU-a"]}]}, "intervals"), ({"intervals": 5}, "intervals"),
    ({"intervals": None}, "intervals"), ({"version": 99}, "version"),
    ({"intervals": [{**GOOD_INTERVAL, "processes": None}]}, "intervals.0.processes"),
    ({"intervals": [{**GOOD_INTERVAL, "processes": {}}]}, "intervals.0.processes"),
    ({"intervals": [{**GOOD_INTERVAL, "mig": ""}]}, "intervals.0.mig"),
    ({"intervals": [{**GOOD_INTERVAL, "mig": False}]}, "intervals.0.mig"),
])
def test_a_batch_not_plainly_version_1_goes_as_it_is_and_is_refused_by_name(change, field):
    batch = {**v1([]), **change}
    wire = to_wire(batch)
    assert wire == {k: v for k, v in batch.items() if k != "state_after"}  # nothing repaired
    with pytest.raises(InvalidInput) as refused:
        parse_batch(wire)
    assert refused.value.field.startswith(field), refused.value
