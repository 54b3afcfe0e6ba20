"""The Alibaba openb trace scenario: the loader against the data README, the busiest window, the
placement rules, and a replay through sampler → ingest → ledger against the fleet's truth, on
PostgreSQL and SQLite."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from accounting.clock import FakeClock
from accounting.demo import alibaba
from accounting.demo.alibaba import MILLI, FleetGpu, Pod, TraceFormatError, alibaba_scenario, busiest_window
from accounting.gpu.sharing import IDLE, UNATTRIBUTED
from accounting.ledger.reports import conservation_errors, fleet_totals, job_energy

pytestmark = pytest.mark.skipif(not alibaba.POD_FILE.exists(), reason=f"trace not found at {alibaba.POD_FILE}")
SAMPLE_S, BATCH_S = 5, 300


@pytest.fixture(scope="module")
def pods() -> list[Pod]:
    return alibaba.load_pods()


@pytest.fixture(scope="module")
def default_scenario(pods):
    return alibaba_scenario(pods=pods)


def test_the_pod_list_matches_the_data_readme(pods):
    assert len(pods) == 8_152
    assert Counter(p.num_gpu for p in pods) == {0: 1_088, 1: 6_989, 2: 16, 4: 15, 8: 44}
    assert Counter(p.phase for p in pods) == {"Running": 5_193, "Failed": 1_870, "Pending": 897, "Succeeded": 192}
    assert Counter(p.qos for p in pods).keys() == {"LS", "BE", "Burstable", "Guaranteed"}
    assert {p.phase for p in pods if p.scheduled_s is None} == {"Pending"}
    assert sum(p.scheduled_s is None for p in pods) == 897
    cut_off = max(p.deletion_s for p in pods)
    assert cut_off == 12_902_960 and sum(p.phase == "Running" and p.deletion_s == cut_off for p in pods) == 34
    assert all(p.gpu_milli == MILLI for p in pods if p.num_gpu > 1)


def test_the_node_list_matches_the_data_readme():
    nodes = alibaba.load_nodes()
    assert len(nodes) == 1_213
    assert Counter(n.model for n in nodes) == {"G2": 549, "T4": 404, "P100": 134, "V100M16": 55, "G3": 39,
                                                "V100M32": 30, "A10": 2}  # fmt: skip


GOOD_POD = "openb-pod-9,6000,12288,1,460,,LS,Running,10,500,12"


@pytest.mark.parametrize(("row", "message"), [
    ("openb-pod-9,6000,12288,one,460,,LS,Running,10,500,12", "num_gpu is not an integer: 'one'"),
    ("openb-pod-9,6000,12288,1,1460,,LS,Running,10,500,12", "gpu_milli = 1460 is outside [1, 1000]"),
    ("openb-pod-9,6000,12288,1,0,,LS,Running,10,500,12", "gpu_milli = 0 is outside [1, 1000]"),
    ("openb-pod-9,6000,12288,9,1000,,LS,Running,10,500,12", "num_gpu = 9 is outside [0, 8]"),
    ("openb-pod-9,6000,12288,1,460,,Gold,Running,10,500,12", "qos 'Gold' is not one of"),
    ("openb-pod-9,6000,12288,1,460,,LS,Lost,10,500,12", "pod_phase 'Lost' is not one of"),
    ("openb-pod-9,6000,12288,1,460,H100,LS,Running,10,500,12", "gpu_spec names unknown GPU models ['H100']"),
    ("openb-pod-9,6000,12288,1,460,,LS,Running,10,500,600", "deletion_time 500 precedes"),
    ("openb-pod-9,6000,12288,1,460,,LS,Running,10,500", "10 fields, expected 11"),
    (",6000,12288,1,460,,LS,Running,10,500,12", "empty name"),
])  # fmt: skip
def test_a_malformed_pod_row_is_named_with_its_line(tmp_path, row, message):
    path = tmp_path / "pods.csv"
    path.write_text(",".join(alibaba.POD_HEADER) + "\n" + GOOD_POD + "\n" + row + "\n")
    with pytest.raises(TraceFormatError, match="pods.csv line 3: ") as caught:
        alibaba.load_pods(path)
    assert message in str(caught.value) and caught.value.line == 3


def test_bad_headers_models_and_missing_files_are_clear(tmp_path):
    path = tmp_path / "nodes.csv"
    path.write_text("sn,cpu,memory_mib,gpu,model\n")
    with pytest.raises(TraceFormatError, match="nodes.csv line 1: header is"):
        alibaba.load_nodes(path)
    path.write_text(",".join(alibaba.NODE_HEADER) + "\nopenb-node-1,64000,262144,8,H800\n")
    with pytest.raises(TraceFormatError, match="line 2: model 'H800' is not one of"):
        alibaba.load_nodes(path)
    with pytest.raises(FileNotFoundError, match="section 3"):
        alibaba.load_pods(tmp_path / "absent.csv")
    good = tmp_path / "pods.csv"
    good.write_text(",".join(alibaba.POD_HEADER) + "\n" + GOOD_POD.replace(",,", ",V100M16|V100M32,") + "\n")
    assert alibaba.load_pods(good)[0].gpu_spec == ("V100M16", "V100M32")


def _task_seconds(tasks: list[Pod], window_starts_s, window_s: int) -> np.ndarray:
    """Brute force: the task-seconds inside each window."""
    begin = np.array([p.scheduled_s for p in tasks])
    end = np.array([p.deletion_s for p in tasks])
    out = []
    for chunk in np.array_split(np.atleast_1d(window_starts_s), max(1, len(np.atleast_1d(window_starts_s)) // 256)):
        w = chunk[:, None]
        out.append(np.clip(np.minimum(end, w + window_s) - np.maximum(begin, w), 0, None).sum(axis=1))
    return np.concatenate(out)


def test_the_window_is_the_busiest_and_the_same_every_time(pods):
    tasks = alibaba.gpu_tasks(pods)
    assert len(tasks) == 6_203  # num_gpu ≥ 1, scheduled
    window_s = 6 * 3_600
    chosen = busiest_window(tasks, window_s)
    assert chosen == busiest_window(list(reversed(tasks)), window_s) == alibaba_scenario(pods=pods).window_start_s
    best = _task_seconds(tasks, chosen, window_s)[0]
    every_half_hour = np.arange(0, max(p.deletion_s for p in tasks) - window_s, 1_800)
    assert _task_seconds(tasks, every_half_hour, window_s).max() <= best
    assert _task_seconds(tasks, chosen + np.array([-600, -1, 1, 600]), window_s).max() <= best  # a local maximum too
    toy = [Pod(f"p{i}", 0, 0, 1, MILLI, (), "BE", "Running", s, e, s)
           for i, (s, e) in enumerate([(0, 10), (100, 200), (120, 190), (150, 400), (500, 510)])]  # fmt: skip
    assert busiest_window(toy, 50) == 140  # [140, 190): three tasks throughout
    assert busiest_window(toy[:1] + toy[-1:], 5) == 0  # ties: the earliest


def _check_packing(scenario) -> None:
    by_gpu = defaultdict(list)
    for job in scenario.jobs:
        assert scenario.start_us <= job.start_us < job.end_us <= scenario.end_us
        assert len(set(job.gpu_uuids)) == len(job.gpu_uuids) and (not job.shared or len(job.gpu_uuids) == 1)
        nodes = {g.node for g in scenario.gpus if g.uuid in job.gpu_uuids}
        assert len(nodes) == 1, f"{job.external_id} spans nodes {nodes}"
        for uuid in job.gpu_uuids:
            by_gpu[uuid].append(job)
    for uuid, jobs in by_gpu.items():
        for job in jobs:
            others = [o for o in jobs if o is not job and o.start_us < job.end_us and job.start_us < o.end_us]
            if not job.shared:
                assert others == [], f"whole-GPU job {job.external_id} shares {uuid}"
            for t in {job.start_us, *(o.start_us for o in others if o.start_us > job.start_us)}:
                in_use = sum(o.gpu_milli for o in [job, *others] if o.start_us <= t < o.end_us)
                assert in_use <= MILLI, f"{uuid} holds {in_use} milli at {t}"


def test_first_fit_packs_shares_keeps_whole_gpus_whole_and_follows_gpu_spec():
    gpus = [FleetGpu(f"GPU-{node}-{i}", model, node, i, trace) for node, model, trace, n in
            (("a", "T4", "T4", 2), ("b", "V100 SXM", "V100M16", 1)) for i in range(n)]  # fmt: skip

    def task(name, num_gpu, milli, start, end, spec=()):
        return Pod(name, 0, 0, num_gpu, milli, spec, "LS", "Running", start, end, start), start, end

    placed, unplaced = alibaba.place([
        task("s600", 1, 600, 0, 10), task("s500", 1, 500, 0, 10), task("s400", 1, 400, 0, 10),
        task("whole", 1, MILLI, 0, 10), task("v100", 1, MILLI, 0, 10, ("V100M16", "V100M32")),
        task("pair", 2, MILLI, 5, 10), task("later", 1, MILLI, 10, 20), task("t4-only", 1, 300, 10, 20, ("T4",)),
    ], gpus)  # fmt: skip
    assert placed == {"s600": ["GPU-a-0"], "s500": ["GPU-a-1"], "s400": ["GPU-a-0"], "whole": ["GPU-b-0"],
                      "later": ["GPU-a-0"], "t4-only": ["GPU-a-1"]}  # fmt: skip
    assert unplaced == ["v100", "pair"]  # the V100 is taken; no node has two GPUs free at 5..10


@pytest.mark.parametrize("kwargs", [{}, {"max_nodes": 4, "window_s": 3 * 3_600, "time_compression": 6},
                                    {"max_nodes": 40, "window_s": 24 * 3_600, "time_compression": 48}])  # fmt: skip
def test_packing_keeps_shares_within_a_gpu_and_whole_gpus_whole(pods, kwargs):
    scenario = alibaba_scenario(pods=pods, **kwargs)
    assert scenario.jobs
    _check_packing(scenario)
    placed = {j.external_id for j in scenario.jobs}
    assert placed.isdisjoint(scenario.unplaced)
    shared_gpus = Counter(j.gpu_uuids[0] for j in scenario.jobs if j.shared)
    assert max(shared_gpus.values()) >= 2  # co-tenants exist


def test_the_default_scenario_mixes_shared_whole_and_multi_gpu_jobs(default_scenario):
    s = default_scenario
    assert s.duration_s == 30 * 60 and s.window_s == 6 * 3_600 and len(s.nodes) == 16
    kinds = Counter("shared" if j.shared else "multi" if len(j.gpu_uuids) > 1 else "whole" for j in s.jobs)
    assert kinds["shared"] >= 5 and kinds["whole"] >= 5 and kinds["multi"] >= 1
    assert Counter(j.kind for j in s.jobs).keys() == {"training", "inference"}
    models = {g.trace_model: g.model for g in s.gpus}
    assert models["G2"] == "A100 SXM" and models["T4"] == "T4" and "P100" not in models
    assert len({j.external_id for j in s.jobs}) == len(s.jobs)
    assert all(j.tenant == f"alibaba:{j.external_id}" and j.team in alibaba.TEAMS for j in s.jobs)
    again = alibaba_scenario()
    assert [(j.external_id, j.gpu_uuids, j.start_us, j.end_us, j.workload, j.team) for j in again.jobs] == [
        (j.external_id, j.gpu_uuids, j.start_us, j.end_us, j.workload, j.team) for j in s.jobs]


def replay_against_truth(scenario, session, spool_dir) -> dict[str, float]:
    """Replay, check conservation, IDLE and UNATTRIBUTED; returns each job's relative error."""
    began = time.perf_counter()
    result = alibaba.replay(scenario, session=session, clock=FakeClock(scenario.start_us), spool_dir=spool_dir,
                    sample_s=SAMPLE_S, batch_s=BATCH_S)  # fmt: skip
    assert result.batches == len(scenario.nodes) * scenario.duration_s // BATCH_S
    assert conservation_errors(session) == []
    truth = result.fleet.true_account_energies_j(scenario.start_us, scenario.end_us)
    errors = {}
    for job in scenario.jobs:
        attributed_j = job_energy(session, result.job_ids[job.external_id]).energy_mj / 1_000
        true_j = truth[job.tenant]
        errors[job.external_id] = abs(attributed_j - true_j) / true_j
    totals = fleet_totals(session)
    assert totals.idle_mj / 1_000 == pytest.approx(truth[IDLE], rel=0.02)
    assert totals.unattributed_mj / 1_000 == pytest.approx(truth.get(UNATTRIBUTED, 0.0), abs=1.0)
    assert totals.balanced
    print(f"\n{len(scenario.jobs)} jobs on {len(scenario.gpus)} GPUs, {result.readings} readings "
          f"in {time.perf_counter() - began:.1f} s; per-job error max "
          f"{max(errors.values()):.2%}, median {float(np.median(list(errors.values()))):.4%}, "
          f"above 2 %: {sorted((round(e, 4), n) for n, e in errors.items() if e > 0.02)}")
    return errors


def test_a_replay_of_the_busiest_window_matches_the_fleets_truth(default_scenario, session, tmp_path):
    """The pipeline, reading every 5 s, against the simulator's truth per account: every job
    within 2 %, however short. Jobs start and end between readings (trace tasks last seconds,
    compressed 12 ×), so this holds only because processes are reported for the whole window they
    ran in (as NVML's utilization samples are) and attribution puts their energy where their
    allocation was (measured when this was written: worst 0.05 %, median 0.0002 %)."""
    errors = replay_against_truth(default_scenario, session, tmp_path)
    assert len(errors) >= 100
    assert max(errors.values()) <= 0.02, sorted(errors.items(), key=lambda e: -e[1])[:5]
