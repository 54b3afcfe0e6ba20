"""The chargeback statement as a PDF a finance person can read: a summary page, charts, the
per-group tables, the method and factors, adjustments and the reconciliation.

It renders a statement dict (see `statements.py`) and computes nothing that the statement does
not already say, apart from unit conversions and the reconciliation sum it shows.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import HorizontalBarChart
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, PolyLine, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import KeepTogether, PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from .present import for_pdf

J_PER_KWH = Decimal(3_600_000)
MARGIN = 18 * mm
WIDTH = A4[0] - 2 * MARGIN
CHART_GROUPS = 12  # more groups than this fold into "others" in the bar charts
INK, ACCENT, CARBON = colors.HexColor("#1f2933"), colors.HexColor("#2b6cb0"), colors.HexColor("#2f855a")
_EQUAL = "idle energy is shared equally among groups"
IDLE_POLICIES = {"proportional": "idle energy is shared among groups in proportion to their own use",
                 "even": _EQUAL, "equal": _EQUAL, "none": "idle energy is not charged to groups",
                 "separate": "idle energy is reported on its own line, not charged to groups"}

_SHEET = getSampleStyleSheet()
BODY = ParagraphStyle("body", parent=_SHEET["BodyText"], fontSize=9.5, leading=13)
SMALL = ParagraphStyle("small", parent=BODY, fontSize=8, leading=10)
CELL_R = ParagraphStyle("cellr", parent=SMALL, alignment=2)
FIGURE = ParagraphStyle("figure", parent=BODY, fontSize=10.5, alignment=2)
H1 = ParagraphStyle("h1", parent=_SHEET["Title"], fontSize=18, leading=22, alignment=0, textColor=INK)
H2 = ParagraphStyle("h2", parent=_SHEET["Heading2"], fontSize=12.5, leading=16, textColor=INK, spaceBefore=8)


# -- formatting ---------------------------------------------------------------------------------

def _dec(value) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


def num(value, digits: int = 1, unit: str = "") -> str:
    """Thousands separators, fixed decimals, then the unit; a dash for a missing figure."""
    if (d := _dec(value)) is None:
        return "\u2014"
    return f"{d:,.{digits}f}" + (f" {unit}" if unit else "")


def _float(value) -> float | None:
    return None if (d := _dec(value)) is None else float(d)


def money(value, currency: str) -> str:
    return "\u2014" if _dec(value) is None else f"{currency} {num(value, 2)}"


def tonnes(grams) -> str:
    return "\u2014" if grams is None else f"{num(Decimal(grams) / 1_000_000, 3)} tCO<sub>2</sub>e"


def kg(grams) -> str:
    return "\u2014" if grams is None else num(Decimal(grams) / 1000, 1)


def si(value, unit: str) -> str:
    """1.23e18 FLOP → '1.23 EFLOP'."""
    d = _dec(value)
    if d is None:
        return "\u2014"
    for exponent, prefix in ((24, "Y"), (21, "Z"), (18, "E"), (15, "P"), (12, "T"), (9, "G"), (6, "M")):
        if abs(d) >= Decimal(10) ** exponent:
            return f"{d / Decimal(10) ** exponent:,.2f} {prefix}{unit}"
    return f"{d:,.0f} {unit}"


def period_name(period: str) -> str:
    try:
        return datetime.strptime(period, "%Y-%m").strftime("%B %Y")
    except (TypeError, ValueError):
        return str(period)


def p(text: str, style: ParagraphStyle = BODY) -> Paragraph:
    return Paragraph(text, style)


def cell(text: str) -> Paragraph:
    """A wrapping table cell for free text such as group names (escaped; long words split)."""
    return Paragraph(escape(str(text)), SMALL)


# -- tables -------------------------------------------------------------------------------------

def _table(rows: list[list], widths: list[float], total_row: bool = False, numeric_from: int | None = 1) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1, hAlign="LEFT")
    style = [("FONT", (0, 0), (-1, -1), "Helvetica", 8), ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e2e8f0")), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
             ("LINEBELOW", (0, 0), (-1, 0), 0.6, INK), ("TOPPADDING", (0, 0), (-1, -1), 2.5),
             ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7fafc")]),
             ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5)]
    if numeric_from is not None:
        style.append(("ALIGN", (numeric_from, 0), (-1, -1), "RIGHT"))
    if total_row:
        style += [("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 8), ("LINEABOVE", (0, -1), (-1, -1), 0.6, INK)]
    table.setStyle(TableStyle(style))
    return table


def _header(*labels: str, left: int = 1) -> list[Paragraph]:
    return [Paragraph(f"<b>{label}</b>", SMALL if i < left else CELL_R) for i, label in enumerate(labels)]


def charges_table(lines: list[dict], totals: dict, currency: str) -> Table:
    head = _header("Group", "GPU energy<br/>(kWh)", "Facility energy<br/>(kWh)", "of which idle<br/>(kWh)",
                   "GPU time<br/>(GPU-h)", f"Cost<br/>({currency})", "CO<sub>2</sub>e location<br/>(kg)",
                   "CO<sub>2</sub>e market<br/>(kg)")

    def row(name, line):
        return [name, num(line.get("energy_kwh")), num(line.get("facility_kwh")), num(line.get("idle_kwh")),
                num(line.get("gpu_hours")), num(line.get("cost"), 2), kg(line.get("co2e_location_g")),
                kg(line.get("co2e_market_g"))]

    rows = [head] + [row(cell(line.get("group", "?")), line) for line in lines] + [row("Total", totals)]
    return _table(rows, [0.22 * WIDTH] + [0.78 * WIDTH / 7] * 7, total_row=True)


def work_table(lines: list[dict], totals: dict) -> Table:
    head = _header("Group", "Useful work<br/>(FLOP)", "MFU<br/>(%)", "Efficiency<br/>(GFLOP/J)",
                   "Waste<br/>(kWh)", "Embodied CO<sub>2</sub>e<br/>(kg)", "Unpriced<br/>(kWh)",
                   "No carbon data<br/>(kWh)")

    def row(name, line):
        mfu, fpj = _dec(line.get("mfu")), _dec(line.get("flop_per_j"))
        return [name, si(line.get("flops"), "FLOP"), num(None if mfu is None else mfu * 100, 1),
                num(None if fpj is None else fpj / 10**9, 2), num(line.get("waste_kwh")),
                kg(line.get("embodied_co2e_g")), num(line.get("unknown_price_kwh")),
                num(line.get("unknown_location_carbon_kwh", line.get("unknown_carbon_kwh")))]

    rows = [head] + [row(cell(line.get("group", "?")), line) for line in lines] + [row("Total", totals)]
    return _table(rows, [0.22 * WIDTH] + [0.78 * WIDTH / 7] * 7, total_row=True)


# -- charts -------------------------------------------------------------------------------------

def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _folded(lines: list[dict], key: str) -> list[tuple[str, float]]:
    pairs = sorted(((str(ln.get("group", "?")), float(_dec(ln.get(key)) or 0)) for ln in lines), key=lambda kv: -kv[1])
    if len(pairs) > CHART_GROUPS:
        rest = pairs[CHART_GROUPS - 1:]
        pairs = pairs[: CHART_GROUPS - 1] + [(f"{len(rest)} others", sum(v for _, v in rest))]
    return pairs


def bar_chart(lines: list[dict], key: str, title: str, color, digits: int) -> Drawing:
    pairs = _folded(lines, key)[::-1]  # the chart draws bottom-up; largest on top
    width, label_w = WIDTH / 2 - 6, 92
    height = 44 + 20 * max(len(pairs), 1)
    drawing = Drawing(width, height)
    drawing.add(String(0, height - 12, title, fontName="Helvetica-Bold", fontSize=9, fillColor=INK))
    chart = HorizontalBarChart()
    chart.x, chart.y, chart.width, chart.height = label_w, 18, width - label_w - 44, height - 40
    chart.data = [[v for _, v in pairs] or [0]]
    chart.categoryAxis.categoryNames = [_short(n) for n, _ in pairs] or [""]
    chart.categoryAxis.labels.fontSize = 7
    chart.categoryAxis.labels.boxAnchor = "e"
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 6.5
    chart.valueAxis.labelTextFormat, chart.valueAxis.maximumTicks = _compact, 5
    chart.valueAxis.visibleGrid, chart.valueAxis.gridStrokeColor = 1, colors.HexColor("#e2e8f0")
    chart.bars[0].fillColor, chart.bars[0].strokeColor = color, None
    chart.barLabelFormat = lambda v: f"{v:,.{digits}f}"
    chart.barLabels.fontSize, chart.barLabels.boxAnchor, chart.barLabels.dx = 6.5, "w", 3
    drawing.add(chart)
    return drawing


def _compact(v: float) -> str:
    return f"{v / 1000:,.0f}k" if abs(v) >= 10_000 else f"{v:,.0f}"


def _series(points: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Contiguous runs without gaps, so a missing hour breaks the line rather than bridging it."""
    runs, run = [], []
    for x, y in points:
        if y is None:
            runs, run = (runs + [run] if run else runs), []
        else:
            run.append((x, y))
    return [r for r in runs + [run] if r] or [[(0.0, 0.0)]]


