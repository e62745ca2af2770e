"""Charts as inline SVG text: line charts over time with shaded incident bands, and horizontal bar charts.

No JavaScript, no fonts to fetch, no CDN: the HTML report opens offline and prints as it shows.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Band", "Series", "bar_chart", "line_chart", "nice_ticks"]

FONT = "font-family='system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif'"


@dataclass(frozen=True, slots=True)
class Series:
    """One line: a name for the legend, points (x, y) and a colour."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class Band:
    """A shaded stretch of the x axis (an incident)."""

    start: float
    end: float
    label: str
    color: str = "#f97316"


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high`."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.1f}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    bands: Sequence[Band] = (),
    y_label: str = "",
    x_label: str = "seconds into the run",
    width: int = 960,
    height: int = 280,
    chart_id: str = "",
    x_end: float | None = None,
) -> str:
    """An SVG line chart; x and y start at 0 (x runs to at least `x_end`, so charts of one run line up)."""
    left, right, top, bottom = 64, 16, 34, 46
    inner_w, inner_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points] + [b.end for b in bands] + ([x_end] if x_end else [])
    ys = [y for s in series for _, y in s.points]
    x_ticks = nice_ticks(max(xs, default=1.0), 8)
    y_ticks = nice_ticks(max(ys, default=1.0), 5)
    x_max, y_max = x_ticks[-1], y_ticks[-1]

    def px(x: float) -> float:
        return left + inner_w * x / x_max

    def py(y: float) -> float:
        return top + inner_h * (1 - y / y_max)

    parts = [
        (
            f"<svg xmlns='http://www.w3.org/2000/svg' class='plot' id='{html.escape(chart_id)}' "
            f"viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img' {FONT}>"
        ),
        f"<title>{html.escape(title)}</title>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='#ffffff'/>",
        f"<text x='{left}' y='20' font-size='15' font-weight='600' fill='#111827'>{html.escape(title)}</text>",
    ]
    for index, band in enumerate(bands):
        x0, x1 = px(band.start), px(max(band.end, band.start + x_max / 400))
        label_y = top + 11 + 12 * (index % 2)  # neighbouring incidents' labels on alternate lines
        parts.append(
            f"<rect class='band' x='{x0:.1f}' y='{top}' width='{x1 - x0:.1f}' height='{inner_h}' "
            f"fill='{band.color}' fill-opacity='0.16'><title>{html.escape(band.label)}</title></rect>"
        )
        parts.append(
            f"<text x='{x0 + 2:.1f}' y='{label_y}' font-size='10' fill='{band.color}'>{html.escape(band.label)}</text>"
        )
    for tick in y_ticks:
        y = py(tick)
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e7eb'/>")
        parts.append(
            f"<text x='{left - 6}' y='{y + 4:.1f}' font-size='11' text-anchor='end' fill='#4b5563'>{_fmt(tick)}</text>"
        )
    for tick in x_ticks:
        x = px(tick)
        parts.append(
            f"<text x='{x:.1f}' y='{height - bottom + 16}' font-size='11' text-anchor='middle' fill='#4b5563'>"
            f"{_fmt(tick)}</text>"
        )
    axis = f"M{left},{top} L{left},{top + inner_h} L{width - right},{top + inner_h}"
    parts.append(f"<path d='{axis}' fill='none' stroke='#9ca3af'/>")
    parts.append(
        f"<text x='{left + inner_w / 2:.1f}' y='{height - 8}' font-size='11' text-anchor='middle' fill='#4b5563'>"
        f"{html.escape(x_label)}</text>"
    )
    if y_label:
        parts.append(
            f"<text transform='translate(14,{top + inner_h / 2:.1f}) rotate(-90)' font-size='11' "
            f"text-anchor='middle' fill='#4b5563'>{html.escape(y_label)}</text>"
        )
    legend_x = width - right
    for s in reversed(series):
        label = html.escape(s.name)
        legend_x -= 14 + 7 * len(s.name) + 18
        parts.append(
            f"<rect x='{legend_x}' y='11' width='14' height='4' fill='{s.color}'/>"
            f"<text x='{legend_x + 18}' y='17' font-size='11' fill='#374151'>{label}</text>"
        )
    for s in series:
        if not s.points:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = " stroke-dasharray='6 4'" if s.dashed else ""
        parts.append(
            f"<polyline class='series' points='{path}' fill='none' stroke='{s.color}' stroke-width='2.5'"
            f" stroke-linejoin='round'{dash}><title>{html.escape(s.name)}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float]],
    *,
    color: str = "#7c3aed",
    width: int = 960,
    bar_height: int = 22,
    chart_id: str = "",
    empty_text: str = "nothing to show",
) -> str:
    """A horizontal SVG bar chart, one labelled bar per (label, value)."""
    label_w, top, gap = 230, 34, 8
    height = top + max(1, len(bars)) * (bar_height + gap) + 10
    high = max((v for _, v in bars), default=0.0) or 1.0
    inner_w = width - label_w - 70
    parts = [
        (
            f"<svg xmlns='http://www.w3.org/2000/svg' class='plot' id='{html.escape(chart_id)}' "
            f"viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img' {FONT}>"
        ),
        f"<title>{html.escape(title)}</title>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='#ffffff'/>",
        f"<text x='8' y='20' font-size='15' font-weight='600' fill='#111827'>{html.escape(title)}</text>",
    ]
    if not bars:
        parts.append(
            f"<text x='{label_w}' y='{top + 16}' font-size='12' fill='#6b7280'>{html.escape(empty_text)}</text>"
        )
    for index, (label, value) in enumerate(bars):
        y = top + index * (bar_height + gap)
        w = max(2.0, inner_w * value / high)
        parts.append(
            f"<text x='{label_w - 8}' y='{y + bar_height * 0.7:.1f}' font-size='12' text-anchor='end' "
            f"fill='#374151'>{html.escape(label)}</text>"
            f"<rect class='bar' x='{label_w}' y='{y}' width='{w:.1f}' height='{bar_height}' fill='{color}' rx='3'>"
            f"<title>{html.escape(label)}: {_fmt(value)}</title></rect>"
            f"<text x='{label_w + w + 6:.1f}' y='{y + bar_height * 0.7:.1f}' font-size='12' fill='#111827'>"
            f"{_fmt(value)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
