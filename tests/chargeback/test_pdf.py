"""The PDF statement: a month of a realistic statement rendered, rasterized with poppler's pdftoppm
and checked page by page for ink; the same statement gives the same bytes; awkward statements
(unbalanced, open, figures missing) still render."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from accounting.chargeback.pdf import render_pdf

LONG_NAME = "Applied research \u2014 long-horizon forecasting and simulation platform (EMEA, shared pool)"
GROUPS = [  # group, GPU kWh, GPU-hours, cost, location g, market g
    ("nlp", 48_210.4, 61_440.0, "14463.12", 15_910_000, 4_820_000),
    ("vision", 21_905.7, 30_720.0, "6571.71", 7_230_000, 2_190_000),
    (LONG_NAME, 9_312.9, 14_880.0, "2793.87", 3_070_000, 930_000),
]


def line(group: str, kwh: float, gpu_hours: float, cost: str, loc_g: int, mkt_g: int) -> dict:
    return {"group": group, "energy_kwh": kwh, "facility_kwh": round(kwh * 1.25, 1), "gpu_hours": gpu_hours,
            "cost": cost, "currency": "USD", "co2e_location_g": loc_g, "co2e_market_g": mkt_g,
            "embodied_co2e_g": int(gpu_hours * 21), "flops": int(kwh * 3.6e6 * 2.1e11), "mfu": 0.41,
            "flop_per_j": 2.1e11, "waste_kwh": round(kwh * 0.06, 1), "idle_kwh": round(kwh * 0.08, 1),
            "unknown_price_kwh": 0.0, "unknown_carbon_kwh": 12.5 if group == "vision" else 0.0}


def hourly() -> list[dict]:
    """31 × 24 hours of October: busier in working hours, a solar dip in carbon intensity at noon."""
    start = datetime(2026, 10, 1, tzinfo=UTC)
    out = []
    for h in range(31 * 24):
        hour_of_day = h % 24
        energy = 95 + 25 * math.sin(math.pi * (hour_of_day - 6) / 12) + (10 if (h // 24) % 7 < 5 else -15)
        intensity = 330 - 110 * math.cos(2 * math.pi * (hour_of_day - 1) / 24) + 20 * math.sin(h / 97)
        out.append({"hour": (start + timedelta(hours=h)).isoformat(), "energy_kwh": round(energy, 3),
                    "co2e_location_g_per_kwh": round(intensity, 1)})
    return out


def statement() -> dict:
    lines = [line(*g) for g in GROUPS]
    totals = {k: round(sum(ln[k] for ln in lines), 1) for k in ("energy_kwh", "facility_kwh", "gpu_hours",
                                                                 "waste_kwh", "idle_kwh", "unknown_price_kwh",
                                                                 "unknown_carbon_kwh")}
    totals |= {k: sum(ln[k] for ln in lines) for k in ("co2e_location_g", "co2e_market_g", "embodied_co2e_g", "flops")}
    totals |= {"cost": "23828.70", "currency": "USD", "mfu": 0.41, "flop_per_j": 2.1e11}
    idle_j = round(totals["idle_kwh"] * 3_600_000)  # the lines' energy includes their share of idle
    lines_j, unattributed_j = round(totals["energy_kwh"] * 3_600_000) - idle_j, 1_210_550_083
    return {
        "period": "2026-10", "group_by": "team", "idle_policy": "proportional", "status": "final",
        "generated_at": "2026-11-02T06:00:00+00:00", "content_hash": "sha256:" + "3f9a1c" * 10 + "beef",
        "currency": "USD", "lines": lines, "totals": totals, "hourly": hourly(),
        "reconciliation": {"lines_j": str(lines_j), "idle_j": str(idle_j), "unattributed_j": str(unattributed_j),
                           "metered_j": str(lines_j + idle_j + unattributed_j), "balanced": True},
        "adjustments": [{"for_period": "2026-09", "group": "nlp", "energy_kwh": 412.3, "cost": "118.40",
                         "co2e_location_g": 139_000}],
        "method": {"cost": "Facility kWh in each hour times that hour's time-of-use price (peak 0.34, off-peak "
                           "0.21 USD/kWh).",
                   "carbon_location": "Hourly grid intensity for zone DE from Electricity Maps exports.",
                   "carbon_market": "Supplier contract factor of 100 g/kWh; residual mix for the uncovered rest.",
                   "pue": "Site PUE 1.25, from the facility meter.",
                   "factors": {"pue": 1.25, "zone": "DE", "price_schedule": {"peak": "0.34", "off_peak": "0.21"},
                               "embodied_g_per_gpu_hour": 21}},
    }


def rasterize(pdf: bytes, folder: Path) -> list[Path]:
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm is missing: install Debian's poppler-utils (apt-get install -y poppler-utils)")
    source = folder / "statement.pdf"
    source.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(source), str(folder / "page")], check=True, timeout=120)
    return sorted(folder.glob("page-*.png"))


def ink(png: Path) -> float:
    """The share of pixels that are not near-white (by file size where Pillow is absent)."""
    try:
        from PIL import Image
    except ImportError:
        return 1.0 if png.stat().st_size > 8_000 else 0.0
    with Image.open(png) as image:
        grey = image.convert("L")
        dark = sum(count for value, count in enumerate(grey.histogram()) if value < 200)
        return dark / (grey.width * grey.height)


def test_a_month_renders_to_pages_with_ink(tmp_path):
    pdf = render_pdf(statement())
    assert pdf.startswith(b"%PDF")
    pages = rasterize(pdf, tmp_path)
    assert len(pages) >= 3
    for page in pages:
        assert ink(page) > 0.01, f"{page.name} looks blank"
    assert ink(pages[1]) > 0.04, "the charts page should carry bars and two filled/lined plots"


def test_the_same_statement_gives_the_same_bytes():
    assert render_pdf(statement()) == render_pdf(statement())


def test_unbalanced_open_and_sparse_statements_still_render(tmp_path):
    st = copy.deepcopy(statement())
    st["status"], st["reconciliation"]["balanced"] = "open", False
    st["reconciliation"]["metered_j"] = "1"
    st["adjustments"] = []
    del st["content_hash"], st["method"]
    for ln in st["lines"]:
        ln.update(co2e_market_g=None, flops=None, mfu=None, flop_per_j=None, waste_kwh=None)
    st["hourly"][5]["co2e_location_g_per_kwh"] = None  # a gap in the intensity series
    st["lines"] += [line(f"team-{i:02d}", 100.0 + i, 10.0, "30.00", 1000, 500) for i in range(40)]
    assert len(rasterize(render_pdf(st), tmp_path)) >= 4
    assert render_pdf({"period": "2026-10", "lines": [], "totals": {}}).startswith(b"%PDF")