def _plot(points, x_max: float, x_steps, x_label, y, height, color, fill: bool) -> LinePlot:
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 46, y, WIDTH - 60, height
    plot.data = _series(points)
    for i in range(len(plot.data)):
        plot.lines[i].strokeColor, plot.lines[i].strokeWidth = color, 0.8
        if fill:
            plot.lines[i].inFill, plot.lines[i].fillColor = 2, colors.Color(color.red, color.green, color.blue, 0.35)
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax, plot.xValueAxis.valueSteps = 0, x_max, x_steps
    plot.xValueAxis.labelTextFormat, plot.xValueAxis.labels.fontSize = x_label, 7
    plot.yValueAxis.valueMin, plot.yValueAxis.labels.fontSize = 0, 7
    plot.yValueAxis.labelTextFormat = lambda v: f"{v:,.0f}"
    plot.yValueAxis.visibleGrid, plot.yValueAxis.gridStrokeColor = 1, colors.HexColor("#e2e8f0")
    return plot


def hourly_chart(hourly: list[dict]) -> Drawing:
    """Energy per hour above grid carbon intensity, on one shared time axis."""
    hours = [(datetime.fromisoformat(str(h["hour"]).replace("Z", "+00:00")), h) for h in hourly if h.get("hour")]
    hours.sort(key=lambda th: th[0])
    start = hours[0][0] if hours else datetime(2000, 1, 1)
    offset = [((t - start).total_seconds() / 3600, h) for t, h in hours]
    energy = [(x, _float(h.get("energy_kwh"))) for x, h in offset]
    carbon = [(x, _float(h.get("co2e_location_g_per_kwh"))) for x, h in offset]
    x_max = max((x for x, _ in offset), default=24.0) + 1
    steps = [d * 24.0 for d in range(0, int(x_max // 24) + 1, 5 if x_max > 24 * 10 else 1)]

    def day(v):
        return (start + timedelta(hours=v)).strftime("%d %b")

    drawing = Drawing(WIDTH, 370)
    drawing.add(String(0, 356, "GPU energy per hour (kWh)", fontName="Helvetica-Bold", fontSize=9, fillColor=INK))
    drawing.add(_plot(energy, x_max, steps, day, 205, 140, ACCENT, fill=True))
    drawing.add(String(0, 170, "Grid carbon intensity, location-based (gCO2e/kWh)", fontName="Helvetica-Bold",
                       fontSize=9, fillColor=INK))
    drawing.add(_plot(carbon, x_max, steps, day, 18, 140, CARBON, fill=False))
    drawing.add(String(WIDTH, 0, "hours in UTC", fontName="Helvetica", fontSize=6.5, fillColor=colors.grey,
                       textAnchor="end"))
    return drawing



# -- sections -----------------------------------------------------------------------------------

def summary(st: dict) -> list:
    t, cur = st.get("totals") or {}, st.get("currency", "USD")
    policy = str(st.get("idle_policy", "")).lower()
    final = st.get("status") == "final"
    status = "Final \u2014 immutable" if final else "Open \u2014 figures may still change"
    facts = [
        ["Period", period_name(st.get("period", ""))],
        ["Charged by", str(st.get("group_by", "group")).replace("_", " ")],
        ["Idle energy", IDLE_POLICIES.get(policy, policy or "\u2014").capitalize()],
        ["Status", status],
        ["Generated", str(st.get("generated_at", "\u2014"))],
    ]
    if final and st.get("content_hash"):
        facts.append(["Content hash", Paragraph(f'<font name="Courier" size="7.5">{escape(st["content_hash"])}</font>',
                                                SMALL)])
    figures = [
        ["Total cost", money(t.get("cost"), cur)],
        ["GPU energy", num(t.get("energy_kwh"), 1, "kWh")],
        ["Facility energy (incl. cooling, PUE)", num(t.get("facility_kwh"), 1, "kWh")],
        ["GPU time", num(t.get("gpu_hours"), 1, "GPU-hours")],
        ["Emissions, location-based", p(tonnes(t.get("co2e_location_g")), FIGURE)],
        ["Emissions, market-based", p(tonnes(t.get("co2e_market_g")), FIGURE)],
    ]
    if t.get("embodied_co2e_g") is not None:
        figures.append(["Embodied emissions (hardware, Scope 3)", p(tonnes(t["embodied_co2e_g"]), FIGURE)])
    fact_table = Table(facts, colWidths=[0.25 * WIDTH, 0.75 * WIDTH], hAlign="LEFT")
    fact_table.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), "Helvetica", 9.5),
                                    ("FONT", (0, 0), (0, -1), "Helvetica-Bold", 9.5),
                                    ("TEXTCOLOR", (1, 3), (1, 3), CARBON if final else colors.HexColor("#b7791f")),
                                    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (0, -1), 0)]))
    figure_table = Table(figures, colWidths=[0.6 * WIDTH, 0.4 * WIDTH], hAlign="LEFT")
    figure_table.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), "Helvetica", 10.5),
                                      ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 12),
                                      ("ALIGN", (1, 0), (1, -1), "RIGHT"), ("LEFTPADDING", (0, 0), (0, -1), 0),
                                      ("LINEBELOW", (0, 0), (-1, -1), 0.3, colors.HexColor("#cbd5e0")),
                                      ("BOTTOMPADDING", (0, 0), (-1, -1), 5), ("TOPPADDING", (0, 0), (-1, -1), 5)]))
    return [p(f"GPU energy chargeback \u2014 {escape(period_name(st.get('period', '')))}", H1), Spacer(1, 4),
            fact_table, p("Totals", H2), figure_table, p("In plain words", H2), p(plain_words(st))]


