"""Small server-side SVG charts: no JavaScript, no library, nothing fetched by the browser.

Every chart is an <svg role="img"> with a <title> and an aria-label that states the numbers,
so a screen reader (and a test) reads what the bars show.
"""

from __future__ import annotations

from markupsafe import Markup, escape

PALETTE = {
    "verified": "#2e7d32",
    "failed": "#c62828",
    "pending": "#f9a825",
    "requires_review": "#6a1b9a",
    "dead_letter": "#c62828",
    "count": "#1565c0",
}
_FALLBACK = ["#1565c0", "#ef6c00", "#00838f", "#5d4037", "#ad1457", "#558b2f"]


def color(name: str, i: int = 0) -> str:
    return PALETTE.get(name, _FALLBACK[i % len(_FALLBACK)])


def stacked_bars(
    title: str, labels: list[str], series: dict[str, list[int]], width: int = 560, height: int = 160
) -> Markup:
    """Vertical bars, one per label, stacked by series (e.g. proofs per hour by status)."""
    n = max(1, len(labels))
    totals = [sum(vals[i] for vals in series.values()) for i in range(len(labels))]
    top: float = max(totals, default=0) or 1
    pad_l, pad_b, pad_t = 34, 18, 8
    plot_w, plot_h = width - pad_l - 4, height - pad_b - pad_t
    bw = plot_w / n
    parts = [
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 4}" y2="{pad_t + plot_h}" '
        'class="axis"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 8}" class="tick" text-anchor="end">{top}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    for i, label in enumerate(labels):
        y: float = pad_t + plot_h
        for j, (name, vals) in enumerate(series.items()):
            v = vals[i]
            if not v:
                continue
            h = plot_h * v / top
            y -= h
            parts.append(
                f'<rect x="{pad_l + i * bw + 1:.1f}" y="{y:.1f}" '
                f'width="{max(bw - 2, 1):.1f}" height="{h:.1f}" fill="{color(name, j)}">'
                f"<title>{escape(label)}: {v} {escape(name)}</title></rect>"
            )
        if n <= 12 or i % max(1, n // 6) == 0:
            parts.append(
                f'<text x="{pad_l + i * bw + bw / 2:.1f}" y="{height - 4}" class="tick" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    summary = "; ".join(f"{name} {sum(vals)}" for name, vals in series.items())
    return _svg(
        title,
        f"{title}: total {sum(totals)} ({summary})",
        width,
        height,
        parts,
        legend=list(series),
    )


def hbars(
    title: str, items: list[tuple[str, int]], width: int = 560, series: str = "count"
) -> Markup:
    """Horizontal bars, one per labelled count (e.g. failures by code)."""
    row, pad_l = 20, 190
    height = max(1, len(items)) * row + 8
    top = max((v for _, v in items), default=0) or 1
    parts = []
    for i, (label, v) in enumerate(items):
        y = 4 + i * row
        w = (width - pad_l - 50) * v / top
        parts.append(
            f'<text x="{pad_l - 6}" y="{y + 13}" class="label" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        parts.append(
            f'<rect x="{pad_l}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row - 6}" '
            f'fill="{color(series)}"><title>{escape(label)}: {v}</title></rect>'
        )
        parts.append(f'<text x="{pad_l + w + 6:.1f}" y="{y + 13}" class="label">{v}</text>')
    if not items:
        parts.append('<text x="8" y="18" class="label">none</text>')
        height = 28
    desc = ", ".join(f"{label} {v}" for label, v in items) or "none"
    return _svg(title, f"{title}: {desc}", width, height, parts)


def _svg(
    title: str,
    label: str,
    width: int,
    height: int,
    parts: list[str],
    legend: list[str] | None = None,
) -> Markup:
    legend_html = ""
    if legend and len(legend) > 1:
        legend_html = (
            '<p class="legend">'
            + " ".join(
                '<span><svg width="10" height="10" aria-hidden="true">'
                '<rect width="10" height="10" '
                f'fill="{color(name, j)}"/></svg> {escape(name)}</span>'
                for j, name in enumerate(legend)
            )
            + "</p>"
        )
    return Markup(
        f'<figure class="chart"><svg role="img" aria-label="{escape(label)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>'
        + "".join(parts)
        + f"</svg><figcaption>{escape(title)}</figcaption>{legend_html}</figure>"
    )
