"""`wattledger report rebound`: the LMDI decomposition as a table, JSON or a chart file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlmodel import Session

from accounting import migrations
from accounting.analytics.chart import waterfall_svg
from accounting.analytics.service import EFFECTS, parse_period, rebound_report
from accounting.config import get_settings
from accounting.db import engine_for, make_engine
from accounting.demo.rebound import BASELINE, CURRENT, run_rebound_demo

LABELS = {"scale": "scale (useful work W)", "mix": "mix (share S across cohorts)",
          "utilization": "utilization (1/MFU)", "chip_intensity": "chip intensity (J per peak FLOP)",
          "no_work": "energy with no useful work"}


def _demo_session(console: Console) -> Session:
    home = Path(tempfile.mkdtemp(prefix="wattledger-rebound-"))
    url = f"sqlite:///{home / 'ledger.db'}"
    migrations.upgrade(url)
    session = Session(make_engine(url))
    with Progress(console=Console(stderr=True)) as progress:
        tasks = {name: progress.add_task(f"{name} quarter (simulated days)", total=91)
                 for name in ("baseline", "current")}
        run_rebound_demo(session, home / "spool",
                         on_day=lambda name, day: progress.update(tasks[name], completed=day))
    return session


def rebound(*, baseline: str | None, current: str | None, cohort: str | None, work: str, as_json: bool,
            chart: Path | None, demo: bool, console: Console) -> None:
    if demo:
        session = _demo_session(console)
        base = parse_period(baseline, "baseline") if baseline else BASELINE
        cur = parse_period(current, "current") if current else CURRENT
        cohort = cohort or "team"  # the same team in both quarters: the chip effect shows within it
    else:
        if not baseline or not current:
            raise ValueError("give --baseline FROM/TO and --current FROM/TO (or --demo)")
        session = Session(engine_for(get_settings().resolved_database_url))
        base, cur = parse_period(baseline, "baseline"), parse_period(current, "current")
        cohort = cohort or "gpu_model"
    with session:
        report = rebound_report(session, baseline=base, current=cur, cohort=cohort, work=work)
    if chart:
        chart.write_text(waterfall_svg(f"Energy change by effect ({cohort} cohorts)", report["baseline"]["energy_kwh"],
                                       {k: report["effects"][k] for k in EFFECTS if report["effects"][k]},
                                       report["current"]["energy_kwh"]))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _render(report, console)
    if chart:
        console.print(f"chart written to {chart}")


def _render(report: dict, console: Console) -> None:
    table = Table(title=f"Rebound: {report['baseline']['from'][:10]}…{report['baseline']['to'][:10]} → "
                        f"{report['current']['from'][:10]}…{report['current']['to'][:10]} ({report['cohort']} cohorts, "
                        f"work = {report['work']})")
    table.add_column("effect")
    table.add_column("kWh", justify="right")
    table.add_column("% of baseline", justify="right")
    for name in EFFECTS:
        pct = report["effects_pct"][name]
        table.add_row(LABELS[name], f"{report['effects'][name]:+,.1f}", "—" if pct is None else f"{pct:+.1f}")
    table.add_row("total change", f"{report['total_change_kwh']:+,.1f}",
                  "—" if report["total_change_pct"] is None else f"{report['total_change_pct']:+.1f}", style="bold")
    console.print(table)
    cohorts = Table(title="Cohorts")
    for column in ("cohort", "status", "baseline kWh", "current kWh", "baseline MFU", "current MFU",
                   "baseline J/peak PFLOP", "current J/peak PFLOP"):
        cohorts.add_column(column, justify="left" if column in ("cohort", "status") else "right")
    for row in report["cohorts"]:
        b, c = row["baseline"], row["current"]

        def f(v, fmt):
            return "—" if v is None else format(v, fmt)

        cohorts.add_row(row["cohort"], row["status"], f"{b['energy_kwh']:,.1f}", f"{c['energy_kwh']:,.1f}",
                        f(b["mfu"], ".3f"), f(c["mfu"], ".3f"),
                        f(b["j_per_peak_flop"] and b["j_per_peak_flop"] * 1e15, ".3g"),
                        f(c["j_per_peak_flop"] and c["j_per_peak_flop"] * 1e15, ".3g"))
    console.print(cohorts)
    for period in ("baseline", "current"):
        excluded = report[period]["excluded"]
        if excluded["jobs"]:
            console.print(f"{period}: {excluded['jobs']} jobs ({excluded['energy_kwh']:,.1f} kWh) left out: "
                          "their useful work or their GPUs' peak is unknown")
    console.print(report["summary"])
