"""A statement line's exact sums, the factors per (site, hour) they multiply, and the ledger's
energy summed in SQL per (site, hour, GPU model, group): what statements.py adds up.

Exactness: every factor is a Fraction (prices and PUE from their decimal text, intensities from
their float). A line keeps each sum Σ amount × factor as integer numerators per denominator, so
adding a ledger cell costs integer arithmetic rather than a Fraction's gcd; the value is the same
rational number. Summing energy in SQL per (site, hour, model, group) before multiplying changes
nothing either: every factor depends on the site and hour (PUE, price, intensity) or on the model
(embodied carbon) only, and Σ (a_i × f) = (Σ a_i) × f.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import sqlalchemy as sa
from sqlmodel import Session

from accounting.jobs.models import Gpu, Job
from accounting.ledger.grouping import IDLE_GROUP, UNATTRIBUTED_GROUP, UNKNOWN
from accounting.ledger.models import IDLE, UNATTRIBUTED, LedgerEntry

from .carbon import CarbonBook
from .models import Site
from .prices import PriceBook

MJ_PER_KWH = 3_600_000_000
US_PER_HOUR = 3_600_000_000
PARTS = ("cost", "loc", "mkt", "emb")
_PER_MJ = Fraction(1, MJ_PER_KWH)
_PER_US_HOUR = Fraction(1, US_PER_HOUR)


class Exact:
    """Σ amount × factor, exactly: integer numerators per denominator; `known` once one is added."""

    __slots__ = ("known", "parts")

    def __init__(self) -> None:
        self.known, self.parts = False, {}

    def add(self, amount: int | Fraction, factor: Fraction) -> None:
        self.known = True
        if type(amount) is int:
            n, d = amount * factor.numerator, factor.denominator
        else:
            product = amount * factor
            n, d = product.numerator, product.denominator
        self.parts[d] = self.parts.get(d, 0) + n

    def value(self) -> Fraction:
        return sum((Fraction(n, d) for d, n in self.parts.items()), Fraction(0))


class Line:
    """A line's exact sums. Each of cost, location, market and embodied carbon sums the hours whose
    factor is known (None until one is) and counts the facility kWh (GPU-hours) of those that are not."""

    def __init__(self) -> None:
        self.energy_mj = self.gpu_us = self.idle_mj = 0
        self.facility = Exact()
        self.sums = {part: Exact() for part in PARTS}
        self.unknown = {part: Exact() for part in PARTS}

    def add(self, energy_mj: int, gpu_us: int, emb_us: Fraction, f: tuple) -> None:
        """f: Factors.at's multipliers (facility kWh per mJ, then cost, location and market carbon per
        mJ and embodied carbon per µs, each None where unknown)."""
        facility, *factors = f
        self.energy_mj += energy_mj
        self.gpu_us += gpu_us
        self.facility.add(energy_mj, facility)
        for part, factor in zip(PARTS, factors, strict=True):
            amount = emb_us if part == "emb" else energy_mj
            if factor is None:
                self.unknown[part].add(amount, _PER_US_HOUR if part == "emb" else facility)
            else:
                self.sums[part].add(amount, factor)

    def out(self) -> dict:
        s = {part: self.sums[part].value() if self.sums[part].known else None for part in PARTS}
        u = {part: round(float(self.unknown[part].value()), 6) for part in PARTS}

        def g(part: str) -> float | None:
            return None if s[part] is None else round(float(s[part]), 3)
        return {
            "energy_mj": self.energy_mj, "energy_kwh": round(self.energy_mj / MJ_PER_KWH, 6),
            "facility_kwh": round(float(self.facility.value()), 6), "gpu_hours": round(self.gpu_us / US_PER_HOUR, 6),
            "idle_kwh": round(self.idle_mj / MJ_PER_KWH, 6),
            "cost": None if s["cost"] is None else str(Decimal(round(s["cost"] * 100)).scaleb(-2)),
            "unknown_price_kwh": u["cost"], "co2e_location_g": g("loc"), "unknown_location_carbon_kwh": u["loc"],
            "co2e_market_g": g("mkt"), "unknown_market_carbon_kwh": u["mkt"],
            "embodied_co2e_g": g("emb"), "unknown_embodied_gpu_hours": u["emb"],
        }


class Factors:
    """PUE, price and carbon factors per (site, hour) and GPU model, each looked up once."""

    def __init__(self, session: Session, sites: dict[int, Site], start: datetime, end: datetime) -> None:
        self.sites, self.prices, self.carbon = sites, PriceBook(session, list(sites.values())), CarbonBook(session)
        self.prices.preload(start, end)
        self.carbon.preload([s.grid_zone for s in sites.values() if s.grid_zone], start, end)
        self._hourly: dict[tuple, tuple] = {}
        self.embodied_cache: dict[str | None, float | None] = {}
        self._embodied_per_us: dict[str | None, Fraction | None] = {}
        self.used_sites: set[int] = set()

    def embodied(self, model: str | None) -> float | None:
        if model not in self.embodied_cache:
            self.embodied_cache[model] = self.carbon.embodied_g_per_gpu_hour(model) if model else None
        return self.embodied_cache[model]

    def at(self, site_id: int | None, hour: datetime, model: str | None) -> tuple:
        """Multipliers: facility kWh per mJ (PUE ÷ 3.6e9), then cost, location and market gCO2e per
        mJ (× PUE ÷ 3.6e9) and embodied gCO2e per GPU-µs, as Fractions, None where unknown.
        A GPU at no known site: PUE 1, no price, no carbon."""
        if (key := (site_id, hour)) not in self._hourly:
            pue, factors = Fraction(1), (None, None, None)
            if (site := self.sites.get(site_id)) is not None:
                self.used_sites.add(site.id)
                pue = Fraction(self.prices.pue(site, hour))
                factors = (self.prices.price_per_kwh(site, hour),
                           self.carbon.location_g_per_kwh(site.grid_zone, hour) if site.grid_zone else None,
                           self.carbon.market_g_per_kwh(site))
            facility = pue * _PER_MJ
            self._hourly[key] = (facility, *(None if v is None else Fraction(v) * facility for v in factors))
        if model not in self._embodied_per_us:
            emb = self.embodied(model)
            self._embodied_per_us[model] = None if emb is None else Fraction(emb) * _PER_US_HOUR
        return (*self._hourly[key], self._embodied_per_us[model])


def cells(session: Session, group_by: str, start: datetime, end: datetime, *, per_gpu: bool) -> dict:
    """(GPU id or None, site id, hour, model) → {(kind, key): [energy_mj, gpu_us]}, summed in SQL; kind is
    group, idle or unattributed. `per_gpu`: one cell per GPU-hour (to spread idle energy within it)."""
    t, j, g = LedgerEntry.__table__, Job.__table__, Gpu.__table__
    parent = g.alias("parent")
    kind = sa.case((t.c.account == IDLE, "idle"), (t.c.account == UNATTRIBUTED, "unattributed"), else_="group")
    key = {"team": j.c.team, "project": j.c.project, "cost_center": j.c.cost_center}[group_by]
    # A MIG instance at no site of its own is where its parent is (its model is its own).
    keys = [t.c.gpu_id if per_gpu else sa.null(), sa.func.coalesce(g.c.site_id, parent.c.site_id), t.c.hour,
            g.c.model, kind, key]
    rows = session.execute(
        sa.select(*keys, sa.func.sum(t.c.energy_mj), sa.func.sum(t.c.gpu_us))
        .select_from(t).join(g, g.c.id == t.c.gpu_id).outerjoin(parent, parent.c.id == g.c.parent_id)
        .outerjoin(j, j.c.id == t.c.job_id).where(t.c.hour >= start, t.c.hour < end)
        .group_by(*keys[1:], *([t.c.gpu_id] if per_gpu else []))
    ).all()
    out: dict = defaultdict(dict)
    special = {"idle": IDLE_GROUP, "unattributed": UNATTRIBUTED_GROUP}
    for gpu_id, site_id, hour, model, kind_, key_, energy_mj, gpu_us in rows:
        name = special.get(kind_) or (key_ if group_by == "team" else key_ or UNKNOWN)
        out[(gpu_id, site_id, hour, model)][(kind_, name)] = [int(energy_mj), int(gpu_us)]
    return out
