"""`wattledger import carbon | tariff | prices`: load grid intensity, URDB tariffs and hourly
price series from files. Thin adapters: read the file, call one importer, commit once; a
malformed file prints what is wrong, stores nothing and exits 2."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

FileArg = Annotated[Path, typer.Argument(help="The file to import.", exists=False, dir_okay=False)]


def _run(console: Console, load: Callable, describe: Callable) -> None:
    """Read and import inside one session; commit only when the importer returned."""
    from sqlmodel import Session

    from accounting.config import get_settings
    from accounting.db import engine_for
    from accounting.errors import InvalidInput

    with Session(engine_for(get_settings().resolved_database_url), expire_on_commit=False) as session:
        try:
            result = load(session)
        except (InvalidInput, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            session.rollback()
            console.print(f"[red]cannot import, nothing stored:[/red] {exc}")
            raise typer.Exit(2) from exc
        session.commit()
    console.print(describe(result))


def _span(summary) -> str:
    if summary.first_hour is None:
        return "no hours"
    return f"{summary.first_hour:%Y-%m-%d %H:%M} to {summary.last_hour:%Y-%m-%d %H:%M} UTC"


def _describe_tariff(tariff) -> str:
    text = (f"tariff {tariff.id} {tariff.name!r}: {len(tariff.period_rates)} periods, {tariff.currency}/kWh "
            f"{', '.join(tariff.period_rates)}")
    if tariff.valid_from and tariff.valid_to:
        text += f"; valid {tariff.valid_from:%Y-%m-%d} to {tariff.valid_to:%Y-%m-%d}"
    return text


def register(import_app: typer.Typer, console: Console) -> None:
    """Add the carbon, tariff and prices commands to the `import` group."""

    @import_app.command("carbon")
    def import_carbon(
        file: FileArg,
        zone: Annotated[str | None, typer.Option(help="Zone id to store under (default: the file's Zone Id).")] = None,
    ) -> None:
        """Hourly grid carbon intensity from an Electricity Maps CSV export; importing again updates."""
        from accounting.chargeback.carbon import import_electricitymaps_csv

        _run(console, lambda s: import_electricitymaps_csv(s, file.read_text(encoding="utf-8"), zone=zone),
             lambda r: f"zone {r.zone}: {r.rows} hours ({r.replaced} replaced), {_span(r)}, "
                       f"{r.estimated} estimated")

    @import_app.command("tariff")
    def import_tariff(
        file: FileArg,
        name: Annotated[str | None, typer.Option(help="Name to give the tariff (default: utility / name).")] = None,
    ) -> None:
        """A time-of-use tariff from an OpenEI URDB rate record (JSON; a REopt input works too)."""
        from accounting.chargeback.prices import import_urdb

        _run(console, lambda s: import_urdb(s, json.loads(file.read_text(encoding="utf-8")), name=name),
             _describe_tariff)

    @import_app.command("prices")
    def import_prices(
        file: FileArg,
        series: Annotated[str | None, typer.Option(help="Series name (default: the file name's stem).")] = None,
        currency: Annotated[str, typer.Option(help="ISO 4217 code of the prices.")] = "EUR",
        tz: Annotated[str, typer.Option(help="Zone of the file's local times (ISO times with offsets ignore it).")]
        = "Europe/Brussels",
        unit: Annotated[str, typer.Option(help="Prices per kWh or per MWh.")] = "kWh",
    ) -> None:
        """An hourly price series: ENTSO-E `time,DAM_price` (Stata times, local) or ISO `hour,price`."""
        from accounting.chargeback.prices import import_price_csv

        name = series or file.stem[:100]
        _run(console, lambda s: import_price_csv(s, file.read_text(encoding="utf-8"), series=name,
                                                 currency=currency, tz=tz, unit=unit),
             lambda r: f"series {name!r}: {r.rows} hours ({r.replaced} replaced), {_span(r)}; skipped "
                       f"{r.skipped_empty} empty, {r.duplicates} duplicate, {r.skipped_nonexistent} in a DST gap")
