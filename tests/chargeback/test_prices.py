"""Prices from the real files: SCE's URDB time-of-use tariff read in Los Angeles time, the
ENTSO-E Belgian day-ahead series across its DST days, and malformed input that stores nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlmodel import select

from accounting.chargeback.models import PricePoint, Site, Tariff
from accounting.chargeback.prices import PriceBook, import_price_csv, import_urdb, parse_price_csv
from accounting.demo.scenario import SHARED_DATA
from accounting.errors import InvalidInput

URDB = json.loads((SHARED_DATA / "urdb_SCE_GS-2-TOU-B_commercial_2015.json").read_text(encoding="utf-8"))
ENTSOE_TEXT = (SHARED_DATA / "entsoe_BE_day_ahead_prices_2022-2024_EUR_per_kWh.csv").read_text(encoding="utf-8")
LA = ZoneInfo("America/Los_Angeles")
BRUSSELS = ZoneInfo("Europe/Brussels")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def la(*args, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=LA, fold=fold).astimezone(UTC)


def count(session, model) -> int:
    return session.exec(select(sa.func.count()).select_from(model)).one()


@pytest.fixture
def sce_site(session) -> Site:
    tariff = import_urdb(session, URDB)
    site = Site(name="la-dc", timezone="America/Los_Angeles", tariff_id=tariff.id, currency="USD")
    session.add(site)
    session.flush()
    return site


def test_urdb_import_keeps_the_five_sce_periods(session):
    tariff = import_urdb(session, URDB)
    assert tariff.id is not None
    assert tariff.period_rates == ["0.0712", "0.09368", "0.066", "0.08888", "0.1355"]  # no adj in this record
    assert tariff.source == "http://en.openei.org/apps/IURDB/rate/view/55fc81d7682bea28da64f9ae"
    assert "SouthernCaliforniaEdisonCo" in tariff.name and tariff.currency == "USD"
    assert (tariff.valid_from, tariff.valid_to) == (utc(2015, 6, 1), utc(2015, 12, 31))
    assert len(tariff.weekday_schedule) == 12 and {len(r) for r in tariff.weekend_schedule} == {24}


def test_a_reopt_input_and_adj_are_understood(session):
    doc = json.loads(json.dumps(URDB))
    doc["energyratestructure"][4] = [{"rate": 0.1355, "adj": 0.01, "unit": "kWh"}, {"rate": 0.2, "unit": "kWh"}]
    tariff = import_urdb(session, {"ElectricTariff": {"urdb_response": doc}}, name="SCE with adj")
    assert tariff.name == "SCE with adj" and tariff.period_rates[4] == "0.1455"  # first tier: rate + adj


def test_summer_weekday_afternoon_is_on_peak(session, sce_site):
    book = PriceBook(session, [sce_site])
    assert book.price_per_kwh(sce_site, la(2015, 7, 15, 14)) == Decimal("0.1355")  # Wednesday, period 4
    assert book.price_per_kwh(sce_site, la(2015, 7, 15, 9)) == Decimal("0.08888")  # mid-peak, period 3
    assert book.price_per_kwh(sce_site, la(2015, 7, 15, 2)) == Decimal("0.066")  # off-peak, period 2
    assert book.price_per_kwh(sce_site.id, la(2015, 7, 18, 14)) == Decimal("0.066")  # Saturday: weekend table
    assert book.price_per_kwh(sce_site, la(2015, 7, 15, 14).replace(minute=59)) == Decimal("0.1355")


def test_winter_follows_the_schedule_weekday_and_weekend(session, sce_site):
    book = PriceBook(session, [sce_site])
    assert book.price_per_kwh(sce_site, la(2015, 12, 5, 14)) == Decimal("0.0712")  # Saturday: all period 0
    assert book.price_per_kwh(sce_site, la(2015, 12, 7, 14)) == Decimal("0.09368")  # Monday 8–20: period 1
    assert book.price_per_kwh(sce_site, la(2015, 12, 7, 22)) == Decimal("0.0712")


def test_tariffs_are_read_in_local_time_across_the_dst_change(session, sce_site):
    book = PriceBook(session, [sce_site])
    # 2015-11-01 01:30 happens twice in Los Angeles: 08:30 UTC (PDT) and 09:30 UTC (PST).
    first, second = la(2015, 11, 1, 1, 30, fold=0), la(2015, 11, 1, 1, 30, fold=1)
    assert (first, second) == (utc(2015, 11, 1, 8, 30), utc(2015, 11, 1, 9, 30))
    assert book.price_per_kwh(sce_site, first) == book.price_per_kwh(sce_site, second) == Decimal("0.0712")
    # The same UTC hour, 15:00, is 08:00 local (period 1) on Friday before the change, 07:00 (period 0) after.
    assert book.price_per_kwh(sce_site, utc(2015, 10, 30, 15)) == Decimal("0.09368")
    assert book.price_per_kwh(sce_site, utc(2015, 11, 2, 15)) == Decimal("0.0712")
    # 2015-10-01 06:00 UTC is still Wednesday 30 September 23:00 local: summer table, period 2.
    assert book.price_per_kwh(sce_site, utc(2015, 10, 1, 6)) == Decimal("0.066")


def test_series_then_tariff_then_flat_then_none(session, sce_site):
    csv = "hour,price\n2015-07-15T21:00:00Z,-0.01\n2015-07-15T23:00:00+02:00,0.25\n"  # the same hour twice
    summary = import_price_csv(session, csv, series="caiso", currency="USD")
    assert (summary.rows, summary.duplicates, summary.first_hour) == (1, 1, utc(2015, 7, 15, 21))  # first kept
    sce_site.price_series = "caiso"
    flat = Site(name="flat", flat_price_per_kwh="0.20", currency="USD")
    bare = Site(name="bare")
    session.add_all([flat, bare])
    session.flush()
    book = PriceBook(session, [sce_site, flat, bare])
    assert book.price_per_kwh(sce_site, utc(2015, 7, 15, 21)) == Decimal("-0.01")  # the series, negative kept
    assert book.price_per_kwh(sce_site, utc(2015, 7, 15, 22)) == Decimal("0.1355")  # no point: the tariff
    assert book.price_per_kwh(flat, utc(2015, 7, 15, 21)) == Decimal("0.20")
    assert book.price_per_kwh(bare, utc(2015, 7, 15, 21)) is None
    book.preload(utc(2015, 7, 15), utc(2015, 7, 16))
    assert book.price_per_kwh(sce_site, utc(2015, 7, 15, 21)) == Decimal("-0.01")


def test_a_series_in_another_currency_is_refused(session):
    import_price_csv(session, "hour,price\n2024-01-01T00:00:00Z,0.1\n", series="be")
    site = Site(name="be-dc", price_series="be", currency="USD")
    session.add(site)
    session.flush()
    with pytest.raises(InvalidInput, match="EUR"):
        PriceBook(session, [site]).price_per_kwh(site, utc(2024, 1, 1))


def test_pue_follows_the_local_month(session):
    site = Site(name="pue", timezone="America/Los_Angeles", pue=1.5, pue_by_month={"2015-10": 1.2})
    session.add(site)
    session.flush()
    book = PriceBook(session, [site])
    assert book.pue(site, utc(2015, 10, 1, 3)) == Decimal("1.5")  # still 30 September in Los Angeles
    assert book.pue(site, utc(2015, 10, 1, 8)) == Decimal("1.2")


def test_entsoe_import_matches_the_readme(session):
    summary = import_price_csv(session, ENTSOE_TEXT, series="BE-DAM")
    assert summary.rows == 22_583 and summary.skipped_empty == 26_307 - 22_583
    assert (summary.duplicates, summary.skipped_nonexistent, summary.replaced) == (0, 0, 0)
    assert summary.first_hour == utc(2021, 12, 31, 23)  # 01jan2022 00:00 CET
    assert summary.last_hour == utc(2024, 7, 29, 21)  # 29jul2024 23:00 CEST
    assert count(session, PricePoint) == 22_583
    prices = {p.hour: Decimal(p.price_per_kwh) for p in session.exec(select(PricePoint))}
    assert min(prices.values()) == Decimal("-0.14") and max(prices.values()) == Decimal("0.871")
    negative = sorted(h for h, p in prices.items() if p < 0)
    assert len(negative) == 618
    # 29oct2023 01:00 local (CEST) = 23:00 UTC the day before: -0.00107 EUR/kWh
    assert prices[utc(2023, 10, 28, 23)] == Decimal("-0.0010700000524521")


def local_day(prices: dict, day: datetime) -> list[datetime]:
    return sorted(h for h in prices if h.astimezone(BRUSSELS).date() == day.date())


def test_entsoe_dst_days(session):
    import_price_csv(session, ENTSOE_TEXT, series="BE-DAM")
    prices = {p.hour: p.price_per_kwh for p in session.exec(select(PricePoint))}
    # Spring forward: the file's 02:00 row is empty (no such hour); 23 priced hours.
    spring = local_day(prices, datetime(2022, 3, 27))
    assert len(spring) == 23 and spring[0] == utc(2022, 3, 26, 23)
    assert prices[utc(2022, 3, 27, 1)] == "0.2140200042724609"  # 03:00 CEST
    # Fall back: 02:00 twice, read as 02:00 CEST (00:00 UTC) then 02:00 CET (01:00 UTC): 25 hours.
    for day, first, second in [(datetime(2022, 10, 30), "0.1002200012207031", "0.0999300003051758"),
                               (datetime(2023, 10, 29), "-0.0010099999904633", "-0.000839999973774")]:
        hours = local_day(prices, day)
        assert len(hours) == 25
        two_am = utc(day.year, day.month, day.day, 0)
        assert (prices[two_am], prices[utc(day.year, day.month, day.day, 1)]) == (first, second)


def test_reimport_replaces_instead_of_duplicating(session):
    text = "hour,price\n2024-01-01T00:00:00Z,0.1\n2024-01-01T01:00:00Z,0.2\n"
    import_price_csv(session, text, series="s")
    again = import_price_csv(session, text.replace("0.2", "0.3"), series="s")
    assert (again.rows, again.replaced) == (2, 2) and count(session, PricePoint) == 2
    assert session.exec(select(PricePoint.price_per_kwh).where(PricePoint.hour == utc(2024, 1, 1, 1))).one() == "0.3"


def test_mwh_duplicates_and_the_dst_gap_in_a_generic_file():
    text = ("hour,price\n2023-03-26T01:00:00,90\n2023-03-26T02:00:00,91\n2023-03-26T03:00:00,92\n"
            "2023-10-29T02:00:00,10\n2023-10-29T02:00:00,11\n2023-10-29T02:00:00,12\n")
    staged, summary = parse_price_csv(text, tz="Europe/Brussels", unit="MWh")
    assert summary.skipped_nonexistent == 1 and summary.duplicates == 1 and summary.rows == 4
    assert staged[utc(2023, 3, 26, 1)] == Decimal("0.092")  # 03:00 CEST; the 02:00 gap row names no hour
    assert staged[utc(2023, 10, 29, 0)] == Decimal("0.010") and staged[utc(2023, 10, 29, 1)] == Decimal("0.011")


def broken(line: int, replacement: str) -> str:
    lines = ENTSOE_TEXT.splitlines()
    lines[line - 1] = replacement
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("text", "field"), [
    (broken(20_000, "13apr2024 06:00:00"), "line 20000"),  # truncated: the price column is gone
    (broken(20_000, "13apr2024 06:00:00,0.1x"), "line 20000, column dam_price"),
    (broken(20_000, "13apx2024 06:00:00,0.1"), "line 20000, column time"),
    (broken(1, "time;DAM_price"), "line 1"),
])
def test_a_malformed_price_file_stores_nothing(session, text, field):
    with pytest.raises(InvalidInput) as caught:
        import_price_csv(session, text, series="BE-DAM")
    assert caught.value.field == field
    assert count(session, PricePoint) == 0


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["energyweekdayschedule"].pop(), "energyweekdayschedule"),
    (lambda d: d["energyweekendschedule"][6].append(0), "energyweekendschedule[6]"),
    (lambda d: d["energyweekdayschedule"][6].__setitem__(14, 5), "energyweekdayschedule[6][14]"),
    (lambda d: d["energyratestructure"][1][0].__setitem__("rate", float("nan")), "energyratestructure[1][0].rate"),
    (lambda d: d["energyratestructure"][2][0].__setitem__("rate", "cheap"), "energyratestructure[2][0].rate"),
    (lambda d: d["energyratestructure"][0][0].__setitem__("unit", "kWh daily"), "energyratestructure[0][0].unit"),
    (lambda d: d.pop("energyratestructure"), "energyratestructure"),
])
def test_a_malformed_urdb_record_names_the_field_and_stores_nothing(session, change, field):
    doc = json.loads(json.dumps(URDB))
    change(doc)
    with pytest.raises(InvalidInput) as caught:
        import_urdb(session, doc)
    assert caught.value.field == field
    assert count(session, Tariff) == 0
