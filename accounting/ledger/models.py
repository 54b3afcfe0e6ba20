"""Raw energy intervals, ingested-batch keys, GPU events and the hourly ledger."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from accounting.db import UTCDateTime

# 64-bit ids on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

IDLE = "idle"
UNATTRIBUTED = "unattributed"


def job_account(job_id: int) -> str:
    return f"job:{job_id}"


class Method(StrEnum):
    """How a ledger row's energy was obtained and split."""

    exclusive = "exclusive"  # counter energy; one holder (a job, or IDLE) had the whole GPU
    even = "even"  # counter energy split evenly among co-tenants (and every idle baseline share)
    sm_share = "sm-share"  # active energy split by per-process SM utilization
    mig_activity = "mig-activity"  # MIG: active energy by per-instance activity, baseline by slices
    mig_slice = "mig-slice"  # MIG: all energy by slice size (no activity signal)
    power_integral = "power-integral"  # estimated: counter reset or no counter, power integrated
    missing = "missing"  # neither counter nor power could be read (0 mJ, time still counted)


class Sample(SQLModel, table=True):
    """One GPU's interval between two consecutive readings, as the sampler measured it.

    Keyed by (GPU, start): on PostgreSQL the table is range-partitioned by start_at, one
    partition per UTC day in the SAMPLE_PARTITIONS schema (retention.py creates them ahead and
    drops expired ones), and a partitioned table's keys must hold the partition key."""

    __table_args__ = ({"postgresql_partition_by": "RANGE (start_at)"},)

    gpu_id: int = Field(foreign_key="gpu.id", primary_key=True)
    start_at: datetime = Field(sa_type=UTCDateTime, primary_key=True)
    end_at: datetime = Field(sa_type=UTCDateTime, index=True)
    energy_mj: int = Field(sa_type=sa.BigInteger)
    method: str = Field(max_length=32)  # counter | power-integral | missing
    power_mw: int | None = Field(default=None, sa_type=sa.BigInteger)
    gpu_util_pct: int | None = None
    memory_util_pct: int | None = None
    memory_used_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    sm_clock_mhz: int | None = None
    sm_active_pct: float | None = None  # GPM means over the interval (Hopper+)
    tensor_active_pct: float | None = None
    dram_bw_pct: float | None = None
    # [{"pid", "sm_pct", "job_key", "user", "resolved"}]: kept so re-attribution can use them
    processes: list | None = Field(default=None, sa_type=sa.JSON)
    # MIG parent: [{"uuid", "activity_pct"}] per instance
    mig: list | None = Field(default=None, sa_type=sa.JSON)


class IngestedBatch(SQLModel, table=True):
    """The idempotency key of every batch taken into the ledger: (node, seq)."""

    __table_args__ = (sa.UniqueConstraint("node", "seq", name="uq_batch_node_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    node: str = Field(max_length=200)
    seq: int = Field(sa_type=sa.BigInteger)
    ingested_at: datetime = Field(sa_type=UTCDateTime)
    intervals: int
    energy_mj: int = Field(sa_type=sa.BigInteger)


class GpuEvent(SQLModel, table=True):
    """Counter resets, lost GPUs and read errors reported by samplers."""

    id: int | None = Field(default=None, primary_key=True)
    gpu_id: int | None = Field(default=None, foreign_key="gpu.id", index=True)
    node: str = Field(max_length=200)
    at: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(max_length=32)
    detail: str = Field(default="", max_length=2000)


class LedgerEntry(SQLModel, table=True):
    """Energy per (GPU, account, hour, method), in integer millijoules.

    Conservation: for every GPU and hour, Σ energy_mj over accounts = the metered energy
    of that GPU in that hour, exactly.
    """

    __tablename__ = "ledger_entry"
    __table_args__ = (
        sa.UniqueConstraint("gpu_id", "hour", "account", "method", name="uq_ledger_key"),
        sa.Index("ix_ledger_hour_account", "hour", "account"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    gpu_id: int = Field(foreign_key="gpu.id")
    hour: datetime = Field(sa_type=UTCDateTime)
    account: str = Field(max_length=64)  # "job:<id>", "idle" or "unattributed"
    job_id: int | None = Field(default=None, foreign_key="job.id", index=True)
    method: str = Field(max_length=32)
    energy_mj: int = Field(sa_type=sa.BigInteger)
    gpu_us: int = Field(sa_type=sa.BigInteger)  # GPU time charged to the account, µs
    # Activity during that time, as activity-weighted µs (mean % = 100 · x_us / known_us). On a
    # shared GPU the device's activity is counted in each co-tenant's share of the time.
    util_known_us: int = Field(default=0, sa_type=sa.BigInteger)  # time with a duty-cycle reading
    busy_us: int = Field(default=0, sa_type=sa.BigInteger)  # Σ duty cycle × time
    gpm_known_us: int = Field(default=0, sa_type=sa.BigInteger)  # time with GPM readings
    sm_active_us: int = Field(default=0, sa_type=sa.BigInteger)
    tensor_active_us: int = Field(default=0, sa_type=sa.BigInteger)
    dram_active_us: int = Field(default=0, sa_type=sa.BigInteger)


class UnattributedUse(SQLModel, table=True):
    """Energy of processes that map to no job, per GPU, hour, pid and user (the UNATTRIBUTED
    account's detail)."""

    __tablename__ = "unattributed_use"
    __table_args__ = (sa.UniqueConstraint("gpu_id", "hour", "pid", "user", name="uq_unattributed_key"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    gpu_id: int = Field(foreign_key="gpu.id")
    hour: datetime = Field(sa_type=UTCDateTime, index=True)
    pid: int
    user: str = Field(max_length=200)  # "?" when the node could not tell
    job_key: str | None = Field(default=None, max_length=300)  # a key no registered job has
    energy_mj: int = Field(sa_type=sa.BigInteger)


class ChangeLog(SQLModel, table=True):
    """Which transactions changed what a chargeback statement reads, and the span of time
    [start_at, end_at) the change touches (PostgreSQL triggers, one row per transaction and table;
    NULL: unbounded on that side): a cached open statement is valid while no row overlapping its
    months is invisible to the snapshot it was computed from (chargeback/cache.py)."""

    __tablename__ = "change_log"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    txid: int = Field(sa_type=sa.BigInteger, index=True)
    table_name: str = Field(max_length=64)
    logged_at: datetime = Field(sa_type=UTCDateTime, index=True)
    start_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    end_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
