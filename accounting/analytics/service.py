"""The rebound report: two periods of the ledger → cohorts → the LMDI decomposition, in kWh
and percent, with the per-cohort table and a plain-language summary. One shape for the REST
answer and the CLI's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session

from accounting.errors import InvalidInput

from .cohorts import PeriodCohorts, WorkMeasure, cohorts_for, parse_cohort
from .rebound import CohortPeriod, Decomposition, decompose, summary

J_PER_KWH = 3.6e6
EFFECTS = ("scale", "mix", "utilization", "chip_intensity", "no_work")


def parse_period(text: str, field: str) -> tuple[datetime, datetime]:
    """"2025-01-01/2025-04-01" or full ISO-8601 times with zones; dates are UTC midnight."""
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidInput(field, "give FROM/TO, e.g. 2025-01-01/2025-04-01")
    try:
        start, end = (datetime.fromisoformat(p.strip().replace("Z", "+00:00")) for p in parts)
    except ValueError as exc:
        raise InvalidInput(field, f"not an ISO-8601 date or time: {exc}") from exc
    if start.tzinfo is None and "T" in parts[0] or end.tzinfo is None and "T" in parts[1]:
        raise InvalidInput(field, "give times a zone, e.g. 2025-01-01T00:00:00Z")
    start, end = (d if d.tzinfo else d.replace(tzinfo=UTC) for d in (start, end))
    if end <= start:
        raise InvalidInput(field, "TO must be after FROM")
    return start, end


def _period_json(p: CohortPeriod) -> dict:
    return {"energy_kwh": p.energy_j / J_PER_KWH, "work": p.work, "capacity_flop": p.capacity, "share": p.share,
            "mfu": p.utilization, "j_per_peak_flop": p.j_per_peak_flop}


def _excluded(p: PeriodCohorts) -> dict:
    return {"jobs": p.excluded_jobs, "energy_kwh": p.excluded_energy_j / J_PER_KWH}


def rebound_report(session: Session, *, baseline: tuple[datetime, datetime], current: tuple[datetime, datetime],
                   cohort: str = "gpu_model", work: str = "flops") -> dict:
    try:
        measure = WorkMeasure(work)
    except ValueError as exc:
        raise InvalidInput("work", "flops or tokens") from exc
    parts = parse_cohort(cohort)
    base = cohorts_for(session, start=baseline[0], end=baseline[1], cohort=parts, work=measure)
    cur = cohorts_for(session, start=current[0], end=current[1], cohort=parts, work=measure)
    d: Decomposition = decompose(base.cohorts, cur.cohorts, work=measure.value)
    base_kwh = d.baseline_energy_j / J_PER_KWH
    return {
        "baseline": {"from": baseline[0].isoformat(), "to": baseline[1].isoformat(), "energy_kwh": base_kwh,
                     "jobs": base.jobs, "excluded": _excluded(base), "flops_by_provenance": base.provenance},
        "current": {"from": current[0].isoformat(), "to": current[1].isoformat(),
                    "energy_kwh": d.current_energy_j / J_PER_KWH, "jobs": cur.jobs, "excluded": _excluded(cur),
                    "flops_by_provenance": cur.provenance},
        "cohort": cohort, "work": measure.value,
        "total_change_kwh": d.total_change_j / J_PER_KWH,
        "total_change_pct": 100 * d.total_change_j / d.baseline_energy_j if d.baseline_energy_j else None,
        "effects": {name: d.effects_j.get(name, 0.0) / J_PER_KWH for name in EFFECTS},
        "effects_pct": {name: (100 * d.effects_j.get(name, 0.0) / d.baseline_energy_j if d.baseline_energy_j else None)
                        for name in EFFECTS},
        "ratios": d.ratios, "total_ratio": d.total_ratio,
        "cohorts": [{"cohort": row.key, "status": row.status, "baseline": _period_json(row.baseline),
                     "current": _period_json(row.current),
                     "effects_kwh": {k: v / J_PER_KWH for k, v in row.effects_j.items()}} for row in d.rows],
        "summary": summary(d),
        "units": {"*_kwh": "kWh", "work": "FLOP" if measure == WorkMeasure.flops else "token",
                  "capacity_flop": "peak FLOP (peak FLOP/s × allocated s)", "j_per_peak_flop": "J per peak FLOP",
                  "effects_pct": "percent of the baseline's energy"},
    }
