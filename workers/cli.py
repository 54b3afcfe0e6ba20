"""The `wattledger` command: demo, up, migrate, worker, sampler, api, keys, report, import."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from accounting import migrations
from accounting.config import get_settings

from . import cli_imports

app = typer.Typer(help="WattLedger: GPU energy accounting, every joule attributed.", no_args_is_help=True,
                  add_completion=False)
console = Console()


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    home: Annotated[Path | None, typer.Option(help="Keep the demo's database here (default: a temp dir).")] = None,
) -> None:
    """Run a 3-hour simulated scenario through the real pipeline and compare with ground truth."""
    from .demo import main

    raise typer.Exit(main(home, as_json))


@app.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    console.print(f"database at head: {settings.resolved_database_url}")


@app.command()
def worker(
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler in this process.")] = False,
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = "ingest,maintenance",
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 2,
) -> None:
    """Start a Celery ingest worker (production process)."""
    from .celery_app import app as celery_app

    argv = ["worker", "-Q", queues, "--concurrency", str(concurrency), "--loglevel", "INFO"]
    if beat:
        argv.append("--beat")
    celery_app.worker_main(argv)


@app.command()
def sampler() -> None:
    """Start the node sampler (NVML, or the simulated fleet where there is no GPU)."""
    from .sampler import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(get_settings())


@app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
) -> None:
    """Serve the REST API (production process)."""
    import uvicorn

    from api.main import create_app

    settings = get_settings()
    uvicorn.run(create_app(settings), host=host or settings.api_host, port=port or settings.api_port)


@app.command()
def up() -> None:
    """Run API + worker + beat + sampler together for local use."""
    import uvicorn

    from api.main import create_app

    from .processes import start_worker, stop_process
    from .sampler import run as run_sampler

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    key = first_admin_key(settings.resolved_database_url)
    env = {"WATTLEDGER_HOME": str(settings.home.resolve()),
           "WATTLEDGER_DATABASE_URL": settings.resolved_database_url,
           "WATTLEDGER_BROKER_URL": settings.resolved_broker_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    worker_proc = start_worker(env, settings.home / "worker.log", beat=True)
    stop = threading.Event()
    sampler_thread = threading.Thread(target=run_sampler, args=(settings, stop), name="sampler", daemon=True)
    sampler_thread.start()
    url = f"http://{settings.api_host}:{settings.api_port}"
    console.print(f"WattLedger is up: API {url}  (docs {url}/docs)  database {settings.resolved_database_url}")
    console.print(f"worker log: {settings.home / 'worker.log'}; Ctrl-C stops everything")
    if key:
        typer.echo(f"API key: {key}")
        console.print("  an admin key, made on this first start and shown only now: keep it. Send it as "
                      "`Authorization: Bearer <key>`; `wattledger keys create` makes more.")
    else:
        console.print("an admin API key exists already (`wattledger keys list`); "
                      "`wattledger keys create --role admin` makes another")
    try:
        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
    finally:
        stop.set()
        sampler_thread.join(15)
        stop_process(worker_proc)


def first_admin_key(database_url: str) -> str | None:
    """An admin key when the database has no usable one (a first start), else None."""
    from sqlmodel import Session

    from accounting.auth.service import create_key, has_active_admin
    from accounting.clock import SystemClock
    from accounting.db import engine_for

    with Session(engine_for(database_url)) as session:
        if has_active_admin(session):
            return None
        _, key = create_key(session, role="admin", name="first start of wattledger up", clock=SystemClock())
        session.commit()
    return key


keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keys_session():
    from sqlmodel import Session

    from accounting.db import engine_for

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    return Session(engine_for(settings.resolved_database_url), expire_on_commit=False)


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="admin, finance, team or agent.")],
    team: Annotated[str | None, typer.Option(help="The team a team key sees (required for --role team).")] = None,
    name: Annotated[str | None, typer.Option(help="A label: who or what holds the key.")] = None,
) -> None:
    """Make an API key and print it once; only its SHA-256 is stored."""
    from accounting.auth.service import create_key
    from accounting.clock import SystemClock
    from accounting.errors import InvalidInput

    with _keys_session() as session:
        try:
            row, key = create_key(session, role=role, team=team, name=name, clock=SystemClock())
        except InvalidInput as exc:
            console.print(f"[red]no key made:[/red] --{exc.field}: {exc.message}")
            raise typer.Exit(2) from exc
        session.commit()
    typer.echo(f"API key: {key}")
    console.print(f"key id {row.key_id}, role {row.role}" + (f", team {row.team}" if row.team else "") +
                  ". [yellow]It is not shown again:[/yellow] only its hash is stored.")


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, role, team, name, when made and revoked (never the key itself)."""
    from rich.table import Table

    from accounting.auth.service import list_keys

    with _keys_session() as session:
        rows = list_keys(session)
    table = Table(title=f"API keys ({len(rows)})")
    for column in ("key id", "role", "team", "name", "created", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.key_id, r.role, r.team or "", r.name or "", f"{r.created_at:%Y-%m-%d %H:%M}Z",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}Z" if r.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id `keys list` shows.")]) -> None:
    """Revoke a key: the API refuses it (401) from the next request on."""
    from accounting.auth.service import revoke
    from accounting.clock import SystemClock
    from accounting.errors import NotFound

    with _keys_session() as session:
        try:
            row = revoke(session, key_id, clock=SystemClock())
        except NotFound as exc:
            console.print(f"[red]cannot revoke:[/red] {exc}")
            raise typer.Exit(1) from exc
        session.commit()
    console.print(f"revoked {row.key_id} ({row.role}) at {row.revoked_at:%Y-%m-%d %H:%M:%S}Z")


