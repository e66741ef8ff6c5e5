"""The alert rules and the Grafana dashboard come from the metric spec and stay in step with it:
every rule names only metrics (and labels) the spec exports, every rule carries a runbook_url
that lands on a section of docs/runbook.md, the committed copies under deploy/ are what the
generators make today, and promtool (when installed) accepts the rules file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from verifier.core.metrics import SPEC, MetricSpec, alert_rules
from verifier.services.alerts import (
    DASHBOARD_FILE,
    RULES_FILE,
    grafana_dashboard,
    panel_queries,
    render_dashboard,
    render_rules,
)

REPO = Path(__file__).resolve().parent.parent
RAILPROOF = str(Path(sys.executable).parent / "railproof")
RUNBOOK = REPO / "docs" / "runbook.md"

# PromQL words that are not metric names: aggregations, functions, keywords.
PROMQL_WORDS = {
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "by",
    "without",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "on",
    "ignoring",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
}


def sample_names(s: MetricSpec) -> set[str]:
    """The sample names Prometheus stores for one spec entry."""
    n = s.full_name
    if s.kind == "counter":
        return {n}
    if s.kind == "histogram":
        return {n + "_bucket", n + "_sum", n + "_count"}
    return {n}


EXPORTED = {name: s for s in SPEC for name in sample_names(s)}


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in a PromQL expression.

    Strings are blanked first (a label value never reads as a name), ranges dropped, and the
    label lists of `by (…)` / `without (…)` removed; what is left that is an identifier not
    followed by `(` and not a PromQL word is a metric name."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", e)
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", e):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if call or name in PROMQL_WORDS:
            continue
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
        out.append((name, labels))
    return out


def test_selector_parser():
    assert selectors(
        'sum by (rail_id, code) (rate(railproof_x_total{status="failed", code=~"a|b"}[15m])) > 1'
    ) == [("railproof_x_total", {"status", "code"})]
    assert selectors("railproof_gauge > 3600") == [("railproof_gauge", set())]
    assert selectors(
        'histogram_quantile(0.95, sum by (le) (rate(h_bucket{route="/v1/x"}[5m]))) > 0.25'
    ) == [("h_bucket", {"route"})]
    # A label value that looks like a metric name is not one.
    assert selectors('sum(m{code="railproof_other"})') == [("m", {"code"})]


def all_rules(doc: dict) -> list[dict]:
    return [r for g in doc["groups"] for r in g["rules"]]


# -- the rules -------------------------------------------------------------------------------


def test_every_rule_names_only_exported_metrics_and_their_labels():
    rules = all_rules(alert_rules())
    assert rules
    for rule in rules:
        found = selectors(rule["expr"])
        assert found, rule["expr"]
        for name, labels in found:
            assert name in EXPORTED, (rule["alert"], name)
            spec = EXPORTED[name]
            allowed = set(spec.labels) | ({"le"} if name.endswith("_bucket") else set())
            assert labels <= allowed, (rule["alert"], name, labels - allowed)


def test_every_rule_has_a_runbook_url_that_lands_on_a_runbook_section():
    anchors = {
        h.strip().lower() for h in re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), flags=re.M)
    }
    alerted = [s for s in SPEC if s.alerts]
    assert alerted
    rules = {r["alert"]: r for r in all_rules(alert_rules())}
    for s in alerted:
        for a in s.alerts:
            url = rules[a.name]["annotations"]["runbook_url"]
            base, _, anchor = url.partition("#")
            assert base == "docs/runbook.md" and (REPO / base).is_file(), url
            assert anchor in anchors, (a.name, anchor)
    # Every runbook section belongs to an alert that exists (none left behind by a rename).
    assert anchors == {a.anchor for s in SPEC for a in s.alerts}


def test_runbook_base_is_the_operators_choice():
    doc = json.loads(render_rules("https://wiki.example/railproof-runbook"))
    urls = {r["annotations"]["runbook_url"] for r in all_rules(doc)}
    assert all(u.startswith("https://wiki.example/railproof-runbook#railproof") for u in urls)


def test_the_runbook_classes_have_alerts():
    alert_names = {a.name for s in SPEC for a in s.alerts}
    assert {
        "RailproofEntitlementCheckLatency",
        "RailproofReadinessFailing",
        "RailproofAmbiguousTransfers",
        "RailproofWalletMismatch",
        "RailproofApprovalQueueAge",
        "RailproofPendingReviewAge",
        "RailproofRpcErrors",
        "RailproofReconciliationDrift",
        "RailproofHttpServerErrors",
        "RailproofRailSetupBlocked",
        "RailproofSettlementStalled",
        "RailproofNoAvailableRail",
    } <= alert_names
    assert len(alert_names) == sum(len(s.alerts) for s in SPEC)  # names are unique


def test_committed_rules_file_is_what_the_cli_generates(tmp_path):
    out = tmp_path / "rules.yml"
    r = subprocess.run(
        [RAILPROOF, "alerts", "generate", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    committed = (REPO / RULES_FILE).read_text()
    assert out.read_text() == committed == render_rules(), (
        f"{RULES_FILE} is stale: run `railproof alerts generate --out {RULES_FILE}`"
    )
    doc = yaml.safe_load(committed)  # the file Prometheus loads is YAML
    assert doc == alert_rules()


def test_cli_refuses_an_unwritable_output(tmp_path):
    r = subprocess.run(
        [RAILPROOF, "alerts", "dashboard", "--out", str(tmp_path / "missing" / "d.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_rules_file():
    r = subprocess.run(
        ["promtool", "check", "rules", str(REPO / RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(all_rules(alert_rules()))} rules found" in r.stdout


# -- the dashboard ---------------------------------------------------------------------------


def test_committed_dashboard_is_what_the_generator_makes():
    assert (REPO / DASHBOARD_FILE).read_text() == render_dashboard(), (
        f"{DASHBOARD_FILE} is stale: run `railproof alerts dashboard --out {DASHBOARD_FILE}`"
    )


def test_dashboard_has_a_panel_per_metric_in_rows_by_area():
    d = grafana_dashboard()
    rows: dict[str, list[str]] = {}
    current = None
    for p in d["panels"]:
        if p["type"] == "row":
            current = p["title"]
            assert current not in rows, "one row per area"
            rows[current] = []
        else:
            assert current is not None
            rows[current].append(p["title"])
    panels = [t for titles in rows.values() for t in titles]
    assert panels == [s.full_name for s in SPEC]
    assert len(rows) == len({s.area for s in SPEC})
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    # No two panels overlap on the grid.
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


def test_dashboard_queries_name_only_exported_metrics():
    for s in SPEC:
        for q in panel_queries(s):
            found = selectors(q["expr"])
            assert [name for name, _ in found] and all(
                EXPORTED.get(name) is s for name, _ in found
            ), (s.name, q["expr"])


def test_every_command_the_runbook_shows_carries_the_flags_the_cli_requires():
    # An operator copies these during an incident: a changing command without --confirm,
    # --incident-id and --operator-reason exits 2 and sends nothing.
    import typer.main

    from verifier.cli.main import app

    root = typer.main.get_command(app)
    text = (Path(__file__).resolve().parent.parent / "docs" / "runbook.md").read_text()
    shown = re.findall(r"`railproof ([a-z0-9-]+)([^`]*)`", text.replace("\n", " "))
    assert len(shown) >= 10
    bad = []
    for name, rest in shown:
        cmd = root.commands.get(name)  # type: ignore[attr-defined]
        assert cmd is not None, f"railproof {name}: no such command"
        flags = {o for p in cmd.params for o in getattr(p, "opts", ())}
        needed = {"--confirm", "--incident-id", "--operator-reason"} & flags
        if "--apply" in flags and "--apply" not in rest.split():
            needed.discard("--confirm")  # a dry run (reconcile) still names its incident
        elif "--confirm" not in needed:
            continue
        if not all(f in rest.split() for f in needed):
            bad.append(f"railproof {name}{rest}")
    assert bad == []
