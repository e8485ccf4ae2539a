"""Small inline-SVG charts for the self-contained report (no JavaScript, no downloads)."""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.2g}"


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    hlines: dict[str, float] | None = None,
    vlines: dict[str, float] | None = None,
    width: int = 640,
    height: int = 260,
    log_y: bool = False,
) -> str:
    import math

    def ty(v: float) -> float:
        return math.log10(max(v, 1e-6)) if log_y else v

    xs = [x for xs_, _ in series.values() for x in xs_] or [0.0, 1.0]
    ys = [ty(y) for _, ys_ in series.values() for y in ys_] + [ty(v) for v in (hlines or {}).values()]
    ys = ys or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 60, width - 150, 28, height - 36
    sx, sy = _scale(x0, x1, left, right), _scale(y0, y1, bottom, top)
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    parts.append(f'<text x="{left}" y="16" class="title">{escape(title)}</text>')
    for t in _ticks(y0, y1):
        label = _fmt(10**t) if log_y else _fmt(t)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">{label}</text>')
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{sx(t):.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 4}" text-anchor="middle" class="axis">{escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + bottom) / 2:.0f}" transform="rotate(-90 12 {(top + bottom) / 2:.0f})" text-anchor="middle" class="axis">{escape(y_label)}</text>')
    for name, value in (hlines or {}).items():
        y = sy(ty(value))
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="hline"/><text x="{right + 4}" y="{y + 4:.1f}" class="tick">{escape(name)}</text>')
    for name, value in (vlines or {}).items():
        x = sx(value)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" class="vline"/><text x="{x + 3:.1f}" y="{top + 10}" class="tick">{escape(name)}</text>')
    for i, (name, (xs_, ys_)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{sx(x):.1f},{sy(ty(y)):.1f}" for x, y in zip(xs_, ys_))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<rect x="{right + 8}" y="{top + 14 * i}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{right + 22}" y="{top + 9 + 14 * i}" class="tick">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str, y_label: str, width: int = 640, height: int = 240) -> str:
    left, right, top, bottom = 60, width - 20, 28, height - 40
    vmax = max(values) if values else 1.0
    sy = _scale(0, vmax or 1.0, bottom, top)
    n = max(len(values), 1)
    bw = (right - left) / n
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    parts.append(f'<text x="{left}" y="16" class="title">{escape(title)}</text>')
    for t in _ticks(0, vmax or 1.0):
        parts.append(f'<line x1="{left}" x2="{right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for i, (label, v) in enumerate(zip(labels, values)):
        x = left + i * bw
        parts.append(f'<rect x="{x + 1:.1f}" y="{sy(v):.1f}" width="{max(bw - 2, 1):.1f}" height="{bottom - sy(v):.1f}" fill="{PALETTE[0]}"><title>{escape(str(label))}: {v}</title></rect>')
        if n <= 30 or i % max(1, n // 15) == 0:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{bottom + 14}" text-anchor="middle" class="tick">{escape(str(label))}</text>')
    parts.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 6}" text-anchor="middle" class="axis">{escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + bottom) / 2:.0f}" transform="rotate(-90 12 {(top + bottom) / 2:.0f})" text-anchor="middle" class="axis">{escape(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
