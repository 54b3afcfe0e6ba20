"""`python -m bench <name> [options]`: the benchmarks, one subcommand each (`--help` lists them)."""

from __future__ import annotations

import typer

from .accuracy import accuracy
from .api_load import api_load
from .ingest_copy import ingest_vs_copy
from .ingest_load import ingest_load
from .query import query
from .sampler_cost import sampler_cost
from .scale_out import scale_out

app = typer.Typer(help="WattLedger benchmarks: each bounded in time, each prints its figures.",
                  no_args_is_help=True, add_completion=False)
app.command("api-load", help="The real API on loopback under a read/write mix: requests/s, p50/p99 latency, "
            "errors.")(api_load)
app.command("ingest-load", help="Sampler batches at a steady rate through Redis into real Celery workers: "
            "readings/s ingested, lag p50/p99, exactly-once.")(ingest_load)
app.command("ingest-vs-copy", help="End-to-end ingest (Redis backlog → real Celery workers → ledger) vs PostgreSQL "
            "COPY of the same sample rows, same run: readings/s of each and the ratio.")(ingest_vs_copy)
app.command("accuracy", help="Per-job energy error vs truth on a bursty simulated fleet: the counter-based "
            "ledger vs power polling at 1/5/15/30 s, per sensor kind.")(accuracy)
app.command("scale-out", help="S sampler processes keep Redis full; 1, 2 … W Celery workers ingest into "
            "PostgreSQL: readings/s, speed-up, CPU of workers and PostgreSQL, exactly-once.")(scale_out)
app.command("query", help="A month's chargeback and job energy over HTTP on a fleet seeded by COPY (default "
            "1,000 GPUs × 30 days): median/p95/max ms vs the 250 ms and 20 ms targets.")(query)
app.command("sampler-cost", help="CPU per GPU reading in our code, and a real sampler process's CPU % at 1 Hz "
            "on 8 simulated GPUs.")(sampler_cost)

# The argparse scripts keep their own options (and their own --help).
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("alibaba-replay", context_settings=PASS_THROUGH, add_help_option=False)
def alibaba_replay(ctx: typer.Context) -> None:
    """The Alibaba GPU trace replayed in process on SQLite: per-job error vs truth (own --help)."""
    from . import alibaba_replay as script

    raise typer.Exit(script.main(ctx.args))


@app.command("nvml-check", context_settings=PASS_THROUGH, add_help_option=False)
def nvml_check(ctx: typer.Context) -> None:
    """On a real GPU node: the NVML energy counter vs integrated power (own --help)."""
    from . import nvml_check as script

    raise typer.Exit(script.main(ctx.args))


if __name__ == "__main__":
    app()
