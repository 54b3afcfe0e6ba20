"""Slurm's accounting records as jobs: parse `sacct --parsable2` output and import it.

The output must carry its header line (no `--noheader`); columns may come in any order and all
but JobID are optional. The import needs at least::

    TZ=UTC sacct --allusers --parsable2 --starttime 2025-07-01 \\
        --format=JobID,JobIDRaw,JobName,User,Account,WCKey,Comment,Start,End,State,AllocTRES,NodeList

sacct prints Start and End as local wall-clock time without a zone: `TZ=UTC` makes that UTC;
otherwise pass the zone it ran in as `tz` (in the hour a DST change repeats, the first one is
taken). Job steps (`123.batch`, `123.0`, `123.extern`) are skipped. An array task keeps its
printed id (`123_4`) unless JobIDRaw is there: Slurm sets SLURM_JOB_ID and the job's cgroup to
the raw id, so with JobIDRaw the import names a job as the prolog and the ProcResolver do.

sacct knows no GPU UUIDs. `gpus_from_node_map` approximates them from the job's node list and
the `gres/gpu=N` of AllocTRES: the first N/len(nodes) GPUs of each node's list, which is right
for whole-node jobs and may name the wrong GPUs of a shared node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlmodel import Session, select

from accounting.clock import Clock, to_us
from accounting.errors import AccountingError

from .models import Job, JobCreate
from .service import create_job, finish_job

SOURCE = "slurm"
NO_ACCOUNT_TEAM = "unknown"  # a job without an account still needs a team
_NO_TIME = {"", "unknown", "none"}
_TEXT_MAX = 200  # JobBase's limit on team, project, user
_PROJECT_TOKEN = re.compile(r"(?:^|[\s,;])project=([^\s,;]+)")


@dataclass(frozen=True, slots=True)
class SacctJob:
    """One job (not a step) as sacct printed it; times are aware UTC datetimes."""

    job_id: str  # as printed: "48121", "48130_2", "48140+0"
    raw_id: str | None = None  # JobIDRaw, where the output has it
    name: str | None = None
    user: str | None = None
    account: str | None = None
    wckey: str | None = None
    comment: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    state: str | None = None
    alloc_tres: Mapping[str, str] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()

    @property
    def external_id(self) -> str:
        return self.raw_id or self.job_id

    @property
    def gpu_count(self) -> int:
        """GPUs allocated over all nodes: gres/gpu=N, else the sum of the typed gres/gpu:<type>=N."""
        if "gres/gpu" in self.alloc_tres:
            return _count(self.alloc_tres["gres/gpu"])
        return sum(_count(v) for k, v in self.alloc_tres.items() if k.startswith("gres/gpu:"))

    @property
    def project(self) -> str | None:
        return project_of(self.wckey, self.comment)


@dataclass(slots=True)
class ImportReport:
    created: int = 0
    skipped_existing: int = 0
    skipped_no_gpus: int = 0
    finished: int = 0
    skipped_not_started: int = 0  # pending, or cancelled before it started: Start is Unknown/None
    errors: list[str] = field(default_factory=list)  # jobs the API would refuse, e.g. a bad user name


def project_of(wckey: str | None, comment: str | None) -> str | None:
    """The WCKey (a default one is printed with a leading '*'), else a `project=<x>` token of the
    comment, else the whole comment."""
    wckey = (wckey or "").lstrip("*").strip()
    if wckey:
        return wckey[:_TEXT_MAX]
    comment = (comment or "").strip()
    if match := _PROJECT_TOKEN.search(comment):
        return match.group(1)[:_TEXT_MAX]
    return comment[:_TEXT_MAX] or None


def expand_hostlist(expression: str) -> list[str]:
    """A Slurm hostlist ("gpu-node[01-03,07],login1", "r[1-2]n[1-2]") as host names, in order."""
    expression = expression.strip()
    if not expression or expression.lower().startswith("none"):  # "None assigned"
        return []
    hosts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(expression + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            hosts += _expand_one(expression[start:i])
            start = i + 1
    return hosts


def _expand_one(pattern: str) -> list[str]:
    match = re.match(r"([^\[]*)\[([^\]]*)\](.*)", pattern)
    if not match:
        return [pattern] if pattern else []
    prefix, ranges, rest = match.groups()
    tails = _expand_one(rest) or [""]
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)
        for number in range(int(low), int(high or low) + 1):
            names += [f"{prefix}{number:0{width}d}{tail}" for tail in tails]
    return names


def parse_sacct(text: str, *, tz: tzinfo | str = UTC, delimiter: str = "|") -> list[SacctJob]:
    """The jobs of `sacct --parsable2` (or `--parsable`) output with its header line."""
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return []
    header = [name.strip().lower() for name in lines[0][1].split(delimiter)]
    trailing = header[-1] == ""  # --parsable ends every line with the delimiter
    if trailing:
        header.pop()
    if "jobid" not in header:
        raise ValueError("sacct output needs its header line with a JobID column (run sacct without --noheader)")
    jobs = []
    for number, line in lines[1:]:
        values = line.split(delimiter)
        if trailing and values and values[-1] == "":
            values.pop()
        if len(values) != len(header):
            raise ValueError(f"line {number}: {len(values)} fields where the header has {len(header)}; "
                             f"a name or comment holding {delimiter!r}? run sacct with another --delimiter")
        row = dict(zip(header, values, strict=True))
        job_id = row["jobid"].strip()
        if "." in job_id:  # a step: 123.batch, 123.extern, 123.0, 123_4.0, 123+0.batch
            continue
        try:
            jobs.append(_job(job_id, row, zone))
        except ValueError as exc:  # a time or a host list sacct would not print
            raise ValueError(f"line {number}: {exc}") from exc
    return jobs


def _job(job_id: str, row: dict[str, str], zone: tzinfo) -> SacctJob:
    def text(column: str) -> str | None:
        return row.get(column, "").strip() or None

    tres = dict(item.split("=", 1) for item in (text("alloctres") or "").split(",") if "=" in item)
    return SacctJob(
        job_id=job_id, raw_id=text("jobidraw"), name=text("jobname"), user=text("user"),
        account=text("account"), wckey=text("wckey"), comment=text("comment"),
        start=_time(row.get("start", ""), zone), end=_time(row.get("end", ""), zone), state=text("state"),
        alloc_tres=tres, nodes=tuple(expand_hostlist(row.get("nodelist", ""))),
    )


def _time(value: str, zone: tzinfo) -> datetime | None:
    value = value.strip()
    if value.lower() in _NO_TIME:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=zone).astimezone(UTC)


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def gpus_from_node_map(node_gpus: Mapping[str, Sequence[str]]) -> Callable[[SacctJob], list[str]]:
    """gpu_uuids_for from each node's GPU UUIDs (in nvidia-smi index order): the first
    gres/gpu ÷ nodes GPUs of each of the job's nodes. An approximation: see the module's doc."""

    def gpu_uuids_for(job: SacctJob) -> list[str]:
        if not job.nodes or not job.gpu_count:
            return []
        per_node, extra = divmod(job.gpu_count, len(job.nodes))
        uuids: list[str] = []
        for i, node in enumerate(job.nodes):
            uuids += list(node_gpus.get(node, ()))[: per_node + (i < extra)]
        return uuids

    return gpu_uuids_for


def import_sacct(
    session: Session, jobs: Iterable[SacctJob], *, gpu_uuids_for: Callable[[SacctJob], list[str]], clock: Clock
) -> ImportReport:
    """Register the jobs not yet known (source "slurm", external_id the job id) and finish those
    with an End, new or already registered and still open. Importing the same output again
    changes nothing. The caller commits."""
    jobs = [j for j in jobs if "." not in j.job_id]
    known = _registered(session, [j.external_id for j in jobs])
    report = ImportReport()
    for job in jobs:
        if (found := known.get(job.external_id)) is not None:
            report.skipped_existing += 1
            if job.end is not None and found.ended_at is None:
                # a missed epilog; clock skew must not put the end before the registered start
                end = job.end if to_us(job.end) >= to_us(found.started_at) else found.started_at
                finish_job(session, found.id, end, clock=clock)
                report.finished += 1
            continue
        if job.start is None:
            report.skipped_not_started += 1
            continue
        uuids = list(dict.fromkeys(gpu_uuids_for(job)))
        if not uuids:
            report.skipped_no_gpus += 1
            continue
        try:
            with session.begin_nested():  # a refused job leaves nothing behind
                created = create_job(session, _job_create(job, uuids), clock=clock)
                if job.end is not None:
                    finish_job(session, created.id, job.end, clock=clock)
        except (ValidationError, AccountingError) as exc:
            report.errors.append(f"job {job.job_id}: {exc}")
            continue
        known[job.external_id] = created  # a job printed twice (sacct --duplicates) is one job
        report.created += 1
        report.finished += job.end is not None
    return report


def _job_create(job: SacctJob, uuids: list[str]) -> JobCreate:
    return JobCreate(
        source=SOURCE, external_id=job.external_id, team=(job.account or NO_ACCOUNT_TEAM)[:_TEXT_MAX],
        project=job.project, user=job.user, gpu_uuids=uuids, started_at=job.start,
    )


def _registered(session: Session, external_ids: list[str]) -> dict[str, Job]:
    found: dict[str, Job] = {}
    unique = sorted(set(external_ids))
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        found |= {
            job.external_id: job
            for job in session.exec(select(Job).where(Job.source == SOURCE, Job.external_id.in_(chunk)))
        }
    return found
