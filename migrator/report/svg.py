"""Inline SVG charts, drawn in Python: the HTML report needs no script library and no network.

Every chart is a ``<figure class="chart" data-chart=NAME data-points=N>`` whose data marks
(bars, segments, line vertices) carry ``data-*`` attributes with their values and a
``<title>`` for the tooltip, so the page can be checked by a program as well as read.
Coordinates are in a fixed viewBox; the SVG scales to the width of its box.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

W = 640
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 12, 34

#: Steps for time axes (seconds): ticks land on round wall-clock intervals.
_TIME_STEPS: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
_TIME_STEPS += (7200, 10800, 21600, 43200, 86400, 172800, 604800)


def _a(value: object) -> str:
    """An attribute value, escaped."""
    return escape(str(value), quote=True)


def _num(x: float) -> str:
    """Short coordinates: the SVG of a 600-point chart stays small."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round values up to at least ``top`` (1-2-5 steps)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def fmt_elapsed(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}" if s % 3600 else f"{s // 3600}h"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def fmt_count(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e4:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}" if x != int(x) else str(int(x))


def figure(
    name: str, title: str, body: str, *, points: int, note: str = "", wide: bool = False
) -> str:
    note_html = f'<div class="note">{escape(note)}</div>' if note else ""
    cls = "chart wide" if wide else "chart"
    return (
        f'<figure class="{cls}" id="chart-{_a(name)}" data-chart="{_a(name)}" '
        f'data-points="{points}"><figcaption>{escape(title)}</figcaption>{body}{note_html}'
        "</figure>"
    )


def empty(name: str, title: str, why: str) -> str:
    return figure(name, title, f'<p class="empty">{escape(why)}</p>', points=0)


def _svg(height: int, label: str, inner: str, width: int = W) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {width} {height}" role="img" aria-label="{_a(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{inner}</svg>'
    )


def _y_grid(ticks: list[float], y: Callable[[float], float], fmt: Callable[[float], str]) -> str:
    parts = []
    for t in ticks:
        yy = _num(y(t))
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{yy}" y2="{yy}"/>'
            f'<text x="{LEFT - 6}" y="{yy}" dy="0.32em" text-anchor="end">{escape(fmt(t))}</text>'
        )
    return f'<g class="y-axis">{"".join(parts)}</g>'


