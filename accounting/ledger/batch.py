"""The sampler → ingest batch format, validated at the door of the ledger."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from accounting.validation import MAX_BIGINT, NO_NUL

_US_MAX = 4_102_444_800_000_000  # 2100-01-01: anything later is a unit mistake
# Bounds on a batch's lists: far above what a node sends in one flush (even after a long
# outage of the spool), low enough that a corrupt or hostile batch cannot exhaust the worker.
MAX_GPUS, MAX_INTERVALS, MAX_EVENTS, MAX_PIDS = 4096, 200_000, 100_000, 4096


class BatchGpu(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=96, pattern=NO_NUL)
    name: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    index: int | None = Field(default=None, ge=0, le=4096)
    parent_uuid: str | None = Field(default=None, min_length=1, max_length=96, pattern=NO_NUL)
    mig_profile: str | None = Field(default=None, max_length=32, pattern=NO_NUL)
    mig_slices: int | None = Field(default=None, ge=1, le=8)


class BatchProcess(BaseModel):
    """A process on the GPU. Neither job_key nor user: the node could not look it up
    (no resolver), so it says nothing about who used the GPU."""

    model_config = ConfigDict(extra="ignore")
    pid: int = Field(ge=0, le=2**31)
    sm_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    job_key: str | None = Field(default=None, min_length=3, max_length=300, pattern=r"^[^:\x00]+:[^\x00]+$")
    user: str | None = Field(default=None, max_length=200, pattern=NO_NUL)

    @property
    def resolved(self) -> bool:
        return self.job_key is not None or self.user is not None


class BatchMig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=96, pattern=NO_NUL)
    activity_pct: float = Field(ge=0, le=100, allow_inf_nan=False)


class BatchInterval(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str = Field(min_length=1, max_length=96, pattern=NO_NUL)
    start_us: int = Field(ge=0, le=_US_MAX)
    end_us: int = Field(ge=0, le=_US_MAX)
    energy_mj: int = Field(ge=0, le=10**15)
    method: Literal["counter", "power-integral", "missing"]
    power_mw: int | None = Field(default=None, ge=0, le=10**8)
    gpu_util_pct: int | None = Field(default=None, ge=0, le=100)
    memory_util_pct: int | None = Field(default=None, ge=0, le=100)
    memory_used_bytes: int | None = Field(default=None, ge=0, le=MAX_BIGINT)
    sm_clock_mhz: int | None = Field(default=None, ge=0, le=100_000)
    sm_active_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    tensor_active_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    dram_bw_pct: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    pids: list[Annotated[int, Field(ge=0, le=2**31)]] = Field(default_factory=list, max_length=MAX_PIDS)
    processes: list[BatchProcess] = Field(default_factory=list, max_length=4096)
    mig: list[BatchMig] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _ordered(self) -> BatchInterval:
        if self.end_us <= self.start_us:
            raise ValueError("end_us must be after start_us")
        return self


class BatchEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uuid: str | None = Field(default=None, max_length=96, pattern=NO_NUL)
    at_us: int = Field(ge=0, le=_US_MAX)
    kind: str = Field(min_length=1, max_length=32, pattern=NO_NUL)
    detail: str = Field(default="", max_length=2000, pattern=NO_NUL)


class Batch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: Literal[1] = 1
    node: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    seq: int = Field(ge=0, le=MAX_BIGINT)
    created_us: int | None = Field(default=None, ge=0, le=_US_MAX)
    gpus: list[BatchGpu] = Field(default_factory=list, max_length=MAX_GPUS)
    intervals: list[BatchInterval] = Field(default_factory=list, max_length=MAX_INTERVALS)
    events: list[BatchEvent] = Field(default_factory=list, max_length=MAX_EVENTS)
