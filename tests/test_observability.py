"""Observability: one metric spec (verifier.metrics.SPEC) drives /metrics, the admin spec
endpoint and the generated alert rules; counters move on the events they are named after;
logs are one JSON object per line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import OTHER_SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.helpers import FAKE_SESSION
from verifier.core.metrics import SPEC

BIN = Path(sys.executable).parent
SESSION = dict(FAKE_SESSION)
STAFF = auth(STAFF_TOKEN)
OP = {"confirm": True, "incident_id": "INC-7", "operator_reason": "observability test"}


def samples(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(client, name: str, **labels) -> float:
    """Sum of a sample over every label set that includes `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(client).items() if n == name and want <= set(ls))


def exposed_names() -> set[str]:
    """The sample names Prometheus will see for the SPEC (prometheus_client keeps a counter's
    `_total` and adds `_created`; histograms add `_bucket`, `_count`, `_sum`)."""
    names = set()
    for s in SPEC:
        n = s.full_name
        if s.kind == "counter":
            base = n.removesuffix("_total")
            names |= {base + "_total", base + "_created"}
        elif s.kind == "histogram":
            names |= {n + "_bucket", n + "_count", n + "_sum", n + "_created"}
        else:
            names.add(n)
    return names


# -- /metrics and the spec endpoint --------------------------------------------------------


def test_metrics_exposes_every_metric_in_spec(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    for s in SPEC:
        family = s.full_name.removesuffix("_total") if s.kind == "counter" else s.full_name
        assert families.get(family) == s.kind, (s.full_name, families.get(family))
        assert f"# HELP {s.full_name}" in r.text or f"# HELP {family}" in r.text


def test_metrics_token_keeps_the_counters_from_tenants(db_url):
    # The counters tell an existing id of another owner from a missing one (a denial is
    # counted only for the former): with RAILPROOF_METRICS_TOKEN only the scraper reads them.
    from fastapi.testclient import TestClient

    from tests.conftest import SERVICE_TOKEN, make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine
    from verifier.http.api import create_app

    engine = Engine(make_settings(db_url, metrics_token="scrape-me"), catalog=catalog_with_fake())
    engine.ensure_rail_states()
    try:
        with TestClient(create_app(engine)) as c:
            for headers in ({}, auth(SERVICE_TOKEN), STAFF, {"Authorization": "Bearer scrape-m"}):
                r = c.get("/metrics", headers=headers)
                assert r.status_code == 401, r.text
                assert r.json()["error"]["field"] == "Authorization"
                assert "scrape-me" not in r.text
            r = c.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert r.status_code == 200 and "railproof_owner_isolation_denials_total" in r.text
            assert c.get("/healthz").status_code == 200  # probes need no token
    finally:
        engine.db.dispose()


def test_admin_spec_lists_the_spec(client):
    r = client.get("/v1/admin/observability/spec", headers=STAFF)
    assert r.status_code == 200
    doc = r.json()
    assert [m["name"] for m in doc["metrics"]] == [s.full_name for s in SPEC]
    for m, s in zip(doc["metrics"], SPEC, strict=False):
        assert m["kind"] == s.kind and m["labels"] == list(s.labels) and m["help"] == s.help
        assert [a["name"] for a in m["alerts"]] == [a.name for a in s.alerts]
    assert client.get("/v1/admin/observability/spec", headers=auth()).status_code == 401


# -- counters move on real events ----------------------------------------------------------


def test_counters_move_on_real_events(client, chain):
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()

    # Owner isolation: bob reads alice's session.
    before = value(client, "railproof_owner_isolation_denials_total", reason="session")
    assert (
        client.get(
            f"/v1/payment-sessions/{sess['id']}", headers=auth(OTHER_SERVICE_TOKEN)
        ).status_code
        == 404
    )
    assert value(client, "railproof_owner_isolation_denials_total", reason="session") == before + 1

    # Idempotency conflict: one key, two bodies.
    h = {**auth(), "Idempotency-Key": "obs-1"}
    assert client.post("/v1/payment-sessions", headers=h, json=SESSION).status_code == 201
    r = client.post("/v1/payment-sessions", headers=h, json={**SESSION, "amount": 7})
    assert r.status_code == 409
    assert value(client, "railproof_idempotency_conflicts_total", kind="body_mismatch") == 1

    # Verification failure by code: the chain paid the wrong amount.
    chain.txs["fx00000bad"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx00000bad"}
    )
    assert r.json()["failure_code"] == "amount_mismatch"
    assert (
        value(
            client,
            "railproof_verification_attempts_total",
            status="failed",
            code="amount_mismatch",
            rail_id="fake_live",
        )
        == 1
    )

    # Apply-gate block: a verified proof whose settlement is only confirmed.
    sess2 = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs["fx0000c0f1"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess2["reference"]],
        "finality": "confirmed",
    }
    p2 = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess2["id"], "proof": "fx0000c0f1"}
    ).json()
    assert p2["status"] == "verified"
    assert value(client, "railproof_verification_attempts_total", status="verified") >= 1
    assert value(client, "railproof_verification_latency_seconds_count") >= 2
    r = client.post(f"/v1/admin/proofs/{p2['id']}/apply", headers=STAFF, json=OP)
    assert r.status_code == 409
    assert (
        value(
            client,
            "railproof_apply_gate_blocks_total",
            rail_id="fake_live",
            blocker="settlement_final",
        )
        == 1
    )

    # A receipt is counted when apply goes through.
    sess3 = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs["fx0000900d"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess3["reference"]],
    }
    p3 = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess3["id"], "proof": "fx0000900d"}
    ).json()
    assert (
        client.post(f"/v1/admin/proofs/{p3['id']}/apply", headers=STAFF, json=OP).status_code == 200
    )
    assert value(client, "railproof_receipts_total", rail_id="fake_live") == 1

    # Paused rail: new sessions and proofs are refused and counted.
    assert client.post("/v1/admin/rails/fake_live/pause", headers=STAFF, json=OP).status_code == 200
    assert client.post("/v1/payment-sessions", headers=auth(), json=SESSION).status_code == 409
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000abcd"}
    )
    assert r.json()["error"]["code"] == "rail_paused"
    assert value(client, "railproof_rail_paused_attempts_total", rail_id="fake_live") == 2

    # RPC errors: a transport failure is pending rpc_unavailable and counted.
    client.post("/v1/admin/rails/fake_live/resume", headers=STAFF, json=OP)
    from rails.errors import RpcUnavailable

    chain.fail_with = RpcUnavailable("node down")
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000dead"}
    )
    assert r.json()["status"] == "pending" and r.json()["failure_code"] == "rpc_unavailable"
    assert value(client, "railproof_rpc_errors_total", kind="verify") == 1


def test_pending_entitlement_age_gauge(client, engine, chain):
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs["fx0000c0f2"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": "confirmed",
    }
    client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000c0f2"}
    )
    assert value(client, "railproof_pending_entitlement_age_seconds") == 0
    from tests.helpers import advance

    advance(engine, 7200)
    assert value(client, "railproof_pending_entitlement_age_seconds") == pytest.approx(7200)


# -- generated alert rules -----------------------------------------------------------------

PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "avg",
    "max",
    "min",
    "count",
    "without",
    "on",
    "and",
    "or",
    "unless",
    "offset",
}


def _generate(tmp_path: Path) -> Path:
    out = tmp_path / "rules.yml"
    r = subprocess.run(
        [str(BIN / "railproof"), "alerts", "generate", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return out


def _load_rules(path: Path) -> dict:
    text = path.read_text()
    try:
        import yaml
    except ImportError:  # JSON is YAML: parse it as JSON when PyYAML is absent
        return json.loads(text)
    return yaml.safe_load(text)


def _metric_names(expr: str) -> set[str]:
    # Identifiers followed by a selector, a range or whitespace/operator, minus label names
    # inside {…} and PromQL keywords.
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, ranges
    stripped = re.sub(r"\((?:[a-z_, ]+)\)\s*\(", "(", stripped)  # by (a, b) (…)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped) if w not in PROMQL_WORDS}


def test_alert_rules_file_parses_and_has_prometheus_shape(tmp_path):
    doc = _load_rules(_generate(tmp_path))
    assert isinstance(doc["groups"], list) and doc["groups"]
    names = set()
    for g in doc["groups"]:
        assert isinstance(g["name"], str) and g["rules"]
        for rule in g["rules"]:
            assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"]
            names.add(rule["alert"])
    # One rule per alert in the spec, and every alert class the issue asks for.
    assert names == {a.name for s in SPEC for a in s.alerts}
    covered = {s.name for s in SPEC if s.alerts}
    assert covered >= {
        "pending_entitlement_age_seconds",
        "rail_paused_attempts_total",
        "idempotency_conflicts_total",
        "owner_isolation_denials_total",
        "verification_attempts_total",
        "rpc_errors_total",
        "reorgs_total",
        "apply_gate_blocks_total",
    }


def test_alert_rules_name_only_metrics_that_exist(tmp_path):
    doc = _load_rules(_generate(tmp_path))
    exposed = exposed_names()
    for g in doc["groups"]:
        for rule in g["rules"]:
            used = _metric_names(rule["expr"])
            assert used, rule["expr"]
            assert used <= exposed, (rule["alert"], sorted(used - exposed))


def test_metric_name_parser():
    assert _metric_names(
        'sum by (rail_id, code) (rate(railproof_x_total{status="failed"}[15m])) > 0.5'
    ) == {"railproof_x_total"}
    assert _metric_names("railproof_gauge > 3600") == {"railproof_gauge"}


# -- structured logs -----------------------------------------------------------------------


def test_cli_logs_are_one_json_object_per_line(tmp_path):
    env = {
        **os.environ,
        "RAILPROOF_DATABASE_URL": f"sqlite:///{tmp_path}/obs.db",
        "RAILPROOF_CHAIN": "cassette",
        "RAILPROOF_CLOCK": "2026-01-01T00:00:00Z",
        "RAILPROOF_AUDIT_KEY": "test-audit-key",
    }
    up = subprocess.run(
        [str(BIN / "railproof"), "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    r = subprocess.run(
        [str(BIN / "railproof"), "worker", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    for line in lines:
        doc = json.loads(line)
        assert isinstance(doc, dict)
        assert {"ts", "level", "logger", "msg"} <= set(doc)
    assert any(json.loads(line).get("worker") for line in lines)