def plain_words(st: dict) -> str:
    t, cur, n = st.get("totals") or {}, st.get("currency", "USD"), st.get("groups", len(st.get("lines") or []))
    who = str(st.get("group_by", "group")).replace("_", " ")
    idle = IDLE_POLICIES.get(str(st.get("idle_policy", "")).lower(), "idle energy is treated as configured")
    text = (f"In {escape(period_name(st.get('period', '')))} the GPUs used {num(t.get('energy_kwh'), 0, 'kWh')}; "
            f"with cooling and power distribution the building drew {num(t.get('facility_kwh'), 0, 'kWh')}, "
            f"which cost {money(t.get('cost'), cur)}. That cost is charged to {n} {escape(who)}"
            f"{'s' if n != 1 else ''} by the energy their jobs used; {idle}. "
            f"The electricity caused {tonnes(t.get('co2e_location_g'))} judged by the grid's actual hour-by-hour "
            f"mix (location-based) and {tonnes(t.get('co2e_market_g'))} after the supplier contracts and "
            f"certificates we buy (market-based); both are reported, as the GHG Protocol asks. ")
    if st.get("status") == "final":
        return text + "This statement is final: it will not change, and data that arrives late is charged as an " \
                      "adjustment in a later period."
    return text + "This statement is still open: figures can change until the period is finalized."


