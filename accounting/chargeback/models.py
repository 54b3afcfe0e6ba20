"""Sites, tariffs, price series, grid carbon intensity, embodied carbon and statements.

Money is kept as decimal strings (`Decimal` in Python) so a statement adds up to the cent;
carbon intensity in gCO2e/kWh; energy stays in the ledger as integer mJ.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from accounting.db import UTCDateTime


class Site(SQLModel, table=True):
    """A data center: its time zone (tariffs follow local time), PUE and grid zone."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, sa_column_kwargs={"unique": True})
    timezone: str = Field(default="UTC", max_length=64)  # IANA, e.g. "America/Los_Angeles"
    pue: float = Field(default=1.0, ge=1.0, le=5.0)  # facility energy ÷ IT energy
    pue_by_month: dict | None = Field(default=None, sa_type=sa.JSON)  # {"2026-10": 1.31, …} overrides
    grid_zone: str | None = Field(default=None, max_length=64)  # Electricity Maps zone, e.g. "DE"
    currency: str = Field(default="USD", max_length=3)
    flat_price_per_kwh: str | None = Field(default=None, max_length=32)  # decimal string
    tariff_id: int | None = Field(default=None, foreign_key="tariff.id")  # time-of-use schedule
    price_series: str | None = Field(default=None, max_length=100)  # an hourly series' name
    # Market-based Scope 2: a contractual factor (PPA, certificates), else the residual mix.
    contract_g_per_kwh: float | None = Field(default=None, ge=0, le=5000)
    residual_mix_g_per_kwh: float | None = Field(default=None, ge=0, le=5000)


class Tariff(SQLModel, table=True):
    """A time-of-use tariff: period rates (rate + adj, per kWh) and 12 × 24 schedules of period
    indices for weekdays and weekends, in the site's local time (OpenEI URDB's layout)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=300)
    source: str | None = Field(default=None, max_length=500)  # e.g. the URDB label or URI
    currency: str = Field(default="USD", max_length=3)
    period_rates: list = Field(sa_type=sa.JSON)  # ["0.0712", …]: decimal strings, rate + adj
    weekday_schedule: list = Field(sa_type=sa.JSON)  # 12 months × 24 hours of period indices
    weekend_schedule: list = Field(sa_type=sa.JSON)
    valid_from: datetime | None = Field(default=None, sa_type=UTCDateTime)
    valid_to: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PricePoint(SQLModel, table=True):
    """One hour of an hourly price series (e.g. day-ahead market); negative prices allowed."""

    __tablename__ = "price_point"
    __table_args__ = (sa.UniqueConstraint("series", "hour", name="uq_price_series_hour"),)

    id: int | None = Field(default=None, primary_key=True)
    series: str = Field(max_length=100)
    hour: datetime = Field(sa_type=UTCDateTime)  # start of the UTC hour
    price_per_kwh: str = Field(max_length=32)  # decimal string, in `currency`
    currency: str = Field(default="EUR", max_length=3)


class CarbonIntensity(SQLModel, table=True):
    """Hourly grid carbon intensity of a zone (location-based Scope 2), gCO2e/kWh."""

    __tablename__ = "carbon_intensity"
    __table_args__ = (sa.UniqueConstraint("zone", "hour", name="uq_carbon_zone_hour"),)

    id: int | None = Field(default=None, primary_key=True)
    zone: str = Field(max_length=64)
    hour: datetime = Field(sa_type=UTCDateTime)
    direct_g_per_kwh: float = Field(ge=0)
    lifecycle_g_per_kwh: float | None = Field(default=None, ge=0)
    estimated: bool = False


class EmbodiedCarbon(SQLModel, table=True):
    """Embodied (Scope 3) carbon of a GPU model, amortized over its service life per GPU-hour."""

    __tablename__ = "embodied_carbon"

    gpu_model: str = Field(primary_key=True, max_length=64)
    kg_co2e: float = Field(ge=0)
    lifetime_hours: float = Field(gt=0)


class Statement(SQLModel, table=True):
    """A chargeback statement. A final one never changes: its content and hash are stored."""

    __table_args__ = (sa.UniqueConstraint("period", "group_by", "idle_policy", "status",
                                          name="uq_statement_period_grouping_status"),)

    id: int | None = Field(default=None, primary_key=True)
    period: str = Field(max_length=7)  # "2026-10"
    group_by: str = Field(max_length=32)
    idle_policy: str = Field(max_length=32)
    status: str = Field(default="final", max_length=16)
    content: dict = Field(sa_type=sa.JSON)
    content_hash: str = Field(max_length=64)  # sha256 of the canonical JSON of `content`
    finalized_at: datetime = Field(sa_type=UTCDateTime)
