"""Sites and which GPUs are at which: what chargeback needs to price and weigh a GPU-hour."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import field_validator
from sqlmodel import Field, Session, SQLModel, select

from accounting.clock import Clock
from accounting.errors import Conflict, InvalidInput, NotFound
from accounting.jobs.models import Gpu
from accounting.ledger.service import register_gpus
from accounting.validation import MAX_ID, NO_NUL

from .models import Site, Tariff

MAX_FLAT_PRICE = Decimal(1000)  # per kWh, in any currency: more is a unit or typing mistake
_NO_NUL = {"pattern": NO_NUL}
_FINITE = {"allow_inf_nan": False}  # Python's JSON parser reads NaN and Infinity


class SiteCreate(SQLModel):
    name: str = Field(min_length=1, max_length=200, schema_extra=_NO_NUL)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, schema_extra=_NO_NUL,
                          description="IANA zone; tariffs follow local time.")
    pue: float = Field(default=1.0, ge=1.0, le=5.0, schema_extra=_FINITE)
    pue_by_month: dict[str, float] | None = Field(default=None, max_length=1200,  # a century of months
                                                  description='{"2026-10": 1.31}: local months, PUE 1–5.')
    grid_zone: str | None = Field(default=None, min_length=1, max_length=64, schema_extra=_NO_NUL,
                                  description="Electricity Maps zone, e.g. GB.")
    currency: str = Field(default="USD", min_length=3, max_length=3, schema_extra={"pattern": "^[A-Za-z]{3}$"},
                          description="ISO 4217 code, e.g. EUR.")
    flat_price_per_kwh: str | None = Field(default=None, max_length=32,
                                           description="Decimal, 0 to 1000, in `currency` per kWh.")
    tariff_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    price_series: str | None = Field(default=None, min_length=1, max_length=100, schema_extra=_NO_NUL)
    contract_g_per_kwh: float | None = Field(default=None, ge=0, le=5000, schema_extra=_FINITE)
    residual_mix_g_per_kwh: float | None = Field(default=None, ge=0, le=5000, schema_extra=_FINITE)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("flat_price_per_kwh")
    @classmethod
    def _decimal(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            price = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError("a decimal number, e.g. 0.12") from exc
        if not price.is_finite():
            raise ValueError("a finite number")
        if not 0 <= price <= MAX_FLAT_PRICE:
            raise ValueError(f"between 0 and {MAX_FLAT_PRICE} per kWh")
        return str(price)

    @field_validator("pue_by_month")
    @classmethod
    def _months(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for month, pue in (value or {}).items():
            if len(month) != 7 or month[4] != "-" or not (month[:4] + month[5:]).isdigit():
                raise ValueError(f"months are YYYY-MM, not {month!r}")
            if not 1.0 <= pue <= 5.0:  # False for NaN too
                raise ValueError(f"PUE of {month} must be between 1 and 5")
        return value

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


def create_site(session: Session, data: SiteCreate) -> Site:
    if session.exec(select(Site).where(Site.name == data.name)).first():
        raise Conflict(f"site {data.name!r} exists")
    if data.tariff_id is not None and session.get(Tariff, data.tariff_id) is None:
        raise InvalidInput("tariff_id", f"no tariff {data.tariff_id}")
    site = Site.model_validate(data)
    session.add(site)
    session.flush()
    return site


def list_sites(session: Session) -> list[Site]:
    return list(session.exec(select(Site).order_by(Site.name)).all())


def place_gpus(session: Session, site_name: str, uuids: list[str], *, clock: Clock) -> int:
    """Put GPUs (registered on the fly if new) at a site; returns how many."""
    site = session.exec(select(Site).where(Site.name == site_name)).first()
    if site is None:
        raise NotFound("site", site_name)
    ids = register_gpus(session, uuids, now_us=clock.now_us())
    session.execute(sa.update(Gpu).where(Gpu.id.in_(list(ids.values()))).values(site_id=site.id))
    return len(ids)
