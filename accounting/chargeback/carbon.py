"""Grid carbon intensity (Electricity Maps hourly exports) and the CarbonBook that gives the
location-based, market-based and embodied factors a statement multiplies energy by.

Location-based Scope 2 uses the *direct* (combustion) intensity: the GHG Protocol Scope 2
Guidance defines grid emission factors from generation emissions, and upstream life-cycle
emissions (fuel extraction, plant construction) belong to Scope 3, category 3. The life-cycle
(LCA) figure is stored too, for those who report it alongside.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session, select

from accounting.errors import InvalidInput

from .models import CarbonIntensity, EmbodiedCarbon, Site
from .prices import floor_hour, hours, upsert

# Normalized header (lower case, ₂ → 2, single spaces) → our name. Both export generations:
# 2023 "Carbon Intensity gCO₂eq/kWh (direct)/(LCA)", 2024 "Carbon intensity … (direct)/(Life cycle)".
COLUMNS = {
    "datetime (utc)": "hour",
    "zone id": "zone",
    "carbon intensity gco2eq/kwh (direct)": "direct",
    "carbon intensity gco2eq/kwh (lca)": "lifecycle",
    "carbon intensity gco2eq/kwh (life cycle)": "lifecycle",
    "data estimated": "estimated",
}
REQUIRED = ("hour", "direct")


@dataclass(frozen=True)
class ImportSummary:
    rows: int  # hours stored (inserted or replaced)
    zone: str | None
    first_hour: datetime | None  # UTC
    last_hour: datetime | None
    estimated: int  # rows flagged Data Estimated=true
    replaced: int = 0  # of `rows`, hours already stored, now overwritten with the file's values


def _normalize(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").replace("₂", "2").split()).lower()


def _intensity(text: str, where: str, required: bool) -> float | None:
    if not text.strip():
        if required:
            raise InvalidInput(where, "missing")
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidInput(where, f"not a number: {text!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(where, f"not a finite, non-negative gCO2eq/kWh: {text!r}")
    return value


def _parse_row(fields: list[str], line: int, header: list[str], index: dict[str, int]) -> dict:
    def cell(name: str) -> tuple[str, str]:
        return fields[index[name]].strip(), f"line {line}, column {header[index[name]]!r}"

    raw, where = cell("hour")
    try:
        hour = datetime.strptime(raw, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput(where, f"not a YYYY-MM-DD HH:MM:SS time: {raw!r}") from exc
    if hour.minute or hour.second:
        raise InvalidInput(where, f"not the start of an hour: {raw!r}")
    flag = False
    if "estimated" in index:
        raw_flag, flag_where = cell("estimated")
        if raw_flag.lower() not in ("true", "false", ""):
            raise InvalidInput(flag_where, f"expected true or false, got {raw_flag!r}")
        flag = raw_flag.lower() == "true"
    zone = None
    if "zone" in index:
        zone, zone_where = cell("zone")
        if len(zone) > 64:
            raise InvalidInput(zone_where, f"not a zone id: {zone!r}")
    return {"hour": hour, "zone": zone or None, "direct_g_per_kwh": _intensity(*cell("direct"), required=True),
            "lifecycle_g_per_kwh": _intensity(*cell("lifecycle"), required=False) if "lifecycle" in index else None,
            "estimated": flag}


def parse_electricitymaps_csv(text: str, *, zone: str | None = None) -> tuple[dict[datetime, dict], int, str | None]:
    """Parse (no storing) an Electricity Maps hourly export → ({hour: row}, estimated, zone)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    index = {COLUMNS[n]: i for i, n in enumerate(map(_normalize, header)) if n in COLUMNS}
    for needed in REQUIRED + (() if zone else ("zone",)):
        if needed not in index:
            wanted = {"hour": "Datetime (UTC)", "direct": "Carbon Intensity gCO₂eq/kWh (direct)", "zone": "Zone Id"}
            raise InvalidInput("line 1", f"no {wanted[needed]!r} column in the header")
    staged: dict[datetime, dict] = {}
    zones: set[str] = set()
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != len(header):
            raise InvalidInput(f"line {line}", f"expected {len(header)} fields, got {len(fields)}")
        row = _parse_row(fields, line, header, index)
        if row["hour"] in staged:
            raise InvalidInput(f"line {line}, column {header[index['hour']]!r}", f"hour {row['hour']} given twice")
        if zone is None:
            if row["zone"] is None:
                raise InvalidInput(f"line {line}, column {header[index['zone']]!r}", "no zone id")
            zones.add(row["zone"])
        row["zone"] = zone or row["zone"]
        staged[row["hour"]] = row
    if zone is None and len(zones) > 1:
        raise InvalidInput("Zone Id", f"one zone per file, found {', '.join(sorted(zones))}; pass zone=")
    estimated = sum(row["estimated"] for row in staged.values())
    return staged, estimated, zone or next(iter(zones), None)


