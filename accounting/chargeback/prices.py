"""Electricity prices: URDB time-of-use tariffs, hourly price series, and the PriceBook that
says what one kWh cost a site in a given UTC hour.

Importers validate the whole input before they store anything and never commit (the caller
owns the transaction). Prices stay `Decimal` from the file's text to the statement.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session, select

from accounting.errors import InvalidInput

from .models import PricePoint, Site, Tariff

HOUR = timedelta(hours=1)
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"), start=1)}


@dataclass(frozen=True)
class ImportSummary:
    rows: int  # hours stored (inserted or replaced)
    skipped_empty: int  # rows without a price
    first_hour: datetime | None  # UTC
    last_hour: datetime | None
    duplicates: int = 0  # rows whose UTC hour an earlier row already gave (the first is kept)
    skipped_nonexistent: int = 0  # priced local times the spring-forward gap swallowed
    replaced: int = 0  # of `rows`, hours that were already stored and got the file's price


def upsert(session: Session, model, rows: list[dict], keys: Sequence[str], batch: int = 5000) -> None:
    """INSERT … ON CONFLICT (keys) DO UPDATE, on PostgreSQL and SQLite alike."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the project runs on these two
        raise NotImplementedError(f"upsert on {dialect}")
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        stmt = insert(model.__table__)
        updates = {c: stmt.excluded[c] for c in chunk[0] if c not in keys}
        session.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=updates), chunk)


def floor_hour(moment: datetime) -> datetime:
    """The start of the UTC hour holding `moment` (naive input is taken as UTC)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def zone(name: str, field: str = "tz") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(field, f"unknown time zone {name!r}") from exc


# ---- URDB tariffs -------------------------------------------------------------------------

def urdb_record(doc: dict) -> dict:
    """The rate record inside what people save from URDB: the record itself, an OpenEI API
    answer {"items": [record]}, or a REopt input {"ElectricTariff": {"urdb_response": record}}."""
    if isinstance(doc, dict) and isinstance(doc.get("ElectricTariff"), dict):
        doc = doc["ElectricTariff"].get("urdb_response")
    if isinstance(doc, dict) and isinstance(doc.get("items"), list):
        if len(doc["items"]) != 1:
            raise InvalidInput("items", f"expected one rate record, found {len(doc['items'])}")
        doc = doc["items"][0]
    if not isinstance(doc, dict) or "energyratestructure" not in doc:
        raise InvalidInput("energyratestructure", "missing: not a URDB rate record")
    return doc


def _number(value, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(field, f"not a number: {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidInput(field, f"not a number: {value!r}") from exc
    if not number.is_finite():
        raise InvalidInput(field, f"not finite: {value!r}")
    return number


def _period_rates(structure) -> list[str]:
    """Each period's $/kWh: its FIRST tier's rate + adj. Tiers (price steps by monthly volume)
    need a month's total per meter, which hourly chargeback does not have; the first tier is
    the price of the first kWh, which is what a small share of a site's bill pays at most."""
    if not isinstance(structure, list) or not structure:
        raise InvalidInput("energyratestructure", "expected a non-empty list of periods")
    rates = []
    for p, tiers in enumerate(structure):
        field = f"energyratestructure[{p}]"
        if not isinstance(tiers, list) or not tiers or not isinstance(tiers[0], dict):
            raise InvalidInput(field, "expected a non-empty list of tiers")
        tier = tiers[0]
        if tier.get("unit", "kWh") != "kWh":
            raise InvalidInput(f"{field}[0].unit", f"only per-kWh energy rates are supported, not {tier['unit']!r}")
        if "rate" not in tier:
            raise InvalidInput(f"{field}[0].rate", "missing")
        rate = _number(tier["rate"], f"{field}[0].rate") + _number(tier.get("adj", 0), f"{field}[0].adj")
        rates.append(str(rate))
    return rates


def _schedule(value, field: str, periods: int) -> list[list[int]]:
    if not isinstance(value, list) or len(value) != 12:
        raise InvalidInput(field, "expected 12 months of 24 hours")
    for m, row in enumerate(value):
        if not isinstance(row, list) or len(row) != 24:
            raise InvalidInput(f"{field}[{m}]", "expected 24 hours")
        for h, p in enumerate(row):
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < periods:
                raise InvalidInput(f"{field}[{m}][{h}]", f"period {p!r} is not one of 0..{periods - 1}")
    return value


def _epoch(doc: dict, field: str) -> datetime | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(field, f"expected epoch seconds, got {value!r}")
    return datetime.fromtimestamp(value, UTC)


