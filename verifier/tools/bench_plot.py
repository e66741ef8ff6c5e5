"""`railproof bench --plot FILE.svg`: the scale rows (HTTP throughput and p99 latency against
proofs stored, one line per database) as a small SVG.

Written by hand rather than with a plotting library: two line charts of a handful of points
are some sixty lines of SVG, and matplotlib (with numpy) would be a large dependency for
them. Stored counts are spaced on a log scale (1k, 10k, 100k).
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

W, H = 360, 240  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 34, 44
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
PANELS = (
    ("http_submit_per_s", "submissions / s (HTTP)"),
    ("http_p99_ms", "p99 latency, ms (POST /v1/proofs)"),
)


def series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped per line (database and API processes), each sorted by stored."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = f"{r['database']}, {r['api_workers']} API process" + (
            "es" if r["api_workers"] != 1 else ""
        )
        out.setdefault(label, []).append(r)
    for pts in out.values():
        pts.sort(key=lambda r: r["stored"])
    return out


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * step:
            return m * step
    return 10 * step


def svg(rows: list[dict[str, Any]]) -> str:
    lines = series(rows)
    stored = sorted({max(1, int(r["stored"])) for r in rows}) or [1]
    lo, hi = math.log10(stored[0]), math.log10(stored[-1])
    span = hi - lo or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 24 * len(lines)}"'
        ' font-family="sans-serif" font-size="11">',
        f'<rect width="{2 * W}" height="{H + 24 * len(lines)}" fill="white"/>',
    ]
    for k, (key, title) in enumerate(PANELS):
        x0 = k * W
        top = _nice_max(max([float(r.get(key) or 0) for r in rows] or [1.0]))

        def px(n: int, x0: int = x0) -> float:
            pos = (math.log10(max(1, n)) - lo) / span if len(stored) > 1 else 0.5
            return x0 + PAD_L + pos * (W - PAD_L - PAD_R)

        def py(v: float, top: float = top) -> float:
            return PAD_T + (1 - v / top) * (H - PAD_T - PAD_B)

        parts.append(
            f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">'
            f"{escape(title)}</text>"
        )
        parts.append(
            f'<line x1="{x0 + PAD_L}" y1="{H - PAD_B}" x2="{x0 + W - PAD_R}" y2="{H - PAD_B}"'
            ' stroke="black"/>'
            f'<line x1="{x0 + PAD_L}" y1="{PAD_T}" x2="{x0 + PAD_L}" y2="{H - PAD_B}"'
            ' stroke="black"/>'
        )
        for i in range(5):
            v = top * i / 4
            y = py(v)
            parts.append(
                f'<line x1="{x0 + PAD_L}" y1="{y:.1f}" x2="{x0 + W - PAD_R}" y2="{y:.1f}"'
                ' stroke="#ddd"/>'
                f'<text x="{x0 + PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>'
            )
        for n in stored:
            parts.append(
                f'<text x="{px(n):.1f}" y="{H - PAD_B + 14}" text-anchor="middle">{n:,}</text>'
            )
        parts.append(
            f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle">proofs stored</text>'
        )
        for c, pts in enumerate(lines.values()):
            colour = COLOURS[c % len(COLOURS)]
            coords = " ".join(f"{px(int(r['stored'])):.1f},{py(float(r[key])):.1f}" for r in pts)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            for r in pts:
                parts.append(
                    f'<circle cx="{px(int(r["stored"])):.1f}" cy="{py(float(r[key])):.1f}"'
                    f' r="3" fill="{colour}"><title>{escape(str(r[key]))}</title></circle>'
                )
    for c, label in enumerate(lines):
        y = H + 16 + 24 * c
        colour = COLOURS[c % len(COLOURS)]
        parts.append(
            f'<rect x="{PAD_L}" y="{y - 9}" width="14" height="10" fill="{colour}"/>'
            f'<text x="{PAD_L + 20}" y="{y}">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        raise ValueError("--plot: no scale rows to draw; pass --scale 1000,10000 with --http")
    try:
        Path(path).write_text(svg(rows), encoding="utf-8")
    except OSError as e:  # checked before the run (bench's CLI); a full disk still ends here
        raise ValueError(f"--plot: cannot write {path}: {e.strerror or e}") from e