def import_electricitymaps_csv(session: Session, text: str, *, zone: str | None = None) -> ImportSummary:
    """Store an Electricity Maps hourly export (not committed). The zone comes from the Zone Id
    column unless `zone` is given. The whole file is parsed first: a malformed one raises
    InvalidInput naming the line and column, and nothing is stored. Importing again is an
    upsert: hours already stored take the file's values (Electricity Maps revises estimates,
    so the newer export wins) and nothing is duplicated."""
    staged, estimated, zone_id = parse_electricitymaps_csv(text, zone=zone)
    if not staged:
        return ImportSummary(rows=0, zone=zone_id, first_hour=None, last_hour=None, estimated=0)
    first, last = min(staged), max(staged)
    existing = session.exec(select(CarbonIntensity.hour).where(
        CarbonIntensity.zone == zone_id, CarbonIntensity.hour >= first, CarbonIntensity.hour <= last)).all()
    replaced = len({floor_hour(h) for h in existing} & staged.keys())
    rows = [row for _, row in sorted(staged.items())]
    upsert(session, CarbonIntensity, rows, ("zone", "hour"))
    return ImportSummary(rows=len(rows), zone=zone_id, first_hour=first, last_hour=last, estimated=estimated,
                         replaced=replaced)


class CarbonBook:
    """gCO2e per kWh for a zone's hour (location-based), a site (market-based), and per GPU-hour
    of a model's embodied carbon; lookups are cached."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._hours: dict[tuple[str, datetime], CarbonIntensity | None] = {}
        self._embodied: dict[str, float | None] = {}

    def preload(self, zones: Iterable[str], start: datetime, end: datetime) -> None:
        """Fetch the zones' intensities for [start, end) in one query per zone."""
        for zone in set(zones):
            for hour in hours(start, end):
                self._hours.setdefault((zone, hour), None)
            rows = self._session.exec(select(CarbonIntensity).where(
                CarbonIntensity.zone == zone, CarbonIntensity.hour >= floor_hour(start), CarbonIntensity.hour < end))
            for row in rows:
                self._hours[(zone, floor_hour(row.hour))] = row

    def _row(self, zone: str, hour_utc: datetime) -> CarbonIntensity | None:
        key = (zone, floor_hour(hour_utc))
        if key not in self._hours:
            self._hours[key] = self._session.exec(select(CarbonIntensity).where(
                CarbonIntensity.zone == zone, CarbonIntensity.hour == key[1])).first()
        return self._hours[key]

    def location_g_per_kwh(self, zone: str, hour_utc: datetime) -> float | None:
        """Direct (combustion) intensity of the zone's grid in that UTC hour: location-based Scope 2."""
        row = self._row(zone, hour_utc)
        return None if row is None else row.direct_g_per_kwh

    def lifecycle_g_per_kwh(self, zone: str, hour_utc: datetime) -> float | None:
        """Life-cycle (LCA) intensity, for reporting beside Scope 2; None where the export had none."""
        row = self._row(zone, hour_utc)
        return None if row is None else row.lifecycle_g_per_kwh

    def market_g_per_kwh(self, site: Site) -> float | None:
        """Market-based Scope 2: the site's contractual factor (PPA, certificates), else the residual mix."""
        if site.contract_g_per_kwh is not None:
            return site.contract_g_per_kwh
        return site.residual_mix_g_per_kwh

    def embodied_g_per_gpu_hour(self, gpu_model: str) -> float | None:
        """Embodied (Scope 3) carbon of the model amortized linearly over its service life."""
        if gpu_model not in self._embodied:
            row = self._session.get(EmbodiedCarbon, gpu_model)
            self._embodied[gpu_model] = None if row is None else row.kg_co2e * 1000 / row.lifetime_hours
        return self._embodied[gpu_model]
