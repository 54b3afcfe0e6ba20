"""Seeding the query benchmark's database in its stored form, with PostgreSQL COPY: GPUs on nodes at
two sites, the planned jobs (bench.seed_plan) and their allocations, the hourly ledger they imply,
unattributed detail, work reports, and raw samples for the retained window only.

Simulating a month of 1,000 GPUs through the sampler and the ingest would take hours; the ledger
is what the queries under test read, so it is written directly, row for row as the ingest writes
it (one row per GPU × hour × account, method exclusive or power-integral). Samples: 1,000 GPUs ×
14 days at 1 Hz would be 1.2 billion rows, too many for a benchmark run, so the seed keeps the
last `sample_days` days of the window at one reading per `sample_s` seconds, and marks older
hours as expired on each GPU (samples_expired_before), as retention does.

Sites, tariff, prices and carbon come from shared/data through the project's importers. The
files end before the benchmark's month, so the Belgian day-ahead prices of 2023 and the German
(DE) and British (GB) grid intensities of 2023/2024 are imported with their year changed to the
benchmark's year (same month, day and hour; the weekdays differ).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from accounting.chargeback.carbon import import_electricitymaps_csv
from accounting.chargeback.models import EmbodiedCarbon
from accounting.chargeback.prices import import_price_csv, import_urdb
from accounting.chargeback.sites import SiteCreate, create_site
from accounting.demo.scenario import SHARED_DATA
from accounting.gpu.specs import SPECS

from .seed_plan import GPUS_PER_NODE, IDLE, UNATTRIBUTED, US_PER_MIN, Plan, gpu_minutes, has_gpm, hour_rows

SOURCE = "bench-query"
SITES = (  # even nodes at the first, odd nodes at the second
    {"name": "bench-eu", "timezone": "Europe/Brussels", "pue": 1.25, "grid_zone": "DE", "currency": "EUR",
     "price_series": "BE-day-ahead", "residual_mix_g_per_kwh": 420.0},
    {"name": "bench-us", "timezone": "America/Los_Angeles", "pue": 1.4, "grid_zone": "GB", "currency": "USD",
     "contract_g_per_kwh": 150.0},
)
EMBODIED_KG = {"H100 SXM": 2_000.0, "A100 SXM": 1_500.0, "H200 SXM": 2_200.0}  # kg CO2e, 5-year life


def _ts(moment: datetime) -> str:
    return moment.isoformat(sep=" ")


def _copy(session: Session, table: str, columns: tuple[str, ...], lines: list[str]) -> None:
    """COPY text-format lines (tab-separated, \\N for NULL) into a table over the session's connection."""
    raw = session.connection().connection.driver_connection
    names = ", ".join('"' + c + '"' for c in columns)  # quoted: "user" is a keyword
    statement = f"COPY {table} ({names}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        buffer = io.StringIO()
        for n, line in enumerate(lines, 1):
            buffer.write(line)
            buffer.write("\n")
            if n % 100_000 == 0:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def _shifted(text: str, old: str, new: str, *, stata: bool) -> str:
    """Keep the header and the rows of year `old`, with the year changed to `new`."""
    lines = text.splitlines()
    if stata:  # 01jan2023 00:00:00
        rows = [line[:5] + new + line[9:] for line in lines[1:] if line[5:9] == old]
    else:  # 2023-01-01 00:00:00
        rows = [new + line[4:] for line in lines[1:] if line.startswith(old) and not line[5:10] == "02-29"]
    return "\n".join([lines[0], *rows]) + "\n"


def seed_factors(session: Session, year: int) -> list[int]:
    """The tariff, the price and carbon series (moved to `year`), embodied carbon, the two sites;
    returns the site ids."""
    import json

    tariff = import_urdb(session, json.loads((SHARED_DATA / "urdb_SCE_GS-2-TOU-B_commercial_2015.json").read_text()))
    prices = (SHARED_DATA / "entsoe_BE_day_ahead_prices_2022-2024_EUR_per_kWh.csv").read_text(encoding="utf-8")
    import_price_csv(session, _shifted(prices, "2023", str(year), stata=True), series="BE-day-ahead",
                     currency="EUR", tz="Europe/Brussels")
    for zone, source_year in (("DE", "2023"), ("GB", "2024")):
        text = (SHARED_DATA / f"electricitymaps_{zone}_{source_year}_hourly.csv").read_text(encoding="utf-8")
        import_electricitymaps_csv(session, _shifted(text, source_year, str(year), stata=False))
    session.add_all([EmbodiedCarbon(gpu_model=m, kg_co2e=kg, lifetime_hours=5 * 8_760)
                     for m, kg in EMBODIED_KG.items()])
    ids = []
    for site in SITES:
        extra = {"tariff_id": tariff.id} if site["currency"] == "USD" else {}
        ids.append(create_site(session, SiteCreate(**site, **extra)).id)
    return ids


