"""Carbon from the real Electricity Maps exports (both header generations), the Scope 2
location- and market-based factors, embodied carbon, and malformed files that store nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import select

from accounting.chargeback.carbon import CarbonBook, import_electricitymaps_csv
from accounting.chargeback.models import CarbonIntensity, EmbodiedCarbon, Site
from accounting.demo.scenario import SHARED_DATA
from accounting.errors import InvalidInput


def read(zone: str, year: int) -> str:
    return (SHARED_DATA / f"electricitymaps_{zone}_{year}_hourly.csv").read_text(encoding="utf-8")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def stored(session, zone: str | None = None) -> int:
    query = select(sa.func.count()).select_from(CarbonIntensity)
    return session.exec(query.where(CarbonIntensity.zone == zone) if zone else query).one()


# zone, year, rows, estimated, README means: direct, life cycle
README = [("DE", 2023, 8760, 3, 329.3, 395.1), ("NO", 2023, 8760, 4, 9.3, 34.1), ("GB", 2024, 8784, 22, 111.5, 170.0)]


@pytest.mark.parametrize(("zone", "year", "rows", "estimated", "direct", "lifecycle"), README)
def test_each_export_matches_the_readme(session, zone, year, rows, estimated, direct, lifecycle):
    summary = import_electricitymaps_csv(session, read(zone, year))
    assert (summary.zone, summary.rows, summary.estimated, summary.replaced) == (zone, rows, estimated, 0)
    assert (summary.first_hour, summary.last_hour) == (utc(year, 1, 1), utc(year, 12, 31, 23))
    assert stored(session, zone) == rows
    means = session.exec(select(sa.func.avg(CarbonIntensity.direct_g_per_kwh),
                                sa.func.avg(CarbonIntensity.lifecycle_g_per_kwh),
                                sa.func.sum(sa.case((CarbonIntensity.estimated, 1), else_=0)))
                         .where(CarbonIntensity.zone == zone)).one()
    assert means[0] == pytest.approx(direct, abs=0.1) and means[1] == pytest.approx(lifecycle, abs=0.1)
    assert means[2] == estimated


def test_location_based_is_direct_and_lifecycle_is_kept(session):
    import_electricitymaps_csv(session, read("DE", 2023))
    import_electricitymaps_csv(session, read("GB", 2024))
    book = CarbonBook(session)
    assert book.location_g_per_kwh("DE", utc(2023, 1, 1, 0)) == 152.03
    assert book.lifecycle_g_per_kwh("DE", utc(2023, 1, 1, 0, 45)) == 199.59  # any moment of the hour
    assert book.location_g_per_kwh("GB", utc(2024, 12, 31, 23)) == 51.61
    assert book.location_g_per_kwh("GB", utc(2024, 2, 29, 12)) is not None  # the leap day is there
    assert book.location_g_per_kwh("DE", utc(2024, 1, 1)) is None  # beyond the export
    assert book.location_g_per_kwh("FR", utc(2023, 1, 1)) is None
    preloaded = CarbonBook(session)
    preloaded.preload(["DE", "NO"], utc(2023, 1, 1), utc(2023, 1, 2))
    assert preloaded.location_g_per_kwh("DE", utc(2023, 1, 1, 0)) == 152.03
    assert preloaded.location_g_per_kwh("NO", utc(2023, 1, 1, 0)) is None  # preloaded as absent


def test_reimport_upserts(session):
    text = read("NO", 2023)
    import_electricitymaps_csv(session, text)
    lines = text.splitlines()
    lines[1] = lines[1].replace("37.86", "38.00")  # a revised first hour
    again = import_electricitymaps_csv(session, "\n".join(lines))
    assert (again.rows, again.replaced) == (8760, 8760) and stored(session) == 8760
    assert CarbonBook(session).location_g_per_kwh("NO", utc(2023, 1, 1)) == 38.0


def test_ascii_headers_and_a_zone_override(session):
    text = ("Datetime (UTC),Zone id,Carbon intensity gCO2eq/kWh (direct),Carbon intensity gCO2eq/kWh (Life cycle),"
            "Data estimated\n2025-07-26 22:00:00,DE,300.5,,true\n2025-07-26 23:00:00,DE,310,350,false\n")
    summary = import_electricitymaps_csv(session, text, zone="DE-test")
    assert (summary.rows, summary.zone, summary.estimated) == (2, "DE-test", 1)
    book = CarbonBook(session)
    assert book.location_g_per_kwh("DE-test", utc(2025, 7, 26, 22)) == 300.5
    assert book.lifecycle_g_per_kwh("DE-test", utc(2025, 7, 26, 22)) is None


def broken(line: int, old: str, new: str) -> str:
    lines = read("DE", 2023).splitlines()
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    return "\n".join(lines) + "\n"


DIRECT = "'Carbon Intensity gCO₂eq/kWh (direct)'"


@pytest.mark.parametrize(("text", "field"), [
    (broken(5000, ",entsoe.eu,false,", ""), "line 5000"),  # truncated row
    (broken(5000, ",entsoe.eu,", ",entsoe.eu,maybe"), "line 5000, column 'Data Estimated'"),
    (broken(8761, "2023-12-31 23:00:00,", "2023-12-31 23:00,"), "line 8761, column 'Datetime (UTC)'"),
    (broken(8000, ",DE,", ",DE,3x9."), f"line 8000, column {DIRECT}"),
    (broken(8000, ",DE,", ",DE,-1"), f"line 8000, column {DIRECT}"),
    (broken(1, "(direct)", "(direkt)"), "line 1"),
    (broken(1, "Zone Id", "Zone"), "line 1"),
])
def test_a_malformed_export_names_the_place_and_stores_nothing(session, text, field):
    with pytest.raises(InvalidInput) as caught:
        import_electricitymaps_csv(session, text)
    assert caught.value.field == field
    assert stored(session) == 0


def test_a_file_with_two_zones_needs_a_zone(session):
    text = broken(100, ",Germany,DE,", ",Germany,DE-LU,")
    with pytest.raises(InvalidInput, match="DE, DE-LU"):
        import_electricitymaps_csv(session, text)
    assert stored(session) == 0
    assert import_electricitymaps_csv(session, text, zone="DE").rows == 8760


def test_market_based_and_embodied(session):
    contract = Site(name="ppa", contract_g_per_kwh=0.0, residual_mix_g_per_kwh=450.0)
    residual = Site(name="residual", residual_mix_g_per_kwh=450.0)
    session.add_all([contract, residual, EmbodiedCarbon(gpu_model="H100 SXM", kg_co2e=1500, lifetime_hours=43_800)])
    session.flush()
    book = CarbonBook(session)
    assert book.market_g_per_kwh(contract) == 0.0  # a zero contract factor is a factor, not a missing one
    assert book.market_g_per_kwh(residual) == 450.0
    assert book.market_g_per_kwh(Site(name="none")) is None
    assert book.embodied_g_per_gpu_hour("H100 SXM") == pytest.approx(1500 * 1000 / 43_800)
    assert book.embodied_g_per_gpu_hour("V100") is None