report_app = typer.Typer(help="Reports from the ledger.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("rebound")
def report_rebound(
    baseline: Annotated[str | None, typer.Option(help="FROM/TO, e.g. 2025-01-01/2025-04-01 (UTC dates).")] = None,
    current: Annotated[str | None, typer.Option(help="FROM/TO of the period to compare.")] = None,
    cohort: Annotated[str | None, typer.Option(
        help="gpu_model (default), team, project, or a combination such as team,gpu_model.")] = None,
    work: Annotated[str, typer.Option(help="flops (training) or tokens (inference fleets).")] = "flops",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    chart: Annotated[Path | None, typer.Option(help="Also write a waterfall chart (SVG) here.")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Run on the demo scenario (7B on A100s, then 70B on "
                                       "H200s), on embedded defaults.")] = False,
) -> None:
    """Where newer chips' efficiency went: the energy change split into scale, mix, MFU and chip effects."""
    from accounting.errors import InvalidInput

    from .report import rebound

    try:
        rebound(baseline=baseline, current=current, cohort=cohort, work=work, as_json=as_json, chart=chart,
                demo=demo, console=console)
    except (InvalidInput, ValueError) as exc:
        console.print(f"[red]cannot report:[/red] {exc}")
        raise typer.Exit(2) from exc


@report_app.command("chargeback")
def report_chargeback_cmd(
    period: Annotated[str, typer.Option(help="The UTC month, YYYY-MM.")],
    group_by: Annotated[str, typer.Option(help="team, project or cost_center.")] = "team",
    idle_policy: Annotated[str, typer.Option(help="separate, proportional or none.")] = "separate",
    fmt: Annotated[str, typer.Option("--format", help="json, csv or pdf.")] = "json",
    out: Annotated[Path | None, typer.Option(help="Write here (a PDF needs it); default stdout.")] = None,
) -> None:
    """The month's chargeback statement: the final one if stored, else the open one."""
    from accounting.errors import AccountingError

    from .report_chargeback import report_chargeback

    try:
        report_chargeback(period, group_by, idle_policy, fmt, out, Console(stderr=out is None))
    except (AccountingError, ValueError) as exc:
        console.print(f"[red]cannot report:[/red] {exc}")
        raise typer.Exit(2) from exc


import_app = typer.Typer(help="Import jobs (sacct), grid carbon intensity, tariffs and prices.", no_args_is_help=True)
app.add_typer(import_app, name="import")
cli_imports.register(import_app, console)


@import_app.command("sacct")
def import_sacct_cmd(
    file: Annotated[Path, typer.Argument(help="`sacct --parsable2` output with its header line; - reads stdin.",
                                         allow_dash=True)],
    node_gpus: Annotated[str | None, typer.Option(
        "--node-gpus", help='Each node\'s GPU UUIDs in nvidia-smi index order: JSON {"gpu-node01": ["GPU-…", …]} '
        "or a file holding it. Without it, jobs are only finished, never created.")] = None,
    tz: Annotated[str, typer.Option(help="The zone sacct printed its times in (run it with TZ=UTC).")] = "UTC",
) -> None:
    """Register Slurm jobs the prolog missed and finish those with an End; importing again changes nothing."""
    import sys
    from zoneinfo import ZoneInfoNotFoundError

    from pydantic import TypeAdapter, ValidationError
    from sqlmodel import Session

    from accounting.clock import SystemClock
    from accounting.db import engine_for
    from accounting.jobs.sacct import gpus_from_node_map, parse_sacct
    from accounting.jobs.sacct import import_sacct as run_import

    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        raw_map = node_gpus if not node_gpus or node_gpus.lstrip().startswith("{") else Path(node_gpus).read_text()
        node_map = TypeAdapter(dict[str, list[str]]).validate_json(raw_map) if raw_map else {}
        jobs = parse_sacct(text, tz=tz)
    except (OSError, ValueError, ValidationError, ZoneInfoNotFoundError) as exc:
        console.print(f"[red]cannot import:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings = get_settings()
    with Session(engine_for(settings.resolved_database_url)) as session:
        report = run_import(session, jobs, gpu_uuids_for=gpus_from_node_map(node_map), clock=SystemClock())
        session.commit()
    console.print(f"created {report.created}, finished {report.finished}, already known {report.skipped_existing}, "
                  f"without GPUs {report.skipped_no_gpus}, not started {report.skipped_not_started}")
    for error in report.errors:
        console.print(f"[yellow]skipped[/yellow] {error}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
