"""Factories for test data: sampler batches and job payloads."""

from __future__ import annotations

from accounting.clock import US_PER_S, to_datetime
from accounting.jobs.models import JobCreate


def batch(node: str, seq: int, uuid: str, start_us: int, seconds: int, *, mj_per_s: int = 300_000,
          name: str = "NVIDIA H100 80GB HBM3", method: str = "counter") -> dict:
    """`seconds` contiguous 1 s intervals of one GPU, each of mj_per_s + k mJ."""
    return {
        "version": 1, "node": node, "seq": seq,
        "gpus": [{"uuid": uuid, "name": name, "index": 0}],
        "intervals": [
            {"uuid": uuid, "start_us": start_us + k * US_PER_S, "end_us": start_us + (k + 1) * US_PER_S,
             "energy_mj": mj_per_s + k, "method": method}
            for k in range(seconds)
        ],
        "events": [],
    }


def job(external_id: str, uuids: list[str], start_us: int, *, team: str = "nlp", **extra) -> JobCreate:
    return JobCreate(external_id=external_id, team=team, gpu_uuids=uuids, started_at=to_datetime(start_us), **extra)
