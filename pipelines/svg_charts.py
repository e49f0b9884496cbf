"""Small charts for ``report.html`` as hand-written inline SVG (no plotting library).

Two shapes: grouped bars (:func:`bar_chart`) and step histograms (:func:`histograms`). The
output is a pure function of the arguments (no clock, no ids from a counter), text stays text,
and every string from the data is escaped. Writing SVG directly costs microseconds; importing
matplotlib to draw the same charts cost about 0.6 s of every run.
"""

from __future__ import annotations

import bisect
import html
import math
from collections.abc import Sequence

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"]
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'
BINS = 30


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros (stable bytes)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top`` (steps of 1, 2 or 5 times a power of ten)."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12 * top:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.3g}"


class _Canvas:
    """A plot area inside an SVG of fixed size, with a y axis from 0 to the last tick."""

    def __init__(self, width: float, height: float, left: float, bottom: float, top_value: float) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, 12.0, 28.0, bottom
        self.ticks = nice_ticks(top_value)
        self.parts: list[str] = []

    def x0(self) -> float:
        return self.left

    def plot_width(self) -> float:
        return self.width - self.left - self.right

    def y(self, value: float) -> float:
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - span * (value / self.ticks[-1])

    def axes(self, ylabel: str, xlabel: str = "") -> None:
        base = self.height - self.bottom
        for tick in self.ticks:
            y = _num(self.y(tick))
            self.parts.append(
                f'<line x1="{_num(self.left - 3)}" y1="{y}" x2="{_num(self.left)}" y2="{y}" stroke="#333"/>'
                f'<text x="{_num(self.left - 5)}" y="{y}" text-anchor="end" dominant-baseline="middle" '
                f'font-size="8">{_esc(_label(tick))}</text>'
            )
        self.parts.append(
            f'<line x1="{_num(self.left)}" y1="{_num(self.top)}" x2="{_num(self.left)}" y2="{_num(base)}" '
            f'stroke="#333"/><line x1="{_num(self.left)}" y1="{_num(base)}" x2="{_num(self.width - self.right)}" '
            f'y2="{_num(base)}" stroke="#333"/>'
        )
        middle = (self.top + base) / 2
        self.parts.append(
            f'<text x="10" y="{_num(middle)}" font-size="9" text-anchor="middle" '
            f'transform="rotate(-90 10 {_num(middle)})">{_esc(ylabel)}</text>'
        )
        if xlabel:
            self.parts.append(
                f'<text x="{_num(self.left + self.plot_width() / 2)}" y="{_num(self.height - 4)}" font-size="9" '
                f'text-anchor="middle">{_esc(xlabel)}</text>'
            )

    def legend(self, names: Sequence[str], x: float) -> None:
        for i, name in enumerate(names):
            y = self.top + 4 + 12 * i
            self.parts.append(
                f'<rect x="{_num(x)}" y="{_num(y)}" width="9" height="9" fill="{COLORS[i % len(COLORS)]}"/>'
                f'<text x="{_num(x + 12)}" y="{_num(y + 8)}" font-size="8">{_esc(name)}</text>'
            )

    def svg(self, title: str, x: float | None = None) -> str:
        x = self.width / 2 if x is None else x
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(self.width)}" height="{_num(self.height)}" '
            f'viewBox="0 0 {_num(self.width)} {_num(self.height)}" {FONT} role="img" aria-label="{_esc(title)}">'
            f'<title>{_esc(title)}</title><rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{_num(x)}" y="16" font-size="11" text-anchor="middle">{_esc(title)}</text>'
        )
        return head + "".join(self.parts) + "</svg>"


def bar_chart(title: str, categories: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str) -> str:
    """Grouped bars: one group per category, one bar per series (None draws nothing), each bar
    labelled with its value."""
    groups, per_group = len(categories), max(1, len(series))
    rotate = groups > 3
    longest = max((len(str(c)) for c in categories), default=0)
    slot_width = max(34.0 * per_group, 0.0 if rotate else 5.0 * longest + 10)  # labels side by side fit
    width = max(320.0, slot_width * groups + 156)
    bottom = 70.0 if rotate else 34.0
    values = [float(v) for vs in series.values() for v in vs if v is not None and math.isfinite(float(v))]
    canvas = _Canvas(width, 240.0 + (bottom - 34.0), 46.0, bottom, max(values, default=0.0) * 1.15)
    canvas.right = 110.0
    canvas.axes(ylabel)
    slot = canvas.plot_width() / max(1, groups)
    bar = slot * 0.8 / per_group
    base = canvas.y(0)
    for i, (_, vs) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        for j, value in enumerate(vs):
            if value is None:
                continue
            v = float(value)
            x = canvas.x0() + slot * j + slot * 0.1 + bar * i
            y = canvas.y(max(0.0, v)) if math.isfinite(v) else base
            canvas.parts.append(
                f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(bar)}" height="{_num(base - y)}" fill="{color}">'
                f"<title>{_esc(_label(v))}</title></rect>"
                f'<text x="{_num(x + bar / 2)}" y="{_num(y - 2)}" font-size="7" text-anchor="middle">'
                f"{_esc(_label(v))}</text>"
            )
    for j, category in enumerate(categories):
        x = canvas.x0() + slot * (j + 0.5)
        y = base + 11
        if rotate:
            canvas.parts.append(
                f'<text x="{_num(x)}" y="{_num(y)}" font-size="8" text-anchor="end" '
                f'transform="rotate(-20 {_num(x)} {_num(y)})">{_esc(category)}</text>'
            )
        else:
            canvas.parts.append(
                f'<text x="{_num(x)}" y="{_num(y)}" font-size="8" text-anchor="middle">{_esc(category)}</text>'
            )
    canvas.legend(list(series), width - canvas.right + 8)
    return canvas.svg(title, canvas.x0() + canvas.plot_width() / 2)


