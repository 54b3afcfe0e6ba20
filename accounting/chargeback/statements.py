"""Chargeback statements: energy, money and carbon per group and UTC month, reconciled to the meter.

Cost and carbon are computed per (GPU, hour) ledger row, exactly (Fraction; kWh = mJ / 3.6e9), then
summed per line; money is rounded half-even to the cent once, at the line, in the site's currency.
Lines are kept apart per currency: a group at sites of two currencies has one line per currency.
An hour without a price or carbon factor is never taken as 0: the figure covers the known hours
only (null if none) and the facility kWh it leaves out is stated (`unknown_*`). Idle: `separate`
→ an "(idle)" line; `proportional` → each GPU-hour's idle energy (with its cost and carbon) split
over the groups that used that GPU in that hour by their energy, the rest on "(idle)"; `none` →
in no line. Reconciliation (mJ): group lines + idle outside them + unattributed = metered.
Adjustments: an open period P carries, for each finalized S in the unbroken run of finalized
periods just before P, recomputed S − finalized S − what finalized statements in between carried.
The exact sums and the SQL per (site, hour, model, group) are in lines.py; a past month's open
statement is cached until a change to what it reads commits (cache.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import sqlalchemy as sa
from sqlmodel import Session, select

from accounting.clock import Clock, to_datetime, to_us
from accounting.errors import Conflict, InvalidInput, NotFound
from accounting.jobs.models import Allocation
from accounting.ledger.attribution import split_weighted
from accounting.ledger.grouping import IDLE_GROUP, UNKNOWN, IdlePolicy
from accounting.ledger.models import LedgerEntry
from accounting.work.efficiency import collect, evaluate
from accounting.work.waste import Severity, judge

from .cache import Reads, cached
from .lines import MJ_PER_KWH, Factors, Line, cells
from .models import Site, Statement, Tariff

GROUPINGS = ("team", "project", "cost_center")
POLICIES = tuple(p.value for p in IdlePolicy)
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_TREATMENT = {"separate": "idle energy, with its cost and carbon, is its own line, '(idle)'",
              "proportional": "each GPU-hour's idle energy, with its cost and carbon, is split over the groups that "
                              "used that GPU in that hour by their energy; the rest stays on the '(idle)' line",
              "none": "idle energy is in no line; the reconciliation states it"}
_SUMMED = ("cost", "energy_kwh", "facility_kwh", "gpu_hours", "co2e_location_g", "co2e_market_g", "embodied_co2e_g")
_FIGURES = ("energy_mj", "facility_kwh", "cost", "co2e_location_g", "co2e_market_g", "embodied_co2e_g")


class StatementCorrupted(Conflict):
    """A stored final statement whose content no longer matches its hash (answered as 409)."""


def parse_period(period: str) -> tuple[datetime, datetime]:
    """"YYYY-MM" → [start, end) of that UTC month."""
    match = _PERIOD.match(period or "")
    if not match:
        raise InvalidInput("period", "give a month as YYYY-MM, e.g. 2026-10")
    year, month = int(match[1]), int(match[2])
    return datetime(year, month, 1, tzinfo=UTC), datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def shift_period(period: str, months: int) -> str:
    year, month = map(int, period.split("-"))
    index = year * 12 + month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def check_choices(group_by: str, idle_policy: str) -> None:
    if group_by not in GROUPINGS:
        raise InvalidInput("group_by", f"one of {', '.join(GROUPINGS)}")
    if idle_policy not in POLICIES:
        raise InvalidInput("idle_policy", f"one of {', '.join(POLICIES)}")


def canonical_hash(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _job_key(group_by: str, team: str, project: str | None, cost_center: str | None) -> str:
    return {"team": team, "project": project or UNKNOWN, "cost_center": cost_center or UNKNOWN}[group_by]


def _lines(session: Session, group_by: str, idle_policy: str, start: datetime, end: datetime,
           progress: Callable[[int, int], None] | None) -> tuple[dict, dict, Factors]:
    """(kind, group, currency) → its line, the idle outside lines (policy none), the factors used."""
    sites = {s.id: s for s in session.exec(select(Site)).all()}
    factors = Factors(session, sites, start, end)
    # Only `proportional` needs each GPU-hour apart (it spreads idle within one).
    by_cell = cells(session, group_by, start, end, per_gpu=idle_policy == "proportional")
    lines: dict[tuple, Line] = defaultdict(Line)
    idle_out = Line()  # idle in no line (policy none)
    for done, ((_, site_id, hour, model), accounts) in enumerate(sorted(by_cell.items(), key=_cell_order), 1):
        f = factors.at(site_id, hour, model)
        currency = sites[site_id].currency if site_id in sites else None
        idle_mj, idle_us = accounts.pop(("idle", IDLE_GROUP), (0, 0))
        users = {k: v[0] for k, v in accounts.items() if k[0] == "group" and v[0] > 0}
        for (kind, key), (energy_mj, gpu_us) in accounts.items():
            lines[(kind, key, currency)].add(energy_mj, gpu_us, Fraction(gpu_us), f)
        if idle_mj or idle_us:
            if idle_policy == "proportional" and users:
                keys = sorted(users)
                weight = sum(users.values())
                for k, part in zip(keys, split_weighted(idle_mj, [users[k] for k in keys]), strict=True):
                    line = lines[(*k, currency)]
                    line.add(part, 0, Fraction(idle_us * users[k], weight), f)
                    line.idle_mj += part
            elif idle_policy == "none":
                idle_out.add(idle_mj, idle_us, Fraction(idle_us), f)
            else:
                lines[("idle", IDLE_GROUP, currency)].add(idle_mj, idle_us, Fraction(idle_us), f)
                lines[("idle", IDLE_GROUP, currency)].idle_mj += idle_mj
        if progress:
            progress(done, len(by_cell))
    return lines, idle_out.out(), factors


def _cell_order(item: tuple) -> tuple:
    gpu_id, site_id, hour, model = item[0]
    return gpu_id or 0, hour, site_id or 0, model or ""


def _work_and_waste(session: Session, group_by: str, start: datetime, end: datetime, clock: Clock) -> dict:
    """Group → useful work, efficiency and waste, summed from the per-job figures (any grouping).
    The month's jobs are collected and evaluated once for both (efficiency_by per job and
    find_waste each did it alone; the per-job figures are the same, and so are the findings)."""
    usages = collect(session, to_us(start), to_us(end), now_us=clock.now_us(), by_hour=True)
    jobs = evaluate(session, usages)
    acc: dict = defaultdict(lambda: defaultdict(int))
    for e in jobs:
        a, f = acc[_job_key(group_by, e.job.team, e.job.project, e.job.cost_center)], e.figures
        if f.flops is not None:  # FLOP counts pass 2^53: summed as ints, never floats
            a["has_flops"], a["flops"], a["flops_j"] = 1, a["flops"] + f.flops, a["flops_j"] + f.energy_j
            if f.mfu is not None and f.capacity_flop:
                a["rated_flops"], a["capacity_flop"] = a["rated_flops"] + f.flops, a["capacity_flop"] + f.capacity_flop
        if f.tokens is not None:
            a["has_tokens"], a["tokens"], a["tokens_j"] = 1, a["tokens"] + f.tokens, a["tokens_j"] + f.energy_j
    key_of = {e.job.id: _job_key(group_by, e.job.team, e.job.project, e.job.cost_center) for e in jobs}
    for finding in judge(jobs):
        if finding.severity == Severity.waste:
            acc[key_of.get(finding.job_id, UNKNOWN)]["waste_j"] += finding.energy_at_stake_j
    return {key: {
        "flops": a["flops"] if a["has_flops"] else None,
        "mfu": a["rated_flops"] / a["capacity_flop"] if a["capacity_flop"] else None,
        "flop_per_j": a["flops"] / a["flops_j"] if a["has_flops"] and a["flops_j"] else None,
        "tokens": a["tokens"] if a["has_tokens"] else None,
        "tokens_per_j": a["tokens"] / a["tokens_j"] if a["has_tokens"] and a["tokens_j"] else None,
        "waste_kwh": round(a["waste_j"] / 3_600_000, 6),
    } for key, a in acc.items()}


def _method(session: Session, factors: Factors, idle_policy: str) -> dict:
    def site(s: Site) -> dict:
        tariff = session.get(Tariff, s.tariff_id) if s.tariff_id is not None else None
        return {"site": s.name, "timezone": s.timezone, "currency": s.currency, "pue": s.pue,
                "pue_by_month": s.pue_by_month, "grid_zone": s.grid_zone, "price_series": s.price_series,
                "flat_price_per_kwh": s.flat_price_per_kwh, "market_g_per_kwh": factors.carbon.market_g_per_kwh(s),
                "market_source": "contract" if s.contract_g_per_kwh is not None else "residual mix",
                "tariff": tariff and {"name": tariff.name, "source": tariff.source,
                                      "period_rates": tariff.period_rates}}

    return {
        "energy": "hourly ledger, integer mJ per (GPU, hour, account); 1 kWh = 3,600,000,000 mJ",
        "facility": "IT energy × PUE of the site's local month containing the hour (pue_by_month, else pue); "
                    "a GPU at no site: PUE 1, no price, no carbon",
        "cost": "Σ per (GPU, hour): facility kWh × the site's price that hour (hourly series, else time-of-use "
                "tariff in local time, else flat), exact; rounded half-even to the cent per line; per currency",
        "co2e_location": "Σ per (GPU, hour): facility kWh × the grid zone's hourly intensity (gCO2e/kWh)",
        "co2e_market": "facility kWh × the site's contractual factor, else its residual mix (gCO2e/kWh)",
        "embodied_co2e": "Scope 3, separate: GPU-hours × the GPU model's kg CO2e ÷ lifetime hours",
        "unknown": "an hour without a price or carbon factor is left out of that figure and its facility kWh "
                   "is stated (unknown_*); a figure with no known hour is null, never 0",
        "idle_policy": idle_policy, "idle_treatment": _TREATMENT[idle_policy],
        "useful_work": "efficiency_by per job over the month (FLOPs, MFU, FLOP/J, tokens); "
                       "waste_kwh: energy at stake of waste findings (find_waste)",
        "sites": [site(factors.sites[i]) for i in sorted(factors.used_sites)],
        "embodied_g_per_gpu_hour": {m: v for m, v in sorted(factors.embodied_cache.items(), key=str) if v is not None},
    }


def _core(session: Session, period: str, group_by: str, idle_policy: str, clock: Clock,
          progress: Callable[[int, int], None] | None = None) -> dict:
    start, end = parse_period(period)
    lines, idle_out, factors = _lines(session, group_by, idle_policy, start, end, progress)
    work = _work_and_waste(session, group_by, start, end, clock)
    out, order = [], {"group": 0, "idle": 1, "unattributed": 2}
    for (kind, key, currency), line in sorted(lines.items(),
                                              key=lambda i: (order[i[0][0]], -i[1].energy_mj, str(i[0][1:]))):
        w = work.get(key, {}) if kind == "group" else {}
        out.append({"kind": kind, "group": key, "currency": currency, **line.out(),
                    **{k: w.get(k) for k in ("flops", "mfu", "flop_per_j", "tokens", "tokens_per_j")},
                    "waste_kwh": w.get("waste_kwh", 0.0)})
    metered = session.execute(sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.energy_mj), 0))
                              .where(LedgerEntry.hour >= start, LedgerEntry.hour < end)).scalar_one()
    parts = {k: sum(x["energy_mj"] for x in out if x["kind"] == k) for k in ("group", "idle", "unattributed")}
    idle_mj = parts["idle"] + idle_out["energy_mj"]
    recon = {"lines_mj": parts["group"], "idle_mj": idle_mj, "unattributed_mj": parts["unattributed"],
             "metered_mj": int(metered), "balanced": parts["group"] + idle_mj + parts["unattributed"] == int(metered)}
    recon |= {k[:-3] + "_j": str(Decimal(v).scaleb(-3)) for k, v in list(recon.items()) if k.endswith("_mj")}
    return {"period": period, "group_by": group_by, "idle_policy": idle_policy, "lines": out,
            "totals": _totals(out), "idle_outside_lines": idle_out if idle_policy == "none" else None,
            "reconciliation": recon, "method": _method(session, factors, idle_policy)}


def _totals(lines: list[dict]) -> dict:
    """Per currency ("none": GPUs at no site): sums of the lines, costs as rounded on the lines."""
    totals: dict = {}
    for line in lines:
        t = totals.setdefault(line["currency"] or "none", dict.fromkeys(_SUMMED))
        for k in _SUMMED:
            if line[k] is not None:
                t[k] = str(Decimal(t[k] or 0) + Decimal(line[k])) if k == "cost" else round((t[k] or 0) + line[k], 6)
    return totals


def _figures(items: list[dict]) -> dict[tuple, dict]:
    """(kind, group, currency) → summed figures of lines or adjustments."""
    acc: dict[tuple, dict] = {}
    for x in items:
        a = acc.setdefault((x["kind"], x["group"], x["currency"]), dict.fromkeys(_FIGURES))
        for k in _FIGURES:
            if x.get(k) is not None:
                a[k] = (a[k] or 0) + (Decimal(x[k]) if k == "cost" else x[k])
    return acc


def _delta(figure: str, values: list) -> int | float | str | None:
    """recomputed − finalized − carried; None if none of them is known."""
    if all(v is None for v in values):
        return None
    now, old, done = ((v if v is not None else Decimal(0) if figure == "cost" else 0) for v in values)
    d = now - old - done
    return str(d) if figure == "cost" else d if figure == "energy_mj" else round(d, 6)


def _final_run(session: Session, period: str, group_by: str, idle_policy: str) -> tuple[dict, list[str]]:
    """The finalized statements before `period`, and the unbroken run of them just before it (latest first)."""
    finals = {s.period: s for s in session.exec(select(Statement).where(
        Statement.group_by == group_by, Statement.idle_policy == idle_policy, Statement.status == "final",
        Statement.period < period)).all()}
    run, s = [], shift_period(period, -1)
    while s in finals:
        run.append(s)
        s = shift_period(s, -1)
    return finals, run


def _adjustments(session: Session, period: str, group_by: str, idle_policy: str, clock: Clock) -> list[dict]:
    finals, run = _final_run(session, period, group_by, idle_policy)
    out = []
    for s in run:
        carried = [a for p in run if p > s for a in finals[p].content.get("adjustments", []) if a["for_period"] == s]
        now = _figures(_core(session, s, group_by, idle_policy, clock)["lines"])
        old, done = _figures(get_statement(session, finals[s].id).content["lines"]), _figures(carried)
        for key in sorted(set(now) | set(old) | set(done), key=lambda k: (k[0], k[1], k[2] or "")):
            delta = {k: _delta(k, [src.get(key, {}).get(k) for src in (now, old, done)]) for k in _FIGURES}
            if any(v is not None and Decimal(str(v)) != 0 for v in delta.values()):
                delta["energy_kwh"] = round(delta["energy_mj"] / MJ_PER_KWH, 6)
                out.append({"for_period": s, "kind": key[0], "group": key[1], "currency": key[2], **delta})
    return out


def _reads(session: Session, period: str, group_by: str, idle_policy: str) -> Reads:
    """What a statement depends on: its month's hours and those of the finalized months its
    adjustments recompute. Months are UTC (parse_period) and so are the ledger's, price and
    carbon hours: a site's time zone picks its PUE month and tariff hour of a UTC hour, which are
    site and tariff data (any change to them counts for all time), so no margin is needed.
    Clock-bound: a job with an open allocation ran then (its life, and so its share of its
    reported work in the month, grows with now)."""
    start, end = parse_period(period)
    run = _final_run(session, period, group_by, idle_policy)[1]
    if run:
        start = parse_period(run[-1])[0]
    a, b = Allocation.__table__, Allocation.__table__.alias("b")
    clock_bound = session.execute(sa.select(sa.exists().where(
        a.c.end_at.is_(None), sa.exists().where(b.c.job_id == a.c.job_id, b.c.start_at < end)))).scalar_one()
    return Reads(start, end, bool(clock_bound))


def build_statement(session: Session, *, period: str, group_by: str, idle_policy: str, clock: Clock,
                    progress: Callable[[int, int], None] | None = None, status: str = "open") -> dict:
    """The statement of a UTC month, JSON-ready; `progress(done, total)` is called per GPU-hour."""
    check_choices(group_by, idle_policy)

    def compute() -> tuple[dict, Reads]:
        content = _core(session, period, group_by, idle_policy, clock, progress) | {
            "adjustments": _adjustments(session, period, group_by, idle_policy, clock)}
        return content, _reads(session, period, group_by, idle_policy)

    ended = parse_period(period)[1] <= to_datetime(clock.now_us())
    content = cached(session, ("statement", period, group_by, idle_policy), compute) if ended else compute()[0]
    return content | {"status": status, "generated_at": to_datetime(clock.now_us()).isoformat()}


def final_statement(session: Session, *, period: str, group_by: str, idle_policy: str) -> Statement | None:
    return session.exec(select(Statement).where(
        Statement.period == period, Statement.group_by == group_by, Statement.idle_policy == idle_policy,
        Statement.status == "final")).first()


def finalize(session: Session, *, period: str, group_by: str, idle_policy: str, clock: Clock) -> Statement:
    """Store the period's statement as final (idempotent: a second call returns the stored one)."""
    check_choices(group_by, idle_policy)
    parse_period(period)
    if (existing := final_statement(session, period=period, group_by=group_by, idle_policy=idle_policy)) is not None:
        return existing
    content = build_statement(session, period=period, group_by=group_by, idle_policy=idle_policy, clock=clock,
                              status="final")
    statement = Statement(period=period, group_by=group_by, idle_policy=idle_policy, status="final", content=content,
                          content_hash=canonical_hash(content), finalized_at=to_datetime(clock.now_us()))
    session.add(statement)
    session.flush()
    return statement


def get_statement(session: Session, statement_id: int) -> Statement:
    """A stored statement, its hash verified; never recomputed."""
    statement = session.get(Statement, statement_id)
    if statement is None:
        raise NotFound("statement", statement_id)
    if canonical_hash(statement.content) != statement.content_hash:
        raise StatementCorrupted(f"statement {statement_id}: content does not match its hash")
    return statement


CSV_COLUMNS = ("for_period", "kind", "group", "currency", *Line().out(), "flops", "mfu", "flop_per_j", "tokens",
               "tokens_per_j", "waste_kwh")


def to_csv(statement: dict) -> str:
    """One row per line, then one per adjustment (for_period set); units in the header names,
    cost in the row's currency."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS]
                     for row in statement["lines"] + statement.get("adjustments", []))
    return buffer.getvalue()
