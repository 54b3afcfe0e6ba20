"""The Grafana dashboards: every panel's SQL, with Grafana's macros and template variables expanded
the way Grafana's PostgreSQL data source does, runs on the migrated schema with seeded data and
returns the columns its panel uses; datasources resolve to the provisioned one; layouts are sound."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from accounting.clock import US_PER_S, FakeClock, to_datetime
from accounting.gpu.specs import SPECS
from accounting.jobs.models import JobCreate
from accounting.jobs.service import create_job, finish_job
from accounting.ledger.ingest import ingest_batch
from accounting.work.models import WorkReportCreate
from accounting.work.service import record_work
from tests.conftest import T0_US, truncate_all

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
EXPECTED = {"fleet", "job", "efficiency", "rebound", "chargeback", "waste"}
H = 3600 * US_PER_S
M = 60 * US_PER_S
RANGE = (to_datetime(T0_US), to_datetime(T0_US + 2 * H))  # the dashboards' time range in the test


# ---------------------------------------------------------------- Grafana's macros

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000}


def interval_ms(text: str) -> int:
    match = re.fullmatch(r"\s*'?(\d+)(ms|s|m|h|d|w|y)'?\s*", text)
    assert match, f"not a Grafana interval: {text!r}"
    return int(match[1]) * _UNITS_MS[match[2]]


def _args(sql: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the macro call whose "(" is at `start`, and the end."""
    depth, args, current = 0, [], ""
    for i in range(start, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return [a for a in args if a], i + 1
        elif ch == "," and depth == 1:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    raise AssertionError(f"unclosed macro call in {sql[start : start + 60]!r}")


def expand(sql: str, *, start: datetime, end: datetime, interval: str, variables: dict[str, str]) -> str:
    """Grafana's PostgreSQL macros (grafana-postgresql-datasource macros.go) and template variables."""
    iso = lambda t: "'" + t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"  # noqa: E731
    frm, to = iso(start), iso(end)
    # variables first: ${name}, ${name:raw}, $name (longest names first), then the interval built-ins
    for name in sorted(variables, key=len, reverse=True):
        sql = re.sub(r"\$\{" + name + r"(?::\w+)?\}|\$" + name + r"\b", variables[name], sql)
    sql = sql.replace("$__interval_ms", str(interval_ms(interval)))
    out, i = "", 0
    pattern = re.compile(r"\$__(\w+)\(")
    while (m := pattern.search(sql, i)) is not None:
        out += sql[i : m.start()]
        args, i = _args(sql, m.end() - 1)
        args = [interval if a == "$__interval" else a for a in args]
        name = m[1]
        if name == "timeFilter":
            out += f"{args[0]} BETWEEN {frm} AND {to}"
        elif name == "timeFrom":
            out += frm
        elif name == "timeTo":
            out += to
        elif name in ("timeGroup", "timeGroupAlias"):
            seconds = interval_ms(args[1]) // 1000
            out += f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            if name == "timeGroupAlias":
                out += ' AS "time"'
        elif name == "unixEpochFilter":
            out += f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
        else:
            raise AssertionError(f"macro $__{name} is not expanded by this test")
    out += sql[i:]
    out = out.replace("$__interval", f"'{interval}'")
    assert "$" not in re.sub(r"'[^']*'", "", out), f"unexpanded $ in {out!r}"
    return out


def grafana_interval(panel: dict) -> str:
    """$__interval for a 2 h range at ~1000 px: 1m, raised to the panel's min interval."""
    minimum = panel.get("interval")
    return minimum if minimum and interval_ms(minimum) > interval_ms("1m") else "1m"


# ---------------------------------------------------------------- the checks


def provisioned_datasource() -> tuple[str, str]:
    text = (GRAFANA / "provisioning" / "datasources" / "wattledger.yaml").read_text()
    uid = re.search(r"^\s+uid:\s*(\S+)", text, re.M)
    kind = re.search(r"^\s+type:\s*(\S+)", text, re.M)
    assert uid and kind
    return uid[1], kind[1]


def used_columns(panel: dict) -> set[str]:
    """The columns the panel refers to by name (field overrides), plus "time" for time series."""
    names = {
        o["matcher"]["options"]
        for o in panel.get("fieldConfig", {}).get("overrides", [])
        if o["matcher"]["id"] == "byName"
    }
    if any(t.get("format") == "time_series" for t in panel["targets"]):
        names.add("time")
    return names


def check_panel(connection: sa.Connection, panel: dict, variables: dict[str, str]) -> list[str]:
    problems = []
    for target in panel["targets"]:
        sql = expand(
            target["rawSql"], start=RANGE[0], end=RANGE[1], interval=grafana_interval(panel), variables=variables
        )
        try:
            with connection.begin_nested():
                result = connection.execute(sa.text(sql.replace(":", r"\:")))
                columns, rows = list(result.keys()), result.fetchall()
        except sa.exc.DBAPIError as error:
            problems.append(f"panel {panel['title']!r}: {str(error.orig).splitlines()[0]}")
            continue
        missing = used_columns(panel) - set(columns)
        if missing:
            problems.append(f"panel {panel['title']!r}: no column {sorted(missing)} (got {columns})")
        if not rows:
            problems.append(f"panel {panel['title']!r}: no rows")
        if target["format"] == "time_series":
            values = [c for c in columns if c not in ("time", "metric")]
            if not values or columns[0] != "time":
                problems.append(f"panel {panel['title']!r}: a time series needs time first and a value column")
            elif rows and all(r[columns.index(v)] is None for r in rows for v in values):
                problems.append(f"panel {panel['title']!r}: every value is NULL")
    return problems


def variable_values(connection: sa.Connection, dashboard: dict) -> dict[str, str]:
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        assert var["type"] == "query", var["name"]
        sql = expand(var["query"], start=RANGE[0], end=RANGE[1], interval="1m", variables=values)
        result = connection.execute(sa.text(sql))
        assert {"__text", "__value"} <= set(result.keys())
        rows = result.mappings().fetchall()
        assert rows, f"variable {var['name']} has no options"
        values[var["name"]] = str(rows[0]["__value"])
    return values


def load(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- seeded data


def _intervals(
    uuid: str, start_us: int, minutes: int, watts: float, util: int, tensor: float | None, processes: list | None = None
) -> list[dict]:
    return [
        {
            "uuid": uuid,
            "start_us": start_us + k * M,
            "end_us": start_us + (k + 1) * M,
            "energy_mj": int(watts * 60_000),
            "power_mw": int(watts * 1000),
            "method": "counter",
            "gpu_util_pct": util,
            "tensor_active_pct": tensor,
            "sm_active_pct": tensor,
            "processes": processes or [],
        }
        for k in range(minutes)
    ]


@pytest.fixture(scope="module")
def seeded(pg_engine: sa.Engine) -> sa.Engine:
    """Two hours, two GPUs (H100, A100), three jobs, work reports, a site with prices and carbon, a statement.

    Hour 1: train-a (nlp) on the A100 for 50 min, then an unknown process; idle-c (nlp, training, no work,
    no activity) holds the H100. Hour 2: both GPUs idle for 20 min, then train-b (vision) on both."""
    truncate_all(pg_engine)
    clock = FakeClock(T0_US + 3 * H)
    h100, a100 = "GPU-h100-graf", "GPU-a100-graf"
    with Session(pg_engine) as db:

        def job(ext, uuids, start, end, team, **extra):
            created = create_job(
                db,
                JobCreate(
                    external_id=ext, team=team, gpu_uuids=uuids, started_at=to_datetime(start), kind="training", **extra
                ),
                clock=clock,
            )
            finish_job(db, created.id, to_datetime(end), clock=clock)
            return created.id

        a = job("train-a", [a100], T0_US, T0_US + 50 * M, "nlp")
        job("idle-c", [h100], T0_US, T0_US + H, "nlp")
        b = job("train-b", [h100, a100], T0_US + H + 20 * M, T0_US + 2 * H, "vision")
        stray = [{"pid": 4242, "sm_pct": 50.0, "job_key": "slurm:999", "user": "bob"}]
        batches = [
            (
                "n1",
                "NVIDIA H100 80GB HBM3",
                h100,
                _intervals(h100, T0_US, 80, 70, 0, 0.0) + _intervals(h100, T0_US + H + 20 * M, 40, 600, 98, 60.0),
            ),
            (
                "n2",
                "NVIDIA A100-SXM4-80GB",
                a100,
                _intervals(a100, T0_US, 50, 350, 95, None)
                + _intervals(a100, T0_US + 50 * M, 10, 200, 50, None, stray)
                + _intervals(a100, T0_US + H, 20, 55, 0, None)
                + _intervals(a100, T0_US + H + 20 * M, 40, 380, 97, None),
            ),
        ]
        for seq, (node, name, uuid, intervals) in enumerate(batches):
            ingest_batch(
                db,
                {
                    "version": 1,
                    "node": node,
                    "seq": seq,
                    "gpus": [{"uuid": uuid, "name": name, "index": 0}],
                    "intervals": intervals,
                    "events": [],
                },
                clock=clock,
            )
        record_work(
            db,
            a,
            WorkReportCreate(key="a1", flops=4 * 10**17, tokens=10**9, at=to_datetime(T0_US + 30 * M)),
            clock=clock,
        )
        record_work(
            db,
            b,
            WorkReportCreate(key="b1", flops=15 * 10**17, tokens=2 * 10**9, at=to_datetime(T0_US + H + 40 * M)),
            clock=clock,
        )
        conn = db.connection()
        conn.execute(
            sa.text(
                "INSERT INTO site (name, timezone, pue, grid_zone, currency, flat_price_per_kwh, price_series) "
                "VALUES ('fra1', 'Europe/Berlin', 1.2, 'DE', 'EUR', '0.20', 'de-da')"
            )
        )
        conn.execute(sa.text("UPDATE gpu SET site_id = (SELECT id FROM site WHERE name = 'fra1')"))
        for k in range(2):
            hour = to_datetime(T0_US + k * H)
            conn.execute(
                sa.text(
                    "INSERT INTO carbon_intensity (zone, hour, direct_g_per_kwh, estimated) "
                    "VALUES ('DE', :h, :g, false)"
                ),
                {"h": hour, "g": 350.0 + 10 * k},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO price_point (series, hour, price_per_kwh, currency) VALUES ('de-da', :h, :p, 'EUR')"
                ),
                {"h": hour, "p": f"0.{15 + k}"},
            )
        conn.execute(
            sa.text(
                "INSERT INTO statement (period, group_by, idle_policy, status, content, content_hash, finalized_at) "
                "VALUES ('2025-07', 'team', 'separate', 'final', '{}', :hash, :at)"
            ),
            {"hash": "0" * 64, "at": to_datetime(T0_US + 3 * H)},
        )
        db.commit()
    yield pg_engine
    truncate_all(pg_engine)


# ---------------------------------------------------------------- tests


def test_every_dashboard_exists_and_is_grafana_json():
    assert {p.stem for p in DASHBOARDS} == EXPECTED
    uids = set()
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["schemaVersion"] >= 36 and dashboard["title"] and dashboard["panels"]
        assert dashboard["uid"] not in uids and len(dashboard["uid"]) <= 40
        uids.add(dashboard["uid"])
    provider = (GRAFANA / "provisioning" / "dashboards" / "wattledger.yaml").read_text()
    assert "type: file" in provider and "path:" in provider


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_datasources_resolve_to_the_provisioned_one(path):
    uid, kind = provisioned_datasource()
    dashboard = load(path)
    refs = [p["datasource"] for p in dashboard["panels"]]
    refs += [t["datasource"] for p in dashboard["panels"] for t in p["targets"] if "datasource" in t]
    refs += [v["datasource"] for v in dashboard.get("templating", {}).get("list", []) if "datasource" in v]
    for ref in refs:
        assert ref == {"type": kind, "uid": uid}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panel_ids_unique_and_positions_not_overlapping(path):
    panels = load(path)["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"]) for p in panels]
    for x, y, w, h in boxes:
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 24
    for i, (x1, y1, w1, h1) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1 :]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, (panels[i]["title"], boxes)


