"""``aegispay simulate --report FILE.html``: one self-contained page, charts as inline SVG.

No scripts, no stylesheets or fonts from the network: the file opens anywhere, offline, and
can be attached to an incident review. Every text taken from the report is escaped.

Charts (from the report's ``timeline``; without one, only the summary is written):
traffic share per gateway (stacked areas), success rate and p95 latency per gateway (lines),
circuit state bands (one row per gateway, a cell per time bucket), then the summary table,
the breaker transitions and the faults injected.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")
CIRCUIT_COLOURS = {"closed": "#cfe8cf", "half_open": "#f5d98b", "open": "#e06666"}
WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 84, 12, 12, 28  # LEFT: room for a gateway name

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 780px; color: #222 }
h1 { font-size: 22px } h2 { font-size: 17px; margin-top: 28px }
table { border-collapse: collapse; margin: 8px 0 }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right }
td:first-child, th:first-child { text-align: left }
.legend span { margin-right: 14px } .swatch { display: inline-block; width: 12px; height: 12px;
  vertical-align: middle; margin-right: 4px }
svg text { font: 11px system-ui, sans-serif; fill: #444 }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _axes(y_max: float, y_label: str, duration: float, ticks: Sequence[float]) -> list[str]:
    """Frame, horizontal grid lines with labels at ``ticks``, and time labels."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
    ]
    for tick in ticks:
        y = TOP + plot_h * (1 - tick / y_max) if y_max else TOP + plot_h
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(_tick_label(tick, y_label))}</text>"
        )
    for k in range(6):
        x = LEFT + plot_w * k / 5
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{duration * k / 5:.3g} s</text>"
        )
    return parts


def _tick_label(tick: float, unit: str) -> str:
    return f"{tick:.0%}" if unit == "%" else f"{tick:g} {unit}"


def _x(i: int, n: int) -> float:
    """The x of the middle of bucket ``i`` of ``n``."""
    return LEFT + (WIDTH - LEFT - RIGHT) * (i + 0.5) / n


def _y(value: float, y_max: float) -> float:
    plot_h = HEIGHT - TOP - BOTTOM
    return TOP + plot_h * (1 - (value / y_max if y_max else 0.0))


def _svg(title: str, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">'
        f"<title>{_e(title)}</title>{''.join(parts)}</svg>"
    )


def stacked_share_chart(
    names: Sequence[str], shares: Sequence[Sequence[float]], duration: float
) -> str:
    """Traffic share per gateway over time, stacked to 100 % (buckets without traffic: 0)."""
    n = len(shares[0]) if shares else 0
    parts = _axes(1.0, "%", duration, (0.0, 0.25, 0.5, 0.75, 1.0))
    plot_w = WIDTH - LEFT - RIGHT
    # Steps, not a line through bucket middles: each bucket's share spans the whole bucket.
    edges = [(LEFT + plot_w * i / n, LEFT + plot_w * (i + 1) / n) for i in range(n)]
    below = [0.0] * n
    for colour, name, share in zip(_colours(len(names)), names, shares, strict=True):
        above = [b + s for b, s in zip(below, share, strict=True)]
        top = [f"{x:.1f},{_y(above[i], 1.0):.1f}" for i in range(n) for x in edges[i]]
        bottom = [
            f"{x:.1f},{_y(below[i], 1.0):.1f}"
            for i in reversed(range(n))
            for x in reversed(edges[i])
        ]
        parts.append(
            f'<polygon points="{" ".join(top + bottom)}" fill="{colour}" '
            f'fill-opacity="0.75" stroke="{colour}"><title>{_e(name)}</title></polygon>'
        )
        below = above
    return _svg("traffic share per gateway", parts)


def line_chart(
    title: str,
    names: Sequence[str],
    series: Sequence[Sequence[float | None]],
    duration: float,
    unit: str,
    y_max: float | None = None,
) -> str:
    """One line per gateway; a bucket without a value breaks the line (no calls, no data)."""
    values = [v for s in series for v in s if v is not None]
    top = y_max if y_max is not None else _nice_max(max(values, default=1.0))
    ticks = [top * k / 4 for k in range(5)]
    parts = _axes(top, unit, duration, ticks)
    for colour, name, points in zip(_colours(len(names)), names, series, strict=True):
        n = len(points)
        runs: list[list[str]] = [[]]
        for i, value in enumerate(points):
            if value is None:
                runs.append([])
                continue
            runs[-1].append(f"{_x(i, n):.1f},{_y(min(value, top), top):.1f}")
        for run in runs:
            if len(run) == 1:
                x, y = run[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
            elif run:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" '
                    f'stroke="{colour}" stroke-width="2"><title>{_e(name)}</title>'
                    "</polyline>"
                )
    return _svg(title, parts)


