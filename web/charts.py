"""Server-rendered SVG charts (no script, no CDN): stacked minutes per lamp per day."""

from __future__ import annotations

import math
from datetime import date

from flask_babel import gettext
from markupsafe import Markup, escape

from web.words import number

# Distinguishable for common colour blindness (Okabe-Ito), all dark enough on white.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 10.0
    step = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * step:
            return m * step
    return 10 * step


def stacked_days_svg(days: list[date], series: list[tuple[str, dict[date, float]]], *, title: str) -> Markup:
    """Bars per day, one stacked segment per series; each segment carries a <title> tooltip.

    Words in the page's language; days as ISO dates (YYYY-MM-DD), as every admin page writes them."""
    width, height = 960, 320
    left, right, top, bottom = 56, 12, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(data.get(d, 0.0) for _, data in series) for d in days]
    # At least 10 minutes high, so a quiet month does not read as busy.
    ymax = max(10.0, _nice_max(max(totals, default=0.0)))
    slot = plot_w / max(1, len(days))
    bar_w = max(2.0, slot * 0.7)
    # Outside the f-strings, where pybabel finds them.
    axis = escape(gettext("minutes"))
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="16">'
    ]
    for i in range(5):
        value = ymax * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#bbb" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#222">{value:g}</text>')
    out.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" transform="rotate(-90 14 {top + plot_h / 2:.0f})" '
        f'text-anchor="middle" fill="#222">{axis}</text>'
    )
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for j, (name, data) in enumerate(series):
            minutes = data.get(day, 0.0)
            if minutes <= 0:
                continue
            h = plot_h * minutes / ymax
            tip = gettext("%(n)s min", n=number(round(minutes)))
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour(j)}">'
                f"<title>{escape(name)}, {day.isoformat()}: {escape(tip)}</title></rect>"
            )
        if i % 5 == 0 or i == len(days) - 1:
            # The last day ends at the plot's right edge: centred under its bar, an ISO date would be cut off.
            x_text, anchor = (width - right, "end") if i == len(days) - 1 else (left + i * slot + slot / 2, "middle")
            out.append(
                f'<text x="{x_text:.1f}" y="{height - bottom + 18}" text-anchor="{anchor}" '
                f'fill="#222">{day.isoformat()}</text>'
            )
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#222"/>')
    out.append("</svg>")
    return Markup("".join(out))