def import_urdb(session: Session, doc: dict, *, name: str | None = None) -> Tariff:
    """Store an OpenEI URDB rate record's energy charges as a Tariff (flushed, not committed).

    Demand and fixed charges are not per-kWh and stay out. Holidays are not in URDB's energy
    schedules, so they price as the weekday they fall on. `valid_from`/`valid_to` record the
    record's startdate/enddate; the PriceBook does not enforce them (a site's tariff is the one
    it is assigned)."""
    doc = urdb_record(doc)
    rates = _period_rates(doc.get("energyratestructure"))
    weekday = _schedule(doc.get("energyweekdayschedule"), "energyweekdayschedule", len(rates))
    weekend = _schedule(doc.get("energyweekendschedule"), "energyweekendschedule", len(rates))
    title = name or " / ".join(str(doc[k]) for k in ("utility", "name") if doc.get(k)) or doc.get("label")
    if not title:
        raise InvalidInput("name", "the record has no name, label or utility; pass name=")
    tariff = Tariff(name=str(title)[:300], source=(doc.get("uri") or doc.get("label")), currency="USD",
                    period_rates=rates, weekday_schedule=weekday, weekend_schedule=weekend,
                    valid_from=_epoch(doc, "startdate"), valid_to=_epoch(doc, "enddate"))
    session.add(tariff)
    session.flush()
    return tariff


# ---- hourly price series ------------------------------------------------------------------

def _parse_time(text: str, stata: bool) -> datetime:
    text = text.strip()
    if stata:  # 01jan2022 00:00:00; strptime's %b would follow the locale
        day, mon, year, clock = text[:2], text[2:5].lower(), text[5:9], text[10:]
        h, m, s = (int(x) for x in clock.split(":"))
        return datetime(int(year), _MONTHS[mon], int(day), h, m, s)
    return datetime.fromisoformat(text)


def _to_utc(local: datetime, tz: ZoneInfo, seen: set) -> tuple[datetime, bool]:
    """A local wall time → (UTC, exists). A time repeated on the fall-back night is read as the
    earlier instant (fold=0, summer time) the first time it is seen and as the later one
    (fold=1) the next time, which is how hourly exports list the two hours. A time in the
    spring-forward gap names no instant at all: exists=False."""
    if local.tzinfo is not None:
        return local.astimezone(UTC), True
    first = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first != second:
        back = first.astimezone(tz).replace(tzinfo=None)
        if back != local:  # the gap: no wall clock showed this time
            return first, False
        if local in seen:  # ambiguous, and its first reading was an earlier row
            return second, True
        seen.add(local)
    return first, True


def parse_price_csv(text: str, *, tz: str = "Europe/Brussels", unit: str = "kWh") -> tuple[dict, ImportSummary]:
    """Parse (no storing) an hourly price CSV: ENTSO-E/Stata `time,DAM_price` or ISO `hour,price`."""
    zone_info = zone(tz)
    scale = {"kwh": Decimal(1), "mwh": Decimal("0.001")}.get(unit.lower())
    if scale is None:
        raise InvalidInput("unit", f"expected kWh or MWh, not {unit!r}")
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip().lower() for h in next(reader, [])]
    if header not in (["time", "dam_price"], ["hour", "price"]):
        raise InvalidInput("line 1", f"expected the header time,DAM_price or hour,price, got {','.join(header)!r}")
    stata = header[0] == "time"
    staged: dict[datetime, Decimal] = {}
    seen: set[datetime] = set()
    empty = duplicates = gap = 0
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != 2:
            raise InvalidInput(f"line {line}", f"expected 2 fields, got {len(fields)}")
        try:
            local = _parse_time(fields[0], stata)
        except (ValueError, KeyError) as exc:
            raise InvalidInput(f"line {line}, column {header[0]}", f"not a time: {fields[0]!r}") from exc
        if local.minute or local.second or local.microsecond:
            raise InvalidInput(f"line {line}", f"not the start of an hour: {fields[0]!r}")
        hour, exists = _to_utc(local, zone_info, seen)
        if not fields[1].strip():
            empty += 1
            continue
        price = _number(fields[1].strip(), f"line {line}, column {header[1]}") * scale
        if not exists:
            gap += 1
        elif hour in staged:
            duplicates += 1
        else:
            staged[hour] = price
    hours = sorted(staged)
    summary = ImportSummary(rows=len(hours), skipped_empty=empty, first_hour=hours[0] if hours else None,
                            last_hour=hours[-1] if hours else None, duplicates=duplicates, skipped_nonexistent=gap)
    return staged, summary


