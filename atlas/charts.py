"""Inline SVG charts for the website (no JavaScript charting): histograms, line charts, heat maps.

Every text that comes from data is escaped; colours come from CSS classes so charts follow the
light/dark theme.
"""
from __future__ import annotations

import math

import numpy as np
from markupsafe import Markup, escape


def _fmt(x: float, digits: int = 1) -> str:
    """A short number: ``digits`` significant digits in e-notation outside [0.01, 100)."""
    if x == 0:
        return "0"
    if abs(x) >= 100 or abs(x) < 0.01:
        return f"{x:.{digits - 1}e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{x:g}"


def _position(value: float, edges: np.ndarray) -> float:
    """Where ``value`` falls on the bin-index axis (fractional, log-interpolated inside a bin)."""
    if value <= edges[0]:
        return 0.0
    if value >= edges[-1]:
        return float(len(edges) - 1)
    i = int(np.searchsorted(edges, value, side="right") - 1)
    lo, hi = edges[i], edges[i + 1]
    if lo > 0 and hi > 0:
        return i + math.log(value / lo) / math.log(hi / lo)
    if lo < 0 and hi < 0:
        return i + math.log(-lo / -value) / math.log(lo / hi) if value != 0 else i + 1
    return i + (value - lo) / (hi - lo)


def histogram(counts: np.ndarray, edges: np.ndarray, marker: float | None = None, marker_label: str = "",
              width: int = 560, height: int = 150, title: str = "") -> Markup:
    """Bars of ``counts`` over symlog ``edges`` (equal width per bin, non-empty range shown), with an
    optional marked value (e.g. the optimized image's activation)."""
    counts = np.asarray(counts)
    nonzero = np.flatnonzero(counts)
    lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, len(counts))
    if marker is not None and np.isfinite(marker):
        m = _position(marker, edges)
        lo, hi = min(lo, int(math.floor(m))), max(hi, int(math.ceil(m)) + 1)
    lo, hi = max(0, lo - 1), min(len(counts), hi + 1)
    pad_l, pad_b, pad_t = 8, 30, 22
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    step = plot_w / max(hi - lo, 1)
    top = max(counts[lo:hi].max(initial=0), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>"]
    for i in range(lo, hi):
        if counts[i]:
            h = max(1.0, plot_h * counts[i] / top)
            x = pad_l + (i - lo) * step
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(step - 1, 1):.1f}" '
                         f'height="{h:.1f}"><title>{_fmt(edges[i], 2)} to {_fmt(edges[i + 1], 2)}: {int(counts[i])}</title></rect>')
    parts.append(f'<line class="axis" x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_l}" y2="{pad_t + plot_h}"/>')
    labelled = [i for i in range(lo, hi + 1) if edges[i] == 0 or abs(math.log10(abs(edges[i])) % 1) < 1e-9]
    for i in labelled[:: max(1, len(labelled) // 8)]:
        x = pad_l + (i - lo) * step
        parts.append(f'<text class="tick" x="{x:.1f}" y="{height - 10}" text-anchor="middle">{_fmt(edges[i])}</text>')
    if marker is not None and np.isfinite(marker):
        x = pad_l + (_position(marker, edges) - lo) * step
        parts.append(f'<line class="marker" x1="{x:.1f}" y1="{pad_t - 4}" x2="{x:.1f}" y2="{pad_t + plot_h}"/>')
        anchor = "end" if x > width * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        parts.append(f'<text class="marker-label" x="{x + dx:.1f}" y="{pad_t - 8}" text-anchor="{anchor}">'
                     f"{escape(marker_label)}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(series: dict[str, list[tuple[float, float]]], width: int = 560, height: int = 220, title: str = "",
          x_label: str = "", y_label: str = "", y_range: tuple[float, float] | None = None) -> Markup:
    """A line chart of named series of (x, y) points, with a legend."""
    points = [p for s in series.values() for p in s if np.isfinite(p[1])]
    if not points:
        return Markup("")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range or (min(ys), max(ys))
    if y1 == y0:
        y1 = y0 + 1
    if x1 == x0:
        x1 = x0 + 1
    pad_l, pad_r, pad_t, pad_b = 48, 12, 14, 40
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    sx = lambda x: pad_l + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda y: pad_t + ph - (y - y0) / (y1 - y0) * ph  # noqa: E731
    out = [f'<svg class="chart" viewBox="0 0 {width} {height + 18 * len(series)}" role="img" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>",
           f'<line class="axis" x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" y2="{pad_t + ph}"/>',
           f'<line class="axis" x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + ph}"/>']
    for v in np.linspace(y0, y1, 5):
        out.append(f'<text class="tick" x="{pad_l - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{_fmt(round(v, 3))}</text>')
    for v in sorted(set(xs))[:: max(1, len(set(xs)) // 8)]:
        out.append(f'<text class="tick" x="{sx(v):.1f}" y="{pad_t + ph + 14}" text-anchor="middle">{_fmt(v)}</text>')
    out.append(f'<text class="label" x="{pad_l + pw / 2:.1f}" y="{pad_t + ph + 30}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text class="label" x="12" y="{pad_t + ph / 2:.1f}" transform="rotate(-90 12 {pad_t + ph / 2:.1f})" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    for k, (name, pts) in enumerate(series.items()):
        good = [(x, y) for x, y in pts if np.isfinite(y)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        out.append(f'<polyline class="series s{k % 8}" points="{path}"><title>{escape(name)}</title></polyline>')
        for x, y in good:
            out.append(f'<circle class="series s{k % 8}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5">'
                       f"<title>{escape(name)}: {_fmt(round(y, 4))} at {_fmt(x)}</title></circle>")
        ly = height + 4 + 18 * k
        out.append(f'<line class="series s{k % 8}" x1="{pad_l}" y1="{ly}" x2="{pad_l + 20}" y2="{ly}"/>')
        out.append(f'<text class="legend" x="{pad_l + 26}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def heatmap(values: np.ndarray, title: str = "", cell: int = 28, fmt: str = "{:.0%}") -> Markup:
    """A grid of cells shaded by value (0..1 of the range), each labelled with ``fmt``."""
    v = np.asarray(values, float)
    h, w = v.shape
    lo, hi = np.nanmin(v), np.nanmax(v)
    span = hi - lo if hi > lo else 1.0
    out = [f'<svg class="chart heat" viewBox="0 0 {w * cell} {h * cell}" width="{w * cell}" height="{h * cell}" '
           f'role="img" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>"]
    for r in range(h):
        for c in range(w):
            level = int(round(8 * (v[r, c] - lo) / span)) if np.isfinite(v[r, c]) else 0
            label = fmt.format(v[r, c]) if np.isfinite(v[r, c]) else "-"
            out.append(f'<rect class="heat{level}" x="{c * cell}" y="{r * cell}" width="{cell}" height="{cell}">'
                       f"<title>row {r}, column {c}: {escape(label)}</title></rect>")
            if cell >= 24:
                out.append(f'<text class="heat-text{int(level > 4)}" x="{c * cell + cell / 2}" y="{r * cell + cell / 2 + 4}" '
                           f'text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
