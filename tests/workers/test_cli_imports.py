"""`wattledger import carbon | tariff | prices` on the real files, against an embedded SQLite home.

The commands are registered on a fresh Typer group here (workers.cli adds them with one line);
the last test runs the real `python -m workers.cli` once that line is in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
import typer
from rich.console import Console
from typer.testing import CliRunner

from accounting import migrations
from accounting.config import get_settings
from accounting.demo.scenario import SHARED_DATA
from workers import cli_imports

DE = SHARED_DATA / "electricitymaps_DE_2023_hourly.csv"
URDB = SHARED_DATA / "urdb_SCE_GS-2-TOU-B_commercial_2015.json"
ENTSOE = SHARED_DATA / "entsoe_BE_day_ahead_prices_2022-2024_EUR_per_kWh.csv"


@pytest.fixture
def home(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WATTLEDGER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WATTLEDGER_HOME", str(tmp_path))
    get_settings.cache_clear()
    migrations.upgrade(get_settings().resolved_database_url)
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def invoke():
    app = typer.Typer()
    cli_imports.register(app, Console(width=200))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(map(str, args)))


def count(home, table: str) -> int:
    engine = sa.create_engine(f"sqlite:///{home / 'wattledger.db'}")
    with engine.connect() as connection:
        n = connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return n


def test_import_carbon_twice_stores_each_hour_once(home, invoke):
    first = invoke("carbon", DE)
    assert first.exit_code == 0, first.output
    assert "zone DE: 8760 hours (0 replaced), 2023-01-01 00:00 to 2023-12-31 23:00 UTC, 3 estimated" in first.output
    again = invoke("carbon", DE, "--zone", "DE")
    assert again.exit_code == 0 and "8760 replaced" in again.output
    assert count(home, "carbon_intensity") == 8760


def test_import_tariff_from_a_reopt_input(home, invoke, tmp_path):
    reopt = tmp_path / "reopt.json"
    reopt.write_text(json.dumps({"ElectricTariff": {"urdb_response": json.loads(URDB.read_text())}}))
    for path in (URDB, reopt):
        result = invoke("tariff", path)
        assert result.exit_code == 0, result.output
        assert "5 periods, USD/kWh 0.0712, 0.09368, 0.066, 0.08888, 0.1355" in result.output
        assert "valid 2015-06-01 to 2015-12-31" in result.output
    assert count(home, "tariff") == 2


def test_import_prices(home, invoke):
    result = invoke("prices", ENTSOE, "--series", "BE-DAM", "--currency", "EUR", "--tz", "Europe/Brussels")
    assert result.exit_code == 0, result.output
    assert "series 'BE-DAM': 22583 hours (0 replaced), 2021-12-31 23:00 to 2024-07-29 21:00 UTC" in result.output
    assert "3724 empty" in result.output
    assert count(home, "price_point") == 22_583


@pytest.mark.parametrize(("command", "content", "message"), [
    ("carbon", DE.read_text(encoding="utf-8").replace("12:00:00,Germany,Germany,DE,", "12:00:00,Germany,DE,", 1),
     "line 14"),
    ("tariff", URDB.read_text().replace('"energyweekdayschedule": [', '"energyweekdayschedule": [[0],', 1),
     "energyweekdayschedule"),
    ("tariff", "{not json", "Expecting property name"),
    ("prices", ENTSOE.read_text(encoding="utf-8").replace("13apr2024 06:00:00,", "13apr2024 06:00:00,abc"),
     "column dam_price"),
])
def test_a_malformed_file_exits_2_and_stores_nothing(home, invoke, tmp_path, command, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_text(content, encoding="utf-8")
    result = invoke(command, bad)
    assert result.exit_code == 2
    assert "cannot import, nothing stored" in result.output and message in result.output
    assert count(home, "carbon_intensity") + count(home, "tariff") + count(home, "price_point") == 0


def test_a_missing_file_exits_2(home, invoke, tmp_path):
    result = invoke("prices", tmp_path / "missing.csv")
    assert result.exit_code == 2 and "cannot import" in result.output


def test_the_real_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTLEDGER_")} | {"WATTLEDGER_HOME": str(tmp_path)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "workers.cli", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    assert run("migrate").returncode == 0
    assert run("import", "tariff", URDB).returncode == 0
    carbon = run("import", "carbon", DE)
    assert carbon.returncode == 0 and "8760 hours" in carbon.stdout
    (tmp_path / "bad.csv").write_text("time;DAM_price\n")
    bad = run("import", "prices", tmp_path / "bad.csv")
    assert bad.returncode == 2 and "line 1" in bad.stdout