def import_price_csv(session: Session, text: str, *, series: str, currency: str = "EUR",
                     tz: str = "Europe/Brussels", unit: str = "kWh") -> ImportSummary:
    """Store an hourly price series (not committed). Empty prices are skipped and counted,
    negative ones kept; the file is parsed whole before anything is written, so a malformed
    row (InvalidInput naming its line) stores nothing. Importing again replaces the stored
    prices of the file's hours with the file's (a corrected file wins)."""
    if not series or len(series) > 100:
        raise InvalidInput("series", "expected a name of 1 to 100 characters")
    if len(currency) != 3:
        raise InvalidInput("currency", f"expected an ISO 4217 code, not {currency!r}")
    staged, summary = parse_price_csv(text, tz=tz, unit=unit)
    replaced = 0
    if staged:
        existing = session.exec(select(PricePoint.hour).where(
            PricePoint.series == series, PricePoint.hour >= summary.first_hour,
            PricePoint.hour <= summary.last_hour)).all()
        replaced = len({floor_hour(h) for h in existing} & staged.keys())
    rows = [{"series": series, "hour": hour, "price_per_kwh": str(price), "currency": currency.upper()}
            for hour, price in sorted(staged.items())]
    upsert(session, PricePoint, rows, ("series", "hour"))
    return replace(summary, replaced=replaced)


# ---- the price book -----------------------------------------------------------------------

class PriceBook:
    """What a kWh cost a site in a UTC hour, and its PUE then; cached per (site, hour).

    Order: the site's hourly series (a stored hour), else its time-of-use tariff (read in the
    site's local time), else its flat price, else None. Prices are in the site's currency: a
    series or tariff in another currency is refused (InvalidInput) rather than added up."""

    def __init__(self, session: Session, sites: Iterable[Site]) -> None:
        self._session = session
        self._sites = {s.id: s for s in sites}
        tariff_ids = {s.tariff_id for s in self._sites.values() if s.tariff_id is not None}
        self._tariffs = {t.id: t for t in session.exec(select(Tariff).where(Tariff.id.in_(tariff_ids)))} \
            if tariff_ids else {}
        self._zones = {sid: zone(s.timezone, "timezone") for sid, s in self._sites.items()}
        self._prices: dict[tuple[int, datetime], Decimal | None] = {}
        self._series: dict[tuple[str, datetime], PricePoint | None] = {}

    def _site(self, site: Site | int) -> Site:
        site_id = site if isinstance(site, int) else site.id
        if site_id not in self._sites:
            raise InvalidInput("site", f"site {site_id!r} is not in this price book")
        return self._sites[site_id]

    def preload(self, start: datetime, end: datetime) -> None:
        """Fetch every series price of the book's sites in [start, end) in one query per series."""
        for name in {s.price_series for s in self._sites.values() if s.price_series}:
            for hour in hours(start, end):
                self._series.setdefault((name, hour), None)
            points = self._session.exec(select(PricePoint).where(
                PricePoint.series == name, PricePoint.hour >= floor_hour(start), PricePoint.hour < end))
            for point in points:
                self._series[(name, floor_hour(point.hour))] = point

    def _series_point(self, name: str, hour: datetime) -> PricePoint | None:
        key = (name, hour)
        if key not in self._series:
            self._series[key] = self._session.exec(select(PricePoint).where(
                PricePoint.series == name, PricePoint.hour == hour)).first()
        return self._series[key]

    def _check_currency(self, site: Site, currency: str, what: str) -> None:
        if currency.upper() != site.currency.upper():
            raise InvalidInput("currency", f"site {site.name!r} bills in {site.currency} but {what} is in {currency}")

    def price_per_kwh(self, site: Site | int, hour_utc: datetime) -> Decimal | None:
        site = self._site(site)
        hour = floor_hour(hour_utc)
        key = (site.id, hour)
        if key not in self._prices:
            self._prices[key] = self._resolve(site, hour)
        return self._prices[key]

    def _resolve(self, site: Site, hour: datetime) -> Decimal | None:
        if site.price_series and (point := self._series_point(site.price_series, hour)) is not None:
            self._check_currency(site, point.currency, f"price series {site.price_series!r}")
            return Decimal(point.price_per_kwh)
        tariff = self._tariffs.get(site.tariff_id)
        if tariff is not None:
            self._check_currency(site, tariff.currency, f"tariff {tariff.name!r}")
            local = hour.astimezone(self._zones[site.id])
            schedule = tariff.weekday_schedule if local.weekday() < 5 else tariff.weekend_schedule
            return Decimal(tariff.period_rates[schedule[local.month - 1][local.hour]])
        if site.flat_price_per_kwh is not None:
            return Decimal(site.flat_price_per_kwh)
        return None

    def pue(self, site: Site | int, hour_utc: datetime) -> Decimal:
        """The site's PUE in that hour: its month's override (local month, "YYYY-MM"), else its PUE."""
        site = self._site(site)
        month = floor_hour(hour_utc).astimezone(self._zones[site.id]).strftime("%Y-%m")
        value = (site.pue_by_month or {}).get(month, site.pue)
        return Decimal(str(value))


def hours(start: datetime, end: datetime) -> Iterator[datetime]:
    """The UTC hour starts in [start, end)."""
    hour = floor_hour(start)
    while hour < end:
        yield hour
        hour += HOUR