def _x_time_axis(span: float, x: Callable[[float], float], bottom: float) -> str:
    step = next((s for s in _TIME_STEPS if span / s <= 8), _TIME_STEPS[-1])
    parts = [f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{bottom}" y2="{bottom}"/>']
    t = 0
    while t <= span + 1e-9:
        xx = _num(x(t))
        parts.append(
            f'<line class="tick" x1="{xx}" x2="{xx}" y1="{bottom}" y2="{bottom + 4}"/>'
            f'<text x="{xx}" y="{bottom + 16}" text-anchor="middle">{fmt_elapsed(t)}</text>'
        )
        t += step
    return f'<g class="x-axis">{"".join(parts)}</g>'


@dataclass(frozen=True, slots=True)
class Band:
    """A span of the time axis shaded behind the bars: a schedule window in force."""

    start: float
    end: float
    label: str
    #: paused (``rate=0``): drawn darker
    paused: bool = False


def _bands(bands: Sequence[Band], span: float, x: Callable[[float], float], bottom: float) -> str:
    """Shaded spans with the window's label (its limits) at the top when there is room;
    consecutive windows alternate two shades, so a change is visible even between two
    spans of one window."""
    parts = []
    for n, b in enumerate(bands):
        start, end = max(0.0, b.start), min(b.end, span)
        if end <= start:
            continue
        x0, x1 = x(start), x(end)
        shade = "#9e9e9e" if b.paused else ("#90caf9" if n % 2 == 0 else "#ffe082")
        parts.append(
            f'<rect class="window" data-from="{start:.3f}" data-to="{end:.3f}" '
            f'data-label="{_a(b.label)}" x="{_num(x0)}" y="{TOP}" width="{_num(x1 - x0)}" '
            f'height="{_num(bottom - TOP)}" fill="{shade}" fill-opacity="0.25">'
            f"<title>{escape(b.label)}: {fmt_elapsed(start)}–{fmt_elapsed(end)}</title></rect>"
        )
        if x1 - x0 >= 6 * len(b.label) / 1.6:  # roughly: the label fits
            parts.append(
                f'<text class="window-label" x="{_num(x0 + 2)}" y="{TOP + 10}" '
                f'font-size="9">{escape(b.label)}</text>'
            )
    return f'<g class="windows" data-count="{len(bands)}">{"".join(parts)}</g>'


def time_bars(
    name: str,
    title: str,
    *,
    offsets: Sequence[int],
    widths: Sequence[int],
    values: Sequence[float],
    color: str,
    unit: str,
    tips: Sequence[str],
    note: str = "",
    height: int = 230,
    empty_text: str = "No timeline: nothing was stored yet.",
    limit: Sequence[tuple[float, float | None]] = (),
    smoothed: Sequence[float] = (),
    smooth_label: str = "",
    bands: Sequence[Band] = (),
) -> str:
    """Bars over elapsed time, one per timeline bucket (``offset`` .. ``offset + width``).
    ``bands``: spans shaded behind the bars (a schedule's windows, with their limits).

    ``limit``: the rate limit as steps (offset from which it holds, value or None for no
    limit), drawn as a dashed red line; ``smoothed``: one value per bar (a moving average),
    drawn as a line over the bars."""
    if not values:
        return empty(name, title, empty_text)
    span = max(o + w for o, w in zip(offsets, widths, strict=True))
    bottom = height - BOTTOM
    peak = max(values)
    limits = [v for _, v in limit if v]
    # The limit is drawn when the chart can hold it without flattening the bars.
    shown_limit = bool(limits) and max(limits) <= max(2 * peak, 1e-9)
    ticks = nice_ticks(max([peak, *limits]) if shown_limit else peak)
    top_value = ticks[-1] or 1.0

    def x(t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * t / span

    def y(v: float) -> float:
        return bottom - (bottom - TOP) * v / top_value

    bars = []
    for i, (o, w, v, tip) in enumerate(zip(offsets, widths, values, tips, strict=True)):
        x0, x1 = x(o), x(o + w)
        gap = 0.5 if x1 - x0 > 3 else 0.0  # a hairline between wide bars, none between thin
        bars.append(
            f'<rect class="bar" data-i="{i}" data-offset="{o}" data-value="{v:.6g}" '
            f'x="{_num(x0 + gap)}" y="{_num(y(v))}" width="{_num(max(0.4, x1 - x0 - 2 * gap))}" '
            f'height="{_num(bottom - y(v))}" fill="{color}"><title>{escape(tip)}</title></rect>'
        )
    inner = (
        (_bands(bands, span, x, bottom) if bands else "")
        + _y_grid(ticks, y, fmt_count)
        + _x_time_axis(span, x, bottom)
        + f'<g class="series" data-series="{_a(name)}" data-count="{len(bars)}">'
        + "".join(bars)
        + "</g>"
        + f'<text class="unit" x="{LEFT}" y="{TOP - 2}">{escape(unit)}</text>'
    )
    legend = []
    if smoothed:
        mid = [x(o + w / 2) for o, w in zip(offsets, widths, strict=True)]
        coords = " ".join(f"{_num(px)},{_num(y(v))}" for px, v in zip(mid, smoothed, strict=True))
        inner += (
            f'<polyline class="smoothed" data-series="{_a(name)}-smoothed" '
            f'data-count="{len(smoothed)}" points="{coords}" fill="none" stroke="#222" '
            'stroke-width="1.5"/>'
        )
        legend.append(
            f'<span class="key"><i style="background:#222"></i>{escape(smooth_label)}</span>'
        )
    if limit:
        inner += _limit_line(limit, span, x, y, unit, shown_limit)
        legend.append(
            '<span class="key"><i style="background:#c62828"></i>rate limit'
            + ("" if shown_limit else " (above the chart)")
            + "</span>"
        )
    if bands:
        legend.append(
            '<span class="key"><i style="background:#90caf9"></i>schedule windows '
            "(shaded; hover for each window's limits)</span>"
        )
    body = _svg(height, title, inner)
    if legend:
        body += f'<div class="legend">{"".join(legend)}</div>'
    return figure(name, title, body, points=len(bars), note=note)


def _limit_line(
    steps: Sequence[tuple[float, float | None]],
    span: float,
    x: Callable[[float], float],
    y: Callable[[float], float],
    unit: str,
    shown: bool,
) -> str:
    """The rate limit as a step line (dashed), one segment per period it held; a period
    without a limit has no segment. Each segment carries its value (data-limit)."""
    parts = []
    bounds = [max(0.0, o) for o, _ in steps] + [span]
    for i, (_, value) in enumerate(steps):
        start, end = min(bounds[i], span), min(bounds[i + 1], span)
        if value is None or end <= start:
            continue
        yy = _num(y(value)) if shown else _num(TOP)
        parts.append(
            f'<line class="limit" data-limit="{value:.6g}" data-from="{start:g}" '
            f'x1="{_num(x(start))}" x2="{_num(x(end))}" y1="{yy}" y2="{yy}" '
            'stroke="#c62828" stroke-width="1.5" stroke-dasharray="6 4">'
            f"<title>rate limit {value:g} {escape(unit)}</title></line>"
        )
    if parts:
        last = next((v for _, v in reversed(steps) if v is not None), None)
        if last is not None:
            yy = _num(y(last)) if shown else _num(TOP)
            parts.append(
                f'<text class="limit-label" x="{W - RIGHT}" y="{yy}" dy="-4" '
                f'text-anchor="end">limit {last:g} {escape(unit)}</text>'
            )
    return f'<g class="limits" data-count="{len(parts)}">{"".join(parts)}</g>'


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    label: str
    values: Sequence[float]
    color: str
    dashed: bool = False


def time_lines(
    name: str,
    title: str,
    *,
    offsets: Sequence[float],
    lines: Sequence[Line],
    tips: Sequence[str],
    span: float,
    reference: tuple[str, float] | None = None,
    note: str = "",
    height: int = 230,
    empty_text: str = "No timeline: nothing was recorded yet.",
) -> str:
    """Lines over elapsed time (cumulative progress); ``reference``: a horizontal target."""
    if not offsets:
        return empty(name, title, empty_text)
    bottom = height - BOTTOM
    top_data = max([max(ln.values, default=0) for ln in lines] + [reference[1] if reference else 0])
    ticks = nice_ticks(top_data)
    top_value = ticks[-1] or 1.0
    span = max(span, 1)

    def x(t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * t / span

    def y(v: float) -> float:
        return bottom - (bottom - TOP) * v / top_value

    parts = [_y_grid(ticks, y, fmt_count), _x_time_axis(span, x, bottom)]
    if reference:
        ry = _num(y(reference[1]))
        parts.append(
            f'<line class="reference" x1="{LEFT}" x2="{W - RIGHT}" y1="{ry}" y2="{ry}"/>'
            f'<text class="ref-label" x="{W - RIGHT}" y="{ry}" dy="-4" text-anchor="end">'
            f"{escape(reference[0])} {fmt_count(reference[1])}</text>"
        )
    for ln in lines:
        # The line starts at 0 before the first bucket, and each value is the total at the
        # end of its bucket.
        pts = [(x(o), y(v)) for o, v in zip(offsets, ln.values, strict=True)]
        coords = " ".join(f"{_num(px)},{_num(py)}" for px, py in pts)
        dash = ' stroke-dasharray="5 4"' if ln.dashed else ""
        parts.append(
            f'<polyline class="line" data-series="{_a(ln.name)}" data-count="{len(pts)}" '
            f'points="{_num(x(0))},{_num(y(0))} {coords}" fill="none" stroke="{ln.color}" '
            f'stroke-width="2"{dash}/>'
        )
    hits = []
    step = (W - LEFT - RIGHT) / max(1, len(offsets))
    for i, (o, tip) in enumerate(zip(offsets, tips, strict=True)):
        values = " ".join(f'data-{ln.name}="{ln.values[i]:.6g}"' for ln in lines)
        hits.append(
            f'<rect class="hit" data-i="{i}" data-offset="{o:g}" {values} '
            f'x="{_num(x(o) - step / 2)}" y="{TOP}" width="{_num(step)}" '
            f'height="{bottom - TOP}"><title>{escape(tip)}</title></rect>'
        )
    parts.append(f'<g class="hits">{"".join(hits)}</g>')
    legend = "".join(
        f'<span class="key"><i style="background:{ln.color}"></i>{escape(ln.label)}</span>'
        for ln in lines
    )
    body = _svg(height, title, "".join(parts)) + f'<div class="legend">{legend}</div>'
    return figure(name, title, body, points=len(offsets), note=note)


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float
    color: str
    tip: str
    text: str = ""
    #: extra data-* attributes, e.g. {"status": "0xA900"}
    data: tuple[tuple[str, str], ...] = ()


def hbars(name: str, title: str, bars: Sequence[Bar], *, note: str = "", empty_text: str) -> str:
    """Horizontal bars, one labelled row per item (reasons, workers)."""
    if not bars:
        return empty(name, title, empty_text)
    row, label_w = 26, 230
    height = TOP + row * len(bars) + 8
    top_value = max(b.value for b in bars) or 1.0
    inner_w = W - label_w - RIGHT - 100  # room for the value after the longest bar
    parts = []
    for i, b in enumerate(bars):
        y0 = TOP + i * row
        w = inner_w * b.value / top_value
        label = b.label if len(b.label) <= 36 else b.label[:35] + "…"
        data = "".join(f' data-{k}="{_a(v)}"' for k, v in b.data)
        parts.append(
            f'<g class="row" data-i="{i}" data-value="{b.value:.6g}"{data}>'
            f"<title>{escape(b.tip)}</title>"
            f'<text class="label" x="{label_w - 8}" y="{y0 + row / 2}" dy="0.32em" '
            f'text-anchor="end">{escape(label)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y0 + 4}" width="{_num(max(1.0, w))}" '
            f'height="{row - 8}" fill="{b.color}"/>'
            f'<text class="value" x="{_num(label_w + max(1.0, w) + 6)}" y="{y0 + row / 2}" '
            f'dy="0.32em">{escape(b.text or fmt_count(b.value))}</text></g>'
        )
    return figure(name, title, _svg(height, title, "".join(parts)), points=len(bars), note=note)


def stacked(
    name: str, title: str, segments: Sequence[Bar], *, note: str = "", wide: bool = False
) -> str:
    """One 100% bar split by state, with a legend of counts and shares."""
    total = sum(s.value for s in segments)
    shown = [s for s in segments if s.value > 0]
    if not total:
        return empty(name, title, "No files.")
    # A wide figure spans two columns: twice the viewBox width keeps text at the same size.
    width = 2 * W if wide else W
    height, bar_h = 44, 30
    x = 2.0
    inner = width - 4
    parts = []
    for s in shown:
        w = inner * s.value / total
        data = "".join(f' data-{k}="{_a(v)}"' for k, v in s.data)
        parts.append(
            f'<rect class="segment"{data} data-value="{s.value:.6g}" x="{_num(x)}" y="6" '
            f'width="{_num(w)}" height="{bar_h}" fill="{s.color}"><title>{escape(s.tip)}</title>'
            "</rect>"
        )
        if w > 60:
            parts.append(
                f'<text class="in-bar" x="{_num(x + w / 2)}" y="{6 + bar_h / 2}" dy="0.32em" '
                f'text-anchor="middle">{escape(s.text)}</text>'
            )
        x += w
    legend = "".join(
        f'<span class="key"><i style="background:{s.color}"></i>{escape(s.label)}: '
        f"<b>{escape(fmt_count(s.value) if s.value < 1e4 else f'{s.value:,.0f}')}</b> "
        f"({100 * s.value / total:.1f}%)</span>"
        for s in segments
    )
    body = _svg(height, title, "".join(parts), width) + f'<div class="legend">{legend}</div>'
    return figure(name, title, body, points=len(shown), note=note, wide=wide)


def vbars(
    name: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    color: str,
    tips: Sequence[str],
    note: str = "",
    height: int = 230,
    log: bool = False,
    markers: Sequence[tuple[str, float, str]] = (),
) -> str:
    """Vertical bars with a category label under each (the latency histogram).

    ``log``: a logarithmic count axis (1, 10, 100...), so that a bar of 3 next to one of
    20,000 is still seen. ``markers``: (label, position in slots from the left edge,
    tooltip) drawn as vertical lines (the percentiles)."""
    if not values or not any(values):
        return empty(name, title, "No C-STORE response was timed.")
    bottom = height - BOTTOM
    if log:
        ticks = [0.0] + [10.0**i for i in range(math.ceil(math.log10(max(values))) + 1)]
        top_value = math.log10(1 + ticks[-1])

        def y(v: float) -> float:
            return bottom - (bottom - TOP) * math.log10(1 + v) / top_value

    else:
        ticks = nice_ticks(max(values))
        linear_top = ticks[-1] or 1.0

        def y(v: float) -> float:
            return bottom - (bottom - TOP) * v / linear_top

    slot = (W - LEFT - RIGHT) / len(values)
    parts = [_y_grid(ticks, y, fmt_count)]
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    for i, (label, v, tip) in enumerate(zip(labels, values, tips, strict=True)):
        x0 = LEFT + i * slot
        parts.append(
            f'<rect class="bar" data-i="{i}" data-bin="{_a(label)}" data-value="{v:.6g}" '
            f'x="{_num(x0 + 2)}" y="{_num(y(v))}" width="{_num(slot - 4)}" '
            f'height="{_num(bottom - y(v))}" fill="{color}"><title>{escape(tip)}</title></rect>'
            f'<text x="{_num(x0 + slot / 2)}" y="{bottom + 14}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    for i, (label, position, tip) in enumerate(markers):
        xx = _num(LEFT + position * slot)
        parts.append(
            f'<line class="marker" data-marker="{_a(label)}" data-position="{position:.4g}" '
            f'x1="{xx}" x2="{xx}" y1="{TOP + 10 * i}" y2="{bottom}" stroke="#222" '
            f'stroke-width="1.2" stroke-dasharray="3 3"><title>{escape(tip)}</title></line>'
            f'<text class="marker-label" x="{xx}" y="{TOP + 10 * i}" dx="3" dy="0.6em">'
            f"{escape(label)}</text>"
        )
    if log:
        parts.append(f'<text class="unit" x="{LEFT}" y="{TOP - 2}">files (log scale)</text>')
    return figure(name, title, _svg(height, title, "".join(parts)), points=len(values), note=note)