def seed_gpus_and_jobs(session: Session, p: Plan, start: datetime, site_ids: list[int], samples_from: datetime,
                       now: datetime) -> None:
    """GPUs (ids 1…), jobs (ids 1…) and their allocations, with explicit ids and the sequences set after."""
    gpus = []
    for g in range(p.gpus):
        node, model = g // GPUS_PER_NODE, p.model_of(g)
        gpus.append("\t".join((str(g + 1), f"GPU-bench-{g:05d}", SPECS[model].nvml_name, model,
                               f"bench-q-node-{node:03d}", str(g % GPUS_PER_NODE), _ts(start), _ts(now),
                               _ts(samples_from), str(site_ids[node % len(site_ids)]))))
    _copy(session, "gpu", ("id", "uuid", "name", "model", "node", "index", "first_seen_at", "last_seen_at",
                           "samples_expired_before", "site_id"), gpus)
    jobs, allocations = [], []
    for job in p.jobs:
        began, ended = start + timedelta(minutes=job.start_min), start + timedelta(minutes=job.end_min)
        params = "7000000000" if job.kind == "training" else "\\N"
        jobs.append("\t".join((str(job.index + 1), job.name, SOURCE, job.team, f"{job.team}-{job.kind}",
                               f"cc-{job.team}", f"user{job.index % 50}", job.kind, params, "bf16",
                               _ts(began), _ts(ended), _ts(began))))
        allocations.extend("\t".join((str(job.index + 1), str(g + 1), _ts(began), _ts(ended))) for g in job.gpus)
    _copy(session, "job", ("id", "external_id", "source", "team", "project", "cost_center", "user", "kind",
                           "model_parameters", "precision", "started_at", "ended_at", "created_at"), jobs)
    _copy(session, "allocation", ("job_id", "gpu_id", "start_at", "end_at"), allocations)
    for table in ("gpu", "job"):
        session.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"(SELECT max(id) FROM {table}))"))


def _activity(model: str, gpu_us: int, busy_us: int, holder: int) -> tuple[str, ...]:
    """util_known_us, busy_us, gpm_known_us, sm_active_us, tensor_active_us, dram_active_us."""
    if not has_gpm(model):
        return str(gpu_us), str(busy_us), "0", "0", "0", "0"
    busy = busy_us / gpu_us if gpu_us else 0.0
    tensor = 0.0 if holder < 0 else 0.45 * busy
    return (str(gpu_us), str(busy_us), str(gpu_us), str(round(gpu_us * 0.8 * busy)), str(round(gpu_us * tensor)),
            str(round(gpu_us * 0.3 * busy)))


def seed_ledger(session: Session, p: Plan, start: datetime, sample_from_min: int, sample_s: int,
                progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """The ledger rows of every GPU-hour, unattributed detail, and samples from `sample_from_min`;
    returns (ledger rows, samples)."""
    by_gpu: dict[int, list] = {}
    for job in p.jobs:
        for g in job.gpus:
            by_gpu.setdefault(g, []).append(job)
    hours = [_ts(start + timedelta(hours=h)) for h in range(p.hours)]
    ledger, detail, samples, count, sample_count = [], [], [], 0, 0
    per_sample = max(1, sample_s // 60)
    for g in range(p.gpus):
        model, minutes = p.model_of(g), gpu_minutes(p, g, by_gpu.get(g, []))
        for row in hour_rows(minutes):
            method = "power-integral" if row.hour in minutes.estimated_hours else "exclusive"
            account = {IDLE: "idle", UNATTRIBUTED: "unattributed"}.get(row.holder, f"job:{row.holder + 1}")
            job_id = "\\N" if row.holder < 0 else str(row.holder + 1)
            ledger.append("\t".join((str(g + 1), hours[row.hour], account, job_id, method, str(row.energy_mj),
                                     str(row.gpu_us), *_activity(model, row.gpu_us, row.busy_us, row.holder))))
            if row.holder == UNATTRIBUTED:
                detail.append("\t".join((str(g + 1), hours[row.hour], str(40_000 + g), "nobody", str(row.energy_mj))))
        for m in range(sample_from_min, p.minutes, per_sample):
            energy = int(minutes.energy_mj[m:m + per_sample].sum())
            method = "power-integral" if m // 60 in minutes.estimated_hours else "counter"
            util = round(int(minutes.busy_us[m:m + per_sample].sum()) * 100 / (per_sample * US_PER_MIN))
            samples.append("\t".join((str(g + 1), _ts(start + timedelta(minutes=m)),
                                      _ts(start + timedelta(minutes=m + per_sample)), str(energy), method,
                                      str(energy // (per_sample * 60)), str(util))))
        if len(ledger) >= 200_000 or g == p.gpus - 1:
            _copy(session, "ledger_entry", ("gpu_id", "hour", "account", "job_id", "method", "energy_mj", "gpu_us",
                                            "util_known_us", "busy_us", "gpm_known_us", "sm_active_us",
                                            "tensor_active_us", "dram_active_us"), ledger)
            _copy(session, "sample", ("gpu_id", "start_at", "end_at", "energy_mj", "method", "power_mw",
                                      "gpu_util_pct"), samples)
            count, sample_count = count + len(ledger), sample_count + len(samples)
            ledger, samples = [], []
        if progress:
            progress(g + 1)
    _copy(session, "unattributed_use", ("gpu_id", "hour", "pid", "user", "energy_mj"), detail)
    return count, sample_count


def seed_work_reports(session: Session, p: Plan, start: datetime, now: datetime, share: float = 0.3) -> int:
    """One reported total per job for `share` of the jobs: FLOPs of training jobs at their MFU,
    tokens of inference jobs."""
    rng, lines = random.Random(p.seed), []
    for job in p.jobs:
        if rng.random() >= share:
            continue
        run_s = (job.end_min - job.start_min) * 60
        at = _ts(start + timedelta(minutes=job.end_min))
        if job.mfu is not None:
            peak = SPECS[p.model_of(job.gpus[0])].peak_bf16_flops
            flops, tokens = str(round(job.mfu * peak * len(job.gpus) * run_s)), "\\N"
        else:
            flops, tokens = "\\N", str(run_s * rng.randrange(200, 2_000))
        lines.append("\t".join((str(job.index + 1), "seed-total", flops, tokens, at, "reported", _ts(now))))
    _copy(session, "work_report", ("job_id", "key", "flops", "tokens", "at", "provenance", "received_at"), lines)
    return len(lines)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
