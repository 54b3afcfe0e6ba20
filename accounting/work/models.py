"""Work reports of a job: FLOPs, tokens, samples, steps, each idempotent by key."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from pydantic import field_validator, model_validator
from sqlmodel import Field, SQLModel

from accounting.db import BigCount, UTCDateTime
from accounting.validation import NO_NUL, utc_in_range

MAX_FLOPS = 10**30  # a zettaFLOP-year is ~3e28: anything above is a unit mistake (the column holds < 10^40)


class Provenance(StrEnum):
    reported = "reported"  # the job said so (SDK or REST)
    model_estimate = "model-estimate"  # 6·N·tokens (training), 2·N·tokens (inference) [+ attention]
    hardware_estimate = "hardware-estimate"  # GPM tensor activity × peak tensor FLOP/s × time


class WorkReportBase(SQLModel):
    flops: int | None = Field(default=None, ge=0, le=MAX_FLOPS, sa_type=BigCount,
                              description="Useful model FLOPs done since the previous report (an increment).")
    tokens: int | None = Field(default=None, ge=0, le=10**18, sa_type=sa.BigInteger)
    samples: int | None = Field(default=None, ge=0, le=10**18, sa_type=sa.BigInteger)
    steps: int | None = Field(default=None, ge=0, le=10**15, sa_type=sa.BigInteger)
    at: datetime = Field(sa_type=UTCDateTime, description="When the work was done (end of the increment).")


class WorkReportCreate(WorkReportBase):
    key: str = Field(min_length=1, max_length=200, schema_extra={"pattern": NO_NUL},
                     description="Idempotency key: a retry with the same key counts once.")

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return utc_in_range(value)  # with a zone, 1970–2100; the service refuses a day ahead

    @model_validator(mode="after")
    def _something(self) -> WorkReportCreate:
        if all(v is None for v in (self.flops, self.tokens, self.samples, self.steps)):
            raise ValueError("report at least one of flops, tokens, samples, steps")
        return self


class WorkReport(WorkReportBase, table=True):
    __tablename__ = "work_report"
    __table_args__ = (sa.UniqueConstraint("job_id", "key", name="uq_work_report_job_key"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    key: str = Field(max_length=200)
    provenance: str = Field(default=Provenance.reported, max_length=32)
    received_at: datetime = Field(sa_type=UTCDateTime)


class WorkReportPublic(WorkReportBase):
    id: int
    job_id: int
    key: str
    provenance: str
    received_at: datetime
    duplicate: bool = False