def method(st: dict) -> list:
    m = st.get("method") or {}
    out = [p("Method and factors", H2)]
    for title, text in (m.get("texts") or {}).items():
        out.append(p(f"<b>{escape(title)}.</b> {escape(str(text))}"))
    factors = m.get("factors") or {}
    if factors:
        rows = [_header("Factor", "Value", left=2)] + [
            [cell(k), Paragraph(escape(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)), SMALL)]
            for k, v in sorted(factors.items())]
        out += [Spacer(1, 4), _table(rows, [0.3 * WIDTH, 0.7 * WIDTH], numeric_from=None)]
    return out


def adjustments(st: dict) -> list:
    adj, cur = st.get("adjustments") or [], st.get("currency", "USD")
    out = [p("Adjustments for earlier periods", H2)]
    if not adj:
        return out + [p("None: no late data changed an earlier, finalized period.")]
    rows = [_header("For period", "Group", "GPU energy (kWh)", f"Cost ({cur})", "CO<sub>2</sub>e location (kg)",
                    left=2)]
    rows += [[period_name(a.get("for_period", "")), cell(a.get("group", "?")), num(a.get("energy_kwh")),
              num(a.get("cost"), 2), kg(a.get("co2e_location_g"))] for a in adj]
    out.append(p("Late data for periods already finalized; these amounts are included in this period's charges.",
                 SMALL))
    return out + [Spacer(1, 3), _table(rows, [0.16 * WIDTH, 0.3 * WIDTH] + [0.18 * WIDTH] * 3, numeric_from=2)]


