"""sacct output as jobs: parsing a recorded `sacct --parsable2` output, importing it into the
real databases (PostgreSQL and SQLite, rolled back after each test)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from accounting.clock import FakeClock, to_us
from accounting.jobs.models import Job
from accounting.jobs.sacct import (
    SacctJob,
    expand_hostlist,
    gpus_from_node_map,
    import_sacct,
    parse_sacct,
    project_of,
)
from accounting.jobs.service import create_job, gpu_uuids_of
from tests.factories import job as job_payload

RECORDED = (Path(__file__).resolve().parent.parent / "data" / "sacct_parsable2.txt").read_text()
NODE_GPUS = {f"gpu-node0{n}": [f"GPU-0000000{n}-0000-0000-0000-00000000000{i}" for i in range(4)] for n in range(1, 6)}
NOW_US = to_us(datetime(2025, 7, 28, tzinfo=UTC))


def gpu(node: int, index: int) -> str:
    return NODE_GPUS[f"gpu-node0{node}"][index]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def import_clock() -> FakeClock:
    return FakeClock(NOW_US)


def by_id(jobs: list[SacctJob]) -> dict[str, SacctJob]:
    return {j.job_id: j for j in jobs}


# Parsing.

def test_steps_are_skipped_and_array_tasks_keep_their_id():
    ids = [j.job_id for j in parse_sacct(RECORDED)]
    assert ids == ["48121", "48122", "48125", "48130_1", "48130_2", "48130_[3-4]", "48131", "48133", "48134", "48135"]


def test_the_fields_of_a_job():
    pretrain = by_id(parse_sacct(RECORDED))["48121"]
    assert (pretrain.name, pretrain.user, pretrain.account) == ("llm-pretrain-7b", "alice", "nlp")
    assert pretrain.wckey == "llama"
    assert pretrain.comment == "project=llama7b priority=high"
    assert pretrain.start == utc("2025-07-26T14:00:03") and pretrain.end == utc("2025-07-26T20:12:45")
    assert pretrain.state == "COMPLETED"
    assert pretrain.alloc_tres["gres/gpu"] == "4" and pretrain.gpu_count == 4
    assert pretrain.nodes == ("gpu-node01",)
    assert pretrain.external_id == "48121"


def test_unknown_and_none_times():
    jobs = by_id(parse_sacct(RECORDED))
    assert jobs["48125"].state == "RUNNING" and jobs["48125"].end is None
    assert jobs["48130_[3-4]"].start is None and jobs["48130_[3-4]"].nodes == ()
    assert jobs["48134"].start is None and jobs["48134"].end == utc("2025-07-26T16:40:00")
    assert jobs["48134"].state == "CANCELLED by 1006"


def test_times_are_read_in_the_given_zone():
    berlin = by_id(parse_sacct(RECORDED, tz="Europe/Berlin"))["48121"]  # CEST, UTC+2 in July
    assert berlin.start == utc("2025-07-26T12:00:03")
    winter = parse_sacct("JobID|Start\n7|2025-01-15T09:00:00\n", tz="Europe/Berlin")[0]
    assert winter.start == utc("2025-01-15T08:00:00")


def test_the_project_is_the_wckey_else_the_comment():
    jobs = by_id(parse_sacct(RECORDED))
    assert jobs["48121"].project == "llama"  # the WCKey wins over the comment's project=
    assert jobs["48122"].project == "detr"  # "project=detr,owner=bob"
    assert jobs["48125"].project == "serving experiment"  # the whole comment
    assert jobs["48130_1"].project == "embeddings"  # a default WCKey is printed as *embeddings
    assert jobs["48131"].project is None
    assert project_of("*", "x;project=p1;y") == "p1"
    assert project_of(None, "  ") is None
    assert project_of(None, "c" * 300) == "c" * 200


def test_gpu_counts_from_alloc_tres():
    jobs = by_id(parse_sacct(RECORDED))
    assert [jobs[i].gpu_count for i in ("48122", "48130_1", "48131", "48133", "48134")] == [2, 1, 0, 6, 0]
    typed_only = parse_sacct("JobID|AllocTRES\n9|cpu=8,gres/gpu:a100=2,gres/gpu:h100=1,mem=8G\n")[0]
    assert typed_only.gpu_count == 3


def test_columns_in_any_order_some_missing():
    text = "State|Account|JobID|Start\nRUNNING|nlp|5|2025-07-26T10:00:00\nRUNNING|nlp|5.0|2025-07-26T10:00:00\n"
    (only,) = parse_sacct(text)
    assert (only.job_id, only.account, only.state, only.user, only.end) == ("5", "nlp", "RUNNING", None, None)
    assert only.project is None and only.gpu_count == 0 and only.nodes == ()


def test_parsable_with_a_trailing_delimiter_and_blank_lines():
    text = "JobID|User|End|\n\n6|alice|Unknown|\n6.batch||Unknown|\n"
    assert parse_sacct(text) == [SacctJob(job_id="6", user="alice")]
    assert parse_sacct("") == []


def test_bad_output_is_refused_with_its_line():
    with pytest.raises(ValueError, match="header"):
        parse_sacct("48121|train|alice\n")  # --noheader output
    with pytest.raises(ValueError, match="line 3"):
        parse_sacct("JobID|Comment|State\n1|ok|COMPLETED\n2|a|b|COMPLETED\n")
    with pytest.raises(ValueError, match="line 2: .*yesterday"):
        parse_sacct("JobID|Start\n1|yesterday\n")
    assert parse_sacct("JobID;Comment\n2;a|b\n", delimiter=";")[0].comment == "a|b"


def test_job_id_raw_names_array_tasks_as_slurm_job_id_does():
    text = "JobID|JobIDRaw|Start\n48130_1|48150|2025-07-26T16:05:12\n48130_1.batch|48150.batch|2025-07-26T16:05:12\n"
    (task,) = parse_sacct(text)
    assert (task.job_id, task.raw_id, task.external_id) == ("48130_1", "48150", "48150")


@pytest.mark.parametrize(("expression", "hosts"), [
    ("gpu-node01", ["gpu-node01"]),
    ("gpu-node[03-04]", ["gpu-node03", "gpu-node04"]),
    ("gpu-node[01-02,07],login1", ["gpu-node01", "gpu-node02", "gpu-node07", "login1"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("dgx-a100-[009-010]-ib", ["dgx-a100-009-ib", "dgx-a100-010-ib"]),
    ("None assigned", []),
    ("", []),
])
def test_expand_hostlist(expression, hosts):
    assert expand_hostlist(expression) == hosts


def test_gpus_from_the_node_map_first_n_per_node():
    jobs = by_id(parse_sacct(RECORDED))
    uuids_for = gpus_from_node_map(NODE_GPUS)
    assert uuids_for(jobs["48121"]) == NODE_GPUS["gpu-node01"]
    assert uuids_for(jobs["48130_2"]) == [gpu(3, 0)]
    assert uuids_for(jobs["48133"]) == [gpu(3, 0), gpu(3, 1), gpu(3, 2), gpu(4, 0), gpu(4, 1), gpu(4, 2)]
    assert uuids_for(jobs["48131"]) == []  # no GPUs
    odd = SacctJob(job_id="1", alloc_tres={"gres/gpu": "3"}, nodes=("gpu-node01", "gpu-node02", "gpu-node09"))
    assert uuids_for(odd) == [gpu(1, 0), gpu(2, 0)]  # 1 + 1 + 1; gpu-node09's GPUs are unknown


# Importing.

def stored(session) -> dict[str, Job]:
    return {j.external_id: j for j in session.exec(select(Job).where(Job.source == "slurm")).all()}


def test_import_creates_and_finishes(session, import_clock):
    report = import_sacct(session, parse_sacct(RECORDED), gpu_uuids_for=gpus_from_node_map(NODE_GPUS),
                          clock=import_clock)
    assert (report.created, report.skipped_existing, report.skipped_no_gpus, report.finished) == (7, 0, 1, 6)
    assert report.skipped_not_started == 2 and report.errors == []
    jobs = stored(session)
    assert sorted(jobs) == ["48121", "48122", "48125", "48130_1", "48130_2", "48133", "48135"]
    pretrain = jobs["48121"]
    assert (pretrain.team, pretrain.project, pretrain.user) == ("nlp", "llama", "alice")
    assert to_us(pretrain.started_at) == to_us(utc("2025-07-26T14:00:03"))
    assert to_us(pretrain.ended_at) == to_us(utc("2025-07-26T20:12:45"))
    assert jobs["48125"].ended_at is None and jobs["48125"].project == "serving experiment"
    uuids = gpu_uuids_of(session, [jobs["48133"].id, jobs["48125"].id])
    assert uuids[jobs["48133"].id] == [gpu(3, 0), gpu(3, 1), gpu(3, 2), gpu(4, 0), gpu(4, 1), gpu(4, 2)]
    assert uuids[jobs["48125"].id] == [gpu(5, 0), gpu(5, 1)]


def test_a_second_import_of_the_same_output_creates_nothing(session, import_clock):
    uuids_for = gpus_from_node_map(NODE_GPUS)
    import_sacct(session, parse_sacct(RECORDED), gpu_uuids_for=uuids_for, clock=import_clock)
    before = {k: (to_us(j.started_at), j.ended_at and to_us(j.ended_at)) for k, j in stored(session).items()}
    again = import_sacct(session, parse_sacct(RECORDED), gpu_uuids_for=uuids_for, clock=import_clock)
    assert (again.created, again.skipped_existing, again.skipped_no_gpus, again.finished) == (0, 7, 1, 0)
    assert {k: (to_us(j.started_at), j.ended_at and to_us(j.ended_at)) for k, j in stored(session).items()} == before


def test_a_later_import_finishes_the_job_that_was_running(session, import_clock):
    uuids_for = gpus_from_node_map(NODE_GPUS)
    import_sacct(session, parse_sacct(RECORDED), gpu_uuids_for=uuids_for, clock=import_clock)
    later = RECORDED.replace("2025-07-26T16:00:00|Unknown|RUNNING", "2025-07-26T16:00:00|2025-07-27T02:00:00|COMPLETED")
    report = import_sacct(session, parse_sacct(later), gpu_uuids_for=uuids_for, clock=import_clock)
    assert (report.created, report.finished) == (0, 1)
    assert to_us(stored(session)["48125"].ended_at) == to_us(utc("2025-07-27T02:00:00"))


def test_a_job_the_prolog_registered_is_finished_not_duplicated(session, import_clock):
    registered = job_payload("48121", [gpu(1, 0)], to_us(utc("2025-07-26T14:00:03")), source="slurm", team="nlp")
    create_job(session, registered, clock=import_clock)
    report = import_sacct(session, [by_id(parse_sacct(RECORDED))["48121"]],
                          gpu_uuids_for=gpus_from_node_map(NODE_GPUS), clock=import_clock)
    assert (report.created, report.skipped_existing, report.finished) == (0, 1, 1)
    (job,) = stored(session).values()
    assert to_us(job.ended_at) == to_us(utc("2025-07-26T20:12:45"))
    assert gpu_uuids_of(session, [job.id])[job.id] == [gpu(1, 0)]  # as the prolog registered it


def test_an_end_before_the_registered_start_is_clamped(session, import_clock):
    # The prolog's start (slurmd's clock) may be a little after sacct's end for a job of seconds.
    create_job(session, job_payload("77", [gpu(1, 0)], to_us(utc("2025-07-26T10:00:05")), source="slurm"),
               clock=import_clock)
    text = "JobID|Start|End\n77|2025-07-26T10:00:00|2025-07-26T10:00:03\n"
    import_sacct(session, parse_sacct(text), gpu_uuids_for=lambda j: [gpu(1, 0)], clock=import_clock)
    assert to_us(stored(session)["77"].ended_at) == to_us(utc("2025-07-26T10:00:05"))


def test_a_refused_job_is_reported_and_leaves_nothing(session, import_clock):
    text = ("JobID|User|Account|Start|End|AllocTRES|NodeList\n"
            f"1|{'u' * 201}|nlp|2025-07-26T10:00:00|2025-07-26T11:00:00|gres/gpu=1|gpu-node01\n"
            "2|ann|nlp|2025-07-26T10:00:00|2025-07-30T11:00:00|gres/gpu=1|gpu-node02\n"  # ends in the future
            "3|ann||2025-07-26T10:00:00|2025-07-26T11:00:00|gres/gpu=1|gpu-node03\n")
    report = import_sacct(session, parse_sacct(text), gpu_uuids_for=gpus_from_node_map(NODE_GPUS),
                          clock=import_clock)
    assert report.created == 1 and [e.split(":")[0] for e in report.errors] == ["job 1", "job 2"]
    assert list(stored(session)) == ["3"]
    assert stored(session)["3"].team == "unknown"  # no account


def test_a_job_printed_twice_is_one_job(session, import_clock):
    text = "JobID|Start|End\n9|2025-07-26T10:00:00|Unknown\n9|2025-07-26T10:00:00|2025-07-26T12:00:00\n"
    report = import_sacct(session, parse_sacct(text), gpu_uuids_for=lambda j: [gpu(1, 0)], clock=import_clock)
    assert (report.created, report.skipped_existing, report.finished) == (1, 1, 1)
