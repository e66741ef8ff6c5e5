"""Prometheus alert rules and the Grafana dashboard, both rendered from the metric spec
(verifier.core.metrics.SPEC), so a metric, its alerts and its panel cannot drift apart.

YAML is a superset of JSON, so the rules file is written as JSON that Prometheus and any
YAML parser read. The committed copies under deploy/ are kept in step by
tests/test_alert_rules.py; regenerate them with `railproof alerts generate` and
`railproof alerts dashboard` after changing the spec."""

from __future__ import annotations

import json
from typing import Any

from verifier.core.metrics import RUNBOOK, SPEC, MetricSpec, alert_rules

RULES_FILE = "deploy/prometheus/railproof-rules.yml"
DASHBOARD_FILE = "deploy/grafana/railproof-dashboard.json"
DASHBOARD_UID = "railproof"
AREA_TITLES = {
    "http": "HTTP API",
    "verification": "Verification",
    "security": "Security",
    "chain": "Chain",
    "apply": "Apply, entitlements and approvals",
    "webhooks": "Webhooks",
    "reconciliation": "Reconciliation",
}
_WIDTH = 12  # two panels per row of the 24-column grid
_HEIGHT = 8


def render_rules(runbook_base: str = RUNBOOK) -> str:
    return json.dumps(alert_rules(runbook_base), indent=2) + "\n"


def _by(s: MetricSpec, drop: tuple[str, ...] = ()) -> str:
    keep = [label for label in s.labels if label not in drop]
    return f" by ({', '.join(keep)})" if keep else ""


def panel_queries(s: MetricSpec) -> list[dict[str, str]]:
    """The PromQL a panel draws for one metric family: per-second rates for counters, the
    value for gauges, p50 and p95 for histograms (the status label dropped: too many lines)."""
    m = s.full_name
    if s.kind == "counter":
        return [{"expr": f"sum{_by(s)} (rate({m}[5m]))", "legendFormat": _legend(s)}]
    if s.kind == "gauge":
        return [{"expr": f"max{_by(s)} ({m})", "legendFormat": _legend(s)}]
    by = [label for label in s.labels if label not in ("status", "method")]
    group = ", ".join(["le", *by])
    legend = " ".join("{{" + label + "}}" for label in by)
    return [
        {
            "expr": f"histogram_quantile({q}, sum by ({group}) (rate({m}_bucket[5m])))",
            "legendFormat": f"p{int(q * 100)} {legend}".strip(),
        }
        for q in (0.5, 0.95)
    ]


def _legend(s: MetricSpec) -> str:
    return " ".join("{{" + label + "}}" for label in s.labels) or s.name


def _unit(s: MetricSpec) -> str:
    if s.kind == "histogram" or s.name.endswith("_seconds"):
        return "s"
    return "ops" if s.kind == "counter" else "short"


def grafana_dashboard() -> dict[str, Any]:
    """A Grafana dashboard: one row per area, one time-series panel per metric family, with
    the Prometheus data source chosen on the dashboard (`${datasource}`)."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    areas: dict[str, list[MetricSpec]] = {}
    for s in SPEC:
        areas.setdefault(s.area, []).append(s)
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for area, specs in areas.items():
        panels.append(
            {
                "type": "row",
                "id": next_id,
                "title": AREA_TITLES.get(area, area),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        for i, s in enumerate(specs):
            alerts = ", ".join(a.name for a in s.alerts)
            panels.append(
                {
                    "type": "timeseries",
                    "id": next_id,
                    "title": s.full_name,
                    "description": s.help + (f" (alerts: {alerts})" if alerts else ""),
                    "datasource": datasource,
                    "gridPos": {
                        "h": _HEIGHT,
                        "w": _WIDTH,
                        "x": (i % 2) * _WIDTH,
                        "y": y + (i // 2) * _HEIGHT,
                    },
                    "fieldConfig": {"defaults": {"unit": _unit(s)}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {"refId": chr(ord("A") + k), "datasource": datasource, **q}
                        for k, q in enumerate(panel_queries(s))
                    ],
                }
            )
            next_id += 1
        y += ((len(specs) + 1) // 2) * _HEIGHT
    return {
        "uid": DASHBOARD_UID,
        "title": "railproof",
        "tags": ["railproof"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Prometheus",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render_dashboard() -> str:
    return json.dumps(grafana_dashboard(), indent=2) + "\n"
