"""`wattledger report chargeback`: the month's statement (final if stored, else open) as JSON, CSV or PDF."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlmodel import Session

from accounting.chargeback.statements import build_statement, final_statement, get_statement, to_csv
from accounting.clock import SystemClock
from accounting.config import get_settings
from accounting.db import engine_for

FORMATS = ("json", "csv", "pdf")


def render(statement: dict, fmt: str) -> bytes:
    if fmt == "json":
        return (json.dumps(statement, indent=2) + "\n").encode()
    if fmt == "csv":
        return to_csv(statement).encode()
    if fmt == "pdf":
        try:
            from accounting.chargeback.pdf import render_pdf
        except ImportError as exc:
            raise ValueError("PDF statements are not available: accounting.chargeback.pdf cannot be imported") from exc
        return render_pdf(statement)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}")


def report_chargeback(period: str, group_by: str, idle_policy: str, fmt: str, out: Path | None,
                      console: Console) -> None:
    """Write the statement to `out` (or stdout; a PDF needs --out), with a progress bar over the
    month's GPU-hours on stderr. Raises InvalidInput / ValueError on bad input."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
    if fmt == "pdf" and out is None:
        raise ValueError("a PDF needs --out FILE")
    with Session(engine_for(get_settings().resolved_database_url)) as session:
        stored = final_statement(session, period=period, group_by=group_by, idle_policy=idle_policy)
        if stored is not None:
            statement = get_statement(session, stored.id).content
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task(f"{period} GPU-hours", total=None)


                def advance(done: int, total: int) -> None:
                    if done % 1000 == 0 or done == total:  # a million GPU-hours: don't redraw per hour
                        progress.update(task, completed=done, total=total)

                statement = build_statement(session, period=period, group_by=group_by, idle_policy=idle_policy,
                                            clock=SystemClock(), progress=advance)
    data = render(statement, fmt)
    if out is None:
        print(data.decode(), end="")
        return
    out.write_bytes(data)
    balanced = "balanced" if statement["reconciliation"]["balanced"] else "NOT balanced"
    console.print(f"{statement['status']} statement for {period} ({group_by}, idle {idle_policy}): "
                  f"{len(statement['lines'])} lines, reconciliation {balanced}; written to {out}")