def circuit_bands(names: Sequence[str], circuits: Sequence[Sequence[str]], duration: float) -> str:
    """One band per gateway: a cell per bucket, coloured by the worst circuit state in it."""
    row_h, gap = 22, 6
    height = TOP + len(names) * (row_h + gap) + BOTTOM
    plot_w = WIDTH - LEFT - RIGHT
    parts = []
    for r, (name, states) in enumerate(zip(names, circuits, strict=True)):
        y = TOP + r * (row_h + gap)
        parts.append(f'<text x="{LEFT - 6}" y="{y + 15}" text-anchor="end">{_e(name)}</text>')
        n = len(states)
        for i, state in enumerate(states):
            x = LEFT + plot_w * i / n
            colour = CIRCUIT_COLOURS.get(state, "#ccc")
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{plot_w / n:.1f}" height="{row_h}" '
                f'fill="{colour}" stroke="#fff"><title>{_e(name)}: {_e(state)}'
                "</title></rect>"
            )
    for k in range(6):
        x = LEFT + plot_w * k / 5
        parts.append(
            f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
            f"{duration * k / 5:.3g} s</text>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="circuit state">'
        f"<title>circuit state per gateway</title>{''.join(parts)}</svg>"
    )


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    scale = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * scale:
            return float(step * scale)
    return float(10 * scale)


def _colours(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def _legend(names: Sequence[str]) -> str:
    spans = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{_e(n)}</span>'
        for c, n in zip(_colours(len(names)), names, strict=True)
    )
    return f'<p class="legend">{spans}</p>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    latency = report.get("latency_ms", {})
    rows: list[tuple[str, Any]] = [
        ("payments", report.get("payments")),
        ("concurrency", report.get("concurrency")),
        ("seed", report.get("seed")),
        ("elapsed (s, wall clock)", report.get("elapsed_s")),
        ("throughput (payments/s)", report.get("throughput_per_s")),
        (
            "latency p50 / p95 / p99 (ms, wall clock)",
            f"{latency.get('p50')} / {latency.get('p95')} / {latency.get('p99')}",
        ),
        ("duplicate charges", report.get("duplicate_charges", "n/a")),
        ("charges not recorded", report.get("unrecorded_charges", "n/a")),
        (
            "UNKNOWN outcomes at the gateways / status lookups",
            f"{report.get('unknown_outcomes', 0)} / {report.get('status_lookups', 0)}",
        ),
        ("attempts left unsettled", report.get("unsettled_attempts")),
        ("replay mismatches", report.get("replay_mismatches")),
        ("errors", report.get("errors") or "none"),
    ]
    timeline = report.get("timeline")
    if timeline is not None and timeline.get("success_rate") is not None:
        rows.insert(
            5,
            (
                "success rate (authorised / payments not denied by fraud checks)",
                f"{timeline['success_rate']:.2%}",
            ),
        )
    return rows


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a ``simulate`` report (a dict as ``--json`` prints it)."""
    scenario = report.get("scenario")
    title = f"AegisPay scenario: {scenario['name']}" if scenario else "AegisPay simulation"
    body = [f"<h1>{_e(title)}</h1>"]
    if scenario:
        body.append(f"<p>{_e(scenario['description'])}</p>")
    timeline = report.get("timeline")
    if timeline is not None:
        names = list(timeline["gateways"])
        data = timeline["gateways"]
        duration = float(timeline["duration_s"])
        body.append(
            f"<p>{_e(timeline['clock'])} clock, {len(timeline['buckets'])} buckets of "
            f"{_e(timeline['bucket_s'])} s; authorisation calls only.</p>"
        )
        body.append(_legend(names))
        body.append("<h2>Traffic share</h2>")
        body.append(stacked_share_chart(names, [data[n]["share"] for n in names], duration))
        body.append("<h2>Success rate (successes / successes + failures; declines excluded)</h2>")
        body.append(
            line_chart(
                "success rate per gateway",
                names,
                [data[n]["success_rate"] for n in names],
                duration,
                "%",
                1.0,
            )
        )
        body.append("<h2>Latency p95</h2>")
        body.append(
            line_chart(
                "p95 latency per gateway",
                names,
                [data[n]["latency_p95_ms"] for n in names],
                duration,
                "ms",
            )
        )
        body.append("<h2>Circuit state</h2>")
        body.append(
            '<p class="legend">'
            + "".join(
                f'<span><i class="swatch" style="background:{c}"></i>{_e(s)}</span>'
                for s, c in CIRCUIT_COLOURS.items()
            )
            + "</p>"
        )
        body.append(circuit_bands(names, [data[n]["circuit"] for n in names], duration))
        payments = [b["success_rate"] for b in timeline["buckets"]]
        body.append("<h2>Payments' success rate over time</h2>")
        body.append(
            line_chart("payments' success rate", ["all payments"], [payments], duration, "%", 1.0)
        )
    body.append("<h2>Summary</h2>")
    body.append(_table(("figure", "value"), _summary_rows(report)))
    states = report.get("outcomes") or {}
    if states:
        body.append(_table(("final state", "payments"), sorted(states.items())))
    if timeline is not None and timeline["transitions"]:
        body.append("<h2>Circuit breaker transitions</h2>")
        body.append(
            _table(
                ("t (s)", "gateway", "from", "to", "reason"),
                [
                    (f"{t['at_s']:.2f}", t["gateway"], t["from"], t["to"], t["reason"])
                    for t in timeline["transitions"]
                ],
            )
        )
    if scenario:
        injected = [
            (g, k, n) for g, kinds in scenario["faults_injected"].items() for k, n in kinds.items()
        ]
        body.append("<h2>Faults injected</h2>")
        body.append(_table(("gateway", "fault", "calls"), injected) if injected else "<p>none</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_html_report(path: str | Path, report: dict[str, Any]) -> None:
    Path(path).write_text(render_html(report), encoding="utf-8")
