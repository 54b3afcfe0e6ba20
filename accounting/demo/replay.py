"""Replay a simulated scenario in-process: sampler → batches → ingest, jobs registered and
finished by the service as a scheduler would. For tests and benchmarks that need the ledger's
answer on a scenario without a broker in between (the demo itself goes through the broker)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock, to_datetime
from accounting.gpu.backend import GpuBackend, ProcessResolver
from accounting.jobs.models import JobCreate
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.metering.sampler import Sampler
from accounting.metering.spool import Spool


@dataclass(frozen=True)
class ReplayJob:
    external_id: str
    team: str
    gpu_uuids: tuple[str, ...]
    start_us: int
    end_us: int
    source: str = "demo"
    kind: str = "other"

    @property
    def key(self) -> str:
        return f"{self.source}:{self.external_id}"


def replay(
    session: Session,
    fleet: GpuBackend,
    clock: FakeClock,
    jobs: Sequence[ReplayJob],
    *,
    spool_dir: Path,
    start_us: int,
    duration_s: int,
    sample_s: int = 1,
    flush_s: int = 60,
    node: str = "replay-node",
    on_tick: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Run the scenario; returns job key → job id. The caller commits."""
    resolver = fleet if isinstance(fleet, ProcessResolver) else None
    sampler = Sampler(backend=fleet, spool=Spool(spool_dir), clock=clock, node=node, resolver=resolver)
    ids: dict[str, int] = {}
    starts: dict[int, list[ReplayJob]] = {}
    ends: dict[int, list[ReplayJob]] = {}
    for job in jobs:
        starts.setdefault(job.start_us, []).append(job)
        ends.setdefault(job.end_us, []).append(job)
    events = sorted(set(starts) | set(ends))

    def send(batch: dict) -> None:
        ingest_batch(session, batch, clock=clock)

    def jobs_until(now_us: int) -> None:
        while events and events[0] <= now_us:
            at = events.pop(0)
            for job in ends.get(at, []):
                finish_job(session, ids[job.key], to_datetime(at), clock=clock)
            for job in starts.get(at, []):
                created = create_job(session, JobCreate(
                    external_id=job.external_id, source=job.source, team=job.team, kind=job.kind,
                    gpu_uuids=list(job.gpu_uuids), started_at=to_datetime(at)), clock=clock)
                ids[job.key] = created.id

    for second in range(0, duration_s + 1, sample_s):
        now_us = start_us + second * US_PER_S
        clock.set(now_us)
        jobs_until(now_us)
        sampler.sample()
        if second % flush_s == 0 or second + sample_s > duration_s:
            sampler.flush()
            sampler.ship(send)
        if on_tick:
            on_tick(second)
    return ids
