"""GPUs, jobs and allocations: tables and their API schemas (one family per entity)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import sqlalchemy as sa
from pydantic import StringConstraints, field_validator
from sqlmodel import Field, SQLModel

from accounting.db import UTCDateTime
from accounting.validation import NO_NUL, ApiTime

# A GPU's UUID as NVML states it (MIG instances' too), or any name a test or site gives one.
GpuUuid = Annotated[str, StringConstraints(min_length=1, max_length=96, pattern=NO_NUL)]


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


# Pydantic 2 knows `pattern`, which sqlmodel's Field passes through schema_extra only.
_NO_NUL = {"schema_extra": {"pattern": NO_NUL}}
_TEXT = {"min_length": 1, "max_length": 200, **_NO_NUL}


class JobBase(SQLModel):
    external_id: str = Field(min_length=1, max_length=200, **_NO_NUL)
    source: str = Field(default="api", min_length=1, max_length=64, **_NO_NUL)
    team: str = Field(**_TEXT)
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
    gpu_uuids: list[GpuUuid] = Field(min_length=1, max_length=1024)
    started_at: ApiTime = Field(description="With a zone, 1970–2100; at most api_max_future_s ahead of now.")

    @field_validator("gpu_uuids")
    @classmethod
    def _distinct_uuids(cls, uuids: list[str]) -> list[str]:
        if len(set(uuids)) != len(uuids):
            raise ValueError("GPU UUIDs must be distinct")
        return uuids


class JobFinish(SQLModel):
    ended_at: ApiTime | None = Field(default=None, description="Default: now. With a zone, 1970–2100, "
                                     "after started_at, at most api_max_future_s ahead of now.")


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
