"""GPUs, jobs and allocations: tables and their API schemas (one family per entity)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from pydantic import field_validator
from sqlmodel import Field, SQLModel

from accounting.db import UTCDateTime


class JobKind(StrEnum):
    training = "training"
    inference = "inference"
    interactive = "interactive"
    other = "other"


class Precision(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp8 = "fp8"


class Gpu(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(max_length=96, sa_column_kwargs={"unique": True}, nullable=False)
    name: str | None = Field(default=None, max_length=200)  # NVML device name
    model: str | None = Field(default=None, max_length=64)  # spec catalog key; None if unknown
    node: str | None = Field(default=None, max_length=200)
    index: int | None = None
    first_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Raw samples before this hour have expired: the ledger there can no longer be recomputed.
    samples_expired_before: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # A MIG instance: the physical GPU it is carved from (energy is metered on the parent).
    parent_id: int | None = Field(default=None, foreign_key="gpu.id", index=True)
    mig_profile: str | None = Field(default=None, max_length=32)
    mig_slices: int | None = Field(default=None, ge=1, le=8)
    site_id: int | None = Field(default=None, foreign_key="site.id", index=True)  # where it is: PUE, prices, grid


class GpuPublic(SQLModel):
    uuid: str
    name: str | None
    model: str | None
    node: str | None
    index: int | None
    parent_uuid: str | None = None
    mig_profile: str | None = None
    mig_slices: int | None = None
    first_seen_at: datetime | None
    last_seen_at: datetime | None


_TEXT = {"min_length": 1, "max_length": 200}


class JobBase(SQLModel):
    external_id: str = Field(min_length=1, max_length=200)
    source: str = Field(default="api", min_length=1, max_length=64)
    team: str = Field(min_length=1, max_length=200)
    project: str | None = Field(default=None, **_TEXT)
    cost_center: str | None = Field(default=None, **_TEXT)
    user: str | None = Field(default=None, **_TEXT)
    kind: JobKind = Field(default=JobKind.other, sa_type=sa.String(32))
    model_parameters: int | None = Field(
        default=None, ge=1, le=10**15, sa_type=sa.BigInteger,
        description="Parameter count N of the model the job trains or serves.",
    )
    # For the attention term of model-FLOP estimates (PaLM, appendix B): 12·L·H·Q·T per token.
    model_layers: int | None = Field(default=None, ge=1, le=10_000, description="Transformer layers L.")
    model_heads: int | None = Field(default=None, ge=1, le=10_000, description="Attention heads H.")
    model_head_dim: int | None = Field(default=None, ge=1, le=100_000, description="Head dimension Q.")
    model_seq_len: int | None = Field(default=None, ge=1, le=10**8, description="Sequence length T.")
    precision: Precision = Field(default=Precision.bf16, sa_type=sa.String(8),
                                 description="The precision whose peak FLOP/s MFU is measured against.")


class JobCreate(JobBase):
    gpu_uuids: list[str] = Field(min_length=1, max_length=1024)
    started_at: datetime

    @field_validator("gpu_uuids")
    @classmethod
    def _distinct_uuids(cls, uuids: list[str]) -> list[str]:
        for uuid in uuids:
            if not 1 <= len(uuid) <= 96:
                raise ValueError("each GPU UUID has 1 to 96 characters")
        if len(set(uuids)) != len(uuids):
            raise ValueError("GPU UUIDs must be distinct")
        return uuids

    @field_validator("started_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-01T00:00:00Z")
        return _utc_in_range(value)


def _utc_in_range(value: datetime) -> datetime:
    """In UTC, between 1970 and 2100: anything else is a typing or unit mistake."""
    try:
        value = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("a time between 1970 and 2100") from exc
    if not 1970 <= value.year < 2100:
        raise ValueError("a time between 1970 and 2100")
    return value


class JobFinish(SQLModel):
    ended_at: datetime | None = Field(default=None, description="Default: now.")

    @field_validator("ended_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-01T00:00:00Z")
        return _utc_in_range(value)


class Job(JobBase, table=True):
    __table_args__ = (sa.UniqueConstraint("source", "external_id", name="uq_job_source_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class JobPublic(JobBase):
    id: int
    gpu_uuids: list[str]
    started_at: datetime
    ended_at: datetime | None
    created_at: datetime


class Allocation(SQLModel, table=True):
    """A job holds a GPU over [start_at, end_at); end_at None = still running."""

    __table_args__ = (sa.Index("ix_allocation_gpu_time", "gpu_id", "start_at", "end_at"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    gpu_id: int = Field(foreign_key="gpu.id")
    start_at: datetime = Field(sa_type=UTCDateTime)
    end_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
