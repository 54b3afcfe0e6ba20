"""The `wattledger` command: demo, up, migrate, worker, sampler, api."""

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
    try:
        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
    finally:
        stop.set()
        sampler_thread.join(15)
        stop_process(worker_proc)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