def test_peak_values_in_sql_match_the_spec_catalog():
    """Panels needing MFU carry a VALUES list of peaks (the DB has none): it must equal specs.py."""
    pattern = re.compile(
        r"\('([^']+)', ([\d.]+)e12::float8, (NULL|[\d.]+e12)::float8, ([\d.]+)::float8, ([\d.]+)::float8\)"
    )
    seen = 0
    for path in DASHBOARDS:
        for panel in load(path)["panels"]:
            for target in panel["targets"]:
                rows = pattern.findall(target["rawSql"])
                if not rows:
                    continue
                seen += 1
                assert {r[0] for r in rows} == set(SPECS)
                for model, bf16, fp8, tdp, idle in rows:
                    spec = SPECS[model]
                    assert (
                        float(bf16) == spec.peak_bf16_tflops and float(tdp) == spec.tdp_w and float(idle) == spec.idle_w
                    )
                    assert (fp8 == "NULL") == (spec.peak_fp8_tflops is None)
                    if fp8 != "NULL":
                        assert float(fp8[:-3]) == spec.peak_fp8_tflops
    assert seen > 0


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_query_runs_and_returns_its_columns(seeded, path):
    dashboard = load(path)
    with seeded.connect() as connection:
        variables = variable_values(connection, dashboard)
        problems = [problem for panel in dashboard["panels"] for problem in check_panel(connection, panel, variables)]
    assert problems == []


