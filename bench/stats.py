"""Latency figures the benchmarks print: counts, rate, nearest-rank p50/p99, errors."""

from __future__ import annotations

import math
from collections import defaultdict

from rich.console import Console
from rich.table import Table


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Latencies:
    """Per-name latencies (s) and errors, with a few error messages kept to show."""

    def __init__(self, keep_errors: int = 5) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.failed: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []
        self.keep_errors = keep_errors

    def add(self, name: str, seconds: float, error: str | None = None) -> None:
        self.seconds[name].append(seconds)
        if error is not None:
            self.failed[name] += 1
            if len(self.samples) < self.keep_errors:
                self.samples.append(f"{name}: {error}")

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.seconds.values())

    @property
    def errors(self) -> int:
        return sum(self.failed.values())

    def rows(self, wall_s: float) -> list[dict]:
        """One row per name, then 'all': requests, per_s, p50_ms, p99_ms, max_ms, errors."""
        everything = sorted(s for v in self.seconds.values() for s in v)
        named = [(n, sorted(v), self.failed[n]) for n, v in sorted(self.seconds.items())]
        rows = []
        for name, values, errors in [*named, ("all", everything, self.errors)]:
            rows.append({"name": name, "requests": len(values), "per_s": len(values) / wall_s if wall_s else 0.0,
                         "p50_ms": 1e3 * percentile(values, 50), "p99_ms": 1e3 * percentile(values, 99),
                         "max_ms": 1e3 * (values[-1] if values else math.nan), "errors": errors})
        return rows


def render_latencies(stats: Latencies, wall_s: float, console: Console, *, title: str) -> None:
    table = Table(title=title)
    for column in ("endpoint", "requests", "requests/s", "p50 (ms)", "p99 (ms)", "max (ms)", "errors"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    rows = stats.rows(wall_s)
    for row in rows:
        style = "bold" if row["name"] == "all" else None
        table.add_row(row["name"], f"{row['requests']:,}", f"{row['per_s']:,.1f}", f"{row['p50_ms']:.1f}",
                      f"{row['p99_ms']:.1f}", f"{row['max_ms']:.1f}",
                      f"[red]{row['errors']}[/]" if row["errors"] else "0", style=style, end_section=row is rows[-2])
    console.print(table)
    for sample in stats.samples:
        console.print(f"[red]error[/] {sample}")