def reconciliation(st: dict) -> list:
    r = st.get("reconciliation") or {}
    parts = [("Used by the groups' jobs", r.get("lines_j")), (st.get("idle_label", "Idle"), r.get("idle_j")),
             ("Unattributed", r.get("unattributed_j"))]
    values = [_dec(v) for _, v in parts]
    metered = _dec(r.get("metered_j"))
    added = sum(values) if None not in values else None
    balanced = bool(r.get("balanced")) and added is not None and added == metered
    rows = [_header("Energy", "Joules (J)", "kWh")]
    rows += [[label, num(v, 0), num(None if v is None else v / J_PER_KWH, 3)] for label, v in zip(
        [label for label, _ in parts] + ["Sum", "Metered"], values + [added, metered], strict=True)]
    table = _table(rows, [0.4 * WIDTH, 0.35 * WIDTH, 0.25 * WIDTH])
    table.setStyle(TableStyle([("LINEABOVE", (0, 4), (-1, 4), 0.6, INK),
                               ("FONT", (0, 4), (-1, -1), "Helvetica-Bold", 8)]))
    if balanced:  # the tick is drawn: viewers substitute the Dingbats font unreliably
        tick = Drawing(12, 10)
        tick.add(PolyLine([1, 5, 4.5, 1.5, 11, 9.5], strokeColor=CARBON, strokeWidth=2))
        verdict = Table([[tick, p('<font color="#2f855a"><b>Balances:</b></font> jobs + idle + unattributed = '
                                  "metered, to the joule.")]], colWidths=[16, WIDTH - 16], hAlign="LEFT",
                        style=[("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LEFTPADDING", (0, 0), (-1, -1), 0)])
    else:
        verdict = p('<font color="red"><b>Does not balance:</b> jobs + idle + unattributed differ from the metered '
                    "energy. Do not invoice from this statement.</font>")
    return [KeepTogether([p("Reconciliation with the meters", H2), table, Spacer(1, 4), verdict])]


# -- document -----------------------------------------------------------------------------------

def _footer(st: dict):
    label = f"WattLedger chargeback \u00b7 {period_name(st.get('period', ''))} \u00b7 {st.get('status', 'open')}"

    def draw(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.grey)
        canvas.drawString(MARGIN, 10 * mm, label)
        canvas.drawRightString(A4[0] - MARGIN, 10 * mm, f"Page {doc.page}")
        canvas.restoreState()

    return draw


def render_pdf(statement: dict) -> bytes:
    """The statement as PDF bytes; identical statements give identical bytes (reportlab invariant mode)."""
    st, buf = for_pdf(statement), io.BytesIO()
    lines, totals, cur = st.get("lines") or [], st.get("totals") or {}, st.get("currency", "USD")
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                            bottomMargin=MARGIN, invariant=1, title=f"Chargeback statement {st.get('period', '')}",
                            author="WattLedger", creator="WattLedger", subject="GPU energy chargeback")
    charts = Table([[bar_chart(lines, "energy_kwh", "GPU energy by group (kWh)", ACCENT, 0),
                     bar_chart(lines, "cost", f"Cost by group ({cur})", colors.HexColor("#805ad5"), 0)]],
                   colWidths=[WIDTH / 2] * 2, hAlign="LEFT", style=[("VALIGN", (0, 0), (-1, -1), "TOP"),
                                                     ("LEFTPADDING", (0, 0), (-1, -1), 0)])
    story = summary(st) + [PageBreak(), p("Where the energy and money went", H2), charts, Spacer(1, 10),
                           p("Energy through the month against the grid's carbon intensity", H2),
                           hourly_chart(st.get("hourly") or []), PageBreak(),
                           p(f"Charges by {escape(str(st.get('group_by', 'group')))}", H2),
                           charges_table(lines, totals, cur), p("Useful work and efficiency", H2),
                           work_table(lines, totals)]
    story += method(st) + adjustments(st) + reconciliation(st)
    doc.build(story, onFirstPage=_footer(st), onLaterPages=_footer(st))
    return buf.getvalue()