def test_the_check_catches_a_missing_column_and_an_empty_result(seeded):
    panel = load(GRAFANA / "dashboards" / "fleet.json")["panels"][0]
    wrong = json.loads(json.dumps(panel))
    wrong["fieldConfig"]["overrides"][0]["matcher"]["options"] = "power_kw"
    empty = json.loads(json.dumps(panel))
    empty["targets"][0]["rawSql"] = panel["targets"][0]["rawSql"].replace("WHERE", "WHERE false AND", 1)
    broken = json.loads(json.dumps(panel))
    broken["targets"][0]["rawSql"] = panel["targets"][0]["rawSql"].replace("s.energy_mj", "s.energy_j", 1)
    with seeded.connect() as connection:
        assert check_panel(connection, panel, {}) == []
        assert "no column ['power_kw']" in check_panel(connection, wrong, {})[0]
        assert check_panel(connection, empty, {})[-1].endswith("no rows")
        assert "energy_j" in check_panel(connection, broken, {})[0]


def test_macro_expansion_follows_grafana():
    start, end = datetime(2025, 7, 26, 22, tzinfo=UTC), datetime(2025, 7, 27, tzinfo=UTC)
    sql = expand(
        "SELECT $__timeGroupAlias(t.at, $__interval), x FROM t WHERE $__timeFilter(t.at) AND id = ${job} "
        "AND $__timeFrom() < $__timeTo() AND $__unixEpochFilter(e) AND $job > 0 LIMIT $__interval_ms",
        start=start,
        end=end,
        interval="1h",
        variables={"job": "7"},
    )
    assert sql == (
        'SELECT floor(extract(epoch from t.at)/3600)*3600 AS "time", x FROM t WHERE t.at BETWEEN '
        "'2025-07-26T22:00:00Z' AND '2025-07-27T00:00:00Z' AND id = 7 AND '2025-07-26T22:00:00Z' < "
        "'2025-07-27T00:00:00Z' AND e >= 1753567200 AND e <= 1753574400 AND 7 > 0 LIMIT 3600000"
    )
