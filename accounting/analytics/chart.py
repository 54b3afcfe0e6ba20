"""A waterfall chart of the rebound decomposition as a standalone SVG (no plotting library):
baseline energy, each effect as a rise or a fall, current energy."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, MARGIN = 720, 360, 60
RISE, FALL, TOTAL = "#c0392b", "#27ae60", "#34495e"


def waterfall_svg(title: str, baseline_kwh: float, effects_kwh: dict[str, float], current_kwh: float) -> str:
    """Bars: baseline, the effects in order (red up, green down), current; values in kWh."""
    steps: list[tuple[str, float, float, str]] = [("baseline", 0.0, baseline_kwh, TOTAL)]
    level = baseline_kwh
    for name, delta in effects_kwh.items():
        steps.append((name.replace("_", " "), level, level + delta, RISE if delta >= 0 else FALL))
        level += delta
    steps.append(("current", 0.0, current_kwh, TOTAL))
    top = max(max(a, b) for _, a, b, _ in steps) or 1.0
    bottom = min(0.0, min(min(a, b) for _, a, b, _ in steps))
    span = top - bottom or 1.0
    plot_h = HEIGHT - 2 * MARGIN
    bar_w = (WIDTH - 2 * MARGIN) / len(steps)

    def y(value: float) -> float:
        return MARGIN + (top - value) / span * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        f'font-size="12">',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>',
        f'<line x1="{MARGIN}" y1="{y(0):.1f}" x2="{WIDTH - MARGIN}" y2="{y(0):.1f}" stroke="#999"/>',
    ]
    for i, (label, a, b, color) in enumerate(steps):
        x = MARGIN + i * bar_w + bar_w * 0.15
        y_top, y_bottom = min(y(a), y(b)), max(y(a), y(b))
        value = b - a if label not in ("baseline", "current") else b
        sign = "+" if value > 0 and label not in ("baseline", "current") else ""
        parts += [
            f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w * 0.7:.1f}" height="{max(y_bottom - y_top, 1):.1f}" '
            f'fill="{color}"/>',
            f'<text x="{x + bar_w * 0.35:.1f}" y="{y_top - 4:.1f}" text-anchor="middle">{sign}{value:,.0f}</text>',
            f'<text x="{x + bar_w * 0.35:.1f}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">{escape(label)}</text>',
        ]
    parts.append(f'<text x="14" y="{HEIGHT / 2}" transform="rotate(-90 14 {HEIGHT / 2})" '
                 f'text-anchor="middle">energy (kWh)</text>')
    parts.append("</svg>")
    return "\n".join(parts)