def bin_edges(values: Sequence[float], bins: int = BINS) -> list[float]:
    """Equal-width edges from the smallest to the largest value (``numpy.histogram_bin_edges``'s
    rule: a single value gets the range value - 0.5 to value + 0.5)."""
    low, high = (float(min(values)), float(max(values))) if values else (0.0, 0.0)
    if low == high:
        low, high = low - 0.5, high + 0.5
    step = (high - low) / bins  # numpy.linspace's arithmetic, so the edges are its bytes too
    return [low + i * step for i in range(bins)] + [high]


def counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Values per bin: bin ``i`` holds ``edges[i] <= v < edges[i + 1]``, the last one also its
    right edge (as numpy counts); values outside the edges are not counted. One sort, then a
    binary search per edge."""
    ordered = sorted(values)
    starts = [bisect.bisect_left(ordered, edge) for edge in edges[:-1]]
    starts.append(bisect.bisect_right(ordered, edges[-1]))
    return [starts[i + 1] - starts[i] for i in range(len(edges) - 1)]


def _histogram_panel(canvas: _Canvas, groups: dict[str, list[int]], edges: list[float]) -> None:
    span = edges[-1] - edges[0]
    for i, (_, values) in enumerate(groups.items()):
        if not values:
            continue
        heights = counts(values, edges)
        x = [canvas.x0() + canvas.plot_width() * (e - edges[0]) / span for e in edges]
        points = [(x[0], canvas.y(0))]
        for k, h in enumerate(heights):
            points += [(x[k], canvas.y(h)), (x[k + 1], canvas.y(h))]
        points.append((x[-1], canvas.y(0)))
        path = " ".join(f"{_num(px)},{_num(py)}" for px, py in points)
        canvas.parts.append(
            f'<polyline points="{path}" fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.5"/>'
        )
    for edge in (edges[0], (edges[0] + edges[-1]) / 2, edges[-1]):
        x = canvas.x0() + canvas.plot_width() * (edge - edges[0]) / span
        canvas.parts.append(
            f'<text x="{_num(x)}" y="{_num(canvas.y(0) + 11)}" font-size="8" text-anchor="middle">'
            f"{_esc(_label(edge))}</text>"
        )


def histograms(title: str, groups: dict[str, tuple[list[int], list[int]]]) -> str:
    """Two step histograms side by side (total and supervised tokens per sample), one line per
    group, 30 equal bins over all groups' values; the legend gives each group's sample count."""
    panels = []
    for which, name in ((0, "tokens per sample"), (1, "supervised tokens per sample")):
        series = {group: values[which] for group, values in groups.items()}
        every = [v for values in series.values() for v in values]
        edges = bin_edges(every)
        top = max((max(counts(v, edges)) for v in series.values() if v), default=0)
        canvas = _Canvas(360.0, 230.0, 46.0, 34.0, top * 1.1)
        canvas.axes("samples", "tokens (whitespace count)")
        _histogram_panel(canvas, series, edges)
        if which == 1:
            canvas.right = 130.0
            canvas.legend([f"{group} ({len(values[1])})" for group, values in groups.items()], 360.0 + 8)
        panels.append(canvas.svg(name))
    width = 360 * 2 + 140
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="256" viewBox="0 0 {width} 256" {FONT} '
        f'role="img" aria-label="{_esc(title)}"><title>{_esc(title)}</title>'
        f'<text x="{width // 2}" y="14" font-size="12" text-anchor="middle">{_esc(title)}</text>'
        f'<svg x="0" y="22" width="360" height="230">{_inner(panels[0])}</svg>'
        f'<svg x="360" y="22" width="500" height="230">{_inner(panels[1])}</svg></svg>'
    )


def _inner(svg: str) -> str:
    """The body of a panel's SVG (its elements without the outer tag)."""
    return svg[svg.index(">") + 1 : svg.rindex("</svg>")]
