"""Each metric behind a runbook alert moves on the event it is named after, seen through
/metrics as Prometheus would scrape it: HTTP requests by route template, ambiguous transfers,
wallet mismatches, the review and approval queues' ages, failed readiness checks."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import STAFF_TOKEN, STAFF_TOKEN_2, auth
from tests.helpers import FAKE_SESSION, advance

STAFF = auth(STAFF_TOKEN)
OP = {"confirm": True, "incident_id": "INC-9", "operator_reason": "metrics test"}
SESSION = dict(FAKE_SESSION)


def value(client, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(
        s.value
        for fam in text_string_to_metric_families(client.get("/metrics").text)
        for s in fam.samples
        if s.name == name and want <= set(s.labels.items())
    )


def test_http_requests_are_counted_and_timed_by_route_template(client):
    before = value(client, "railproof_http_requests_total", route="/v1/entitlements")
    for _ in range(3):
        assert client.get("/v1/entitlements?owner_id=alice", headers=auth()).status_code == 200
    r = client.get("/v1/payment-sessions/no-such-id", headers=auth())
    assert r.status_code == 404
    labels = {"route": "/v1/entitlements", "method": "GET", "status": "200"}
    assert value(client, "railproof_http_requests_total", **labels) == before + 3
    # The entitlement-latency alert reads this histogram's buckets for this route.
    assert value(client, "railproof_http_request_duration_seconds_count", **labels) == 3
    assert value(client, "railproof_http_request_duration_seconds_bucket", le="+Inf", **labels) == 3
    # The template, never the id the caller typed.
    assert (
        value(
            client,
            "railproof_http_requests_total",
            route="/v1/payment-sessions/{session_id}",
            status="404",
        )
        == 1
    )
    text = client.get("/metrics").text
    assert "no-such-id" not in text


def test_unmatched_paths_and_odd_methods_do_not_grow_the_series(client):
    for i in range(5):
        assert client.get(f"/scan/{i}/wp-admin").status_code == 404
    assert client.request("PROPFIND", "/healthz").status_code in (404, 405)
    text = client.get("/metrics").text
    assert "wp-admin" not in text and "PROPFIND" not in text
    assert value(client, "railproof_http_requests_total", route="unmatched", status="404") == 5
    assert value(client, "railproof_http_requests_total", method="other") == 1


def test_ambiguous_transfer_counts_and_ages_in_the_review_queue(client, engine, chain, monkeypatch):
    # On a rail that binds no reference, two open sessions with the same recipient and
    # amount: the transfer could back either, so it is held for review.
    from tests.fake_rail import FakeAdapter

    monkeypatch.setattr(FakeAdapter, "binds_reference", False)
    r = client.post("/v1/payment-sessions", headers=auth(), json={**SESSION, "reference": None})
    assert r.status_code == 201, r.text
    mine = r.json()
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={**SESSION, "owner_id": "alice-2", "reference": None},
    )
    assert r.status_code == 201, r.text
    chain.txs["fx0000a0b1"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
    }
    assert value(client, "railproof_pending_review_age_seconds") == 0
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": mine["id"], "proof": "fx0000a0b1"}
    )
    assert (r.json()["status"], r.json()["failure_code"]) == (
        "requires_review",
        "ambiguous_transfer",
    )
    assert (
        value(
            client,
            "railproof_verification_attempts_total",
            rail_id="fake_live",
            code="ambiguous_transfer",
        )
        == 1
    )
    advance(engine, 5400)
    assert value(client, "railproof_pending_review_age_seconds") == pytest.approx(5400)


def test_wallet_mismatch_is_counted_by_code(client, chain):
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs["fx0000bee1"] = {
        "status": "ok",
        "to": "someoneelse",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000bee1"}
    )
    assert r.json()["failure_code"] == "wrong_recipient"
    assert (
        value(
            client,
            "railproof_verification_attempts_total",
            status="failed",
            code="wrong_recipient",
        )
        == 1
    )


def test_approval_queue_age_follows_the_oldest_pending_request(client, engine):
    assert value(client, "railproof_approval_queue_age_seconds") == 0
    r = client.post(
        "/v1/admin/rails/fake_live/production/request",
        headers=STAFF,
        json={"incident_id": "INC-9", "operator_reason": "metrics test", "enable": False},
    )
    assert r.status_code == 201, r.text
    advance(engine, 3 * 3600)
    assert value(client, "railproof_approval_queue_age_seconds") == pytest.approx(3 * 3600)
    # Decided: the queue is empty again.
    r = client.post(
        f"/v1/admin/approvals/{r.json()['approval_id']}/approve",
        headers=auth(STAFF_TOKEN_2),
        json=OP,
    )
    assert r.status_code == 200, r.text
    assert value(client, "railproof_approval_queue_age_seconds") == 0


def test_failed_readiness_checks_are_counted_by_check(client, engine, monkeypatch):
    from verifier.services import queries

    assert client.get("/readyz").status_code == 200
    assert value(client, "railproof_readiness_failures_total") == 0

    def unreachable(_engine):
        raise ConnectionError("database down")

    monkeypatch.setattr(queries, "current_revision", unreachable)
    for _ in range(2):
        assert client.get("/readyz").status_code == 503
    monkeypatch.undo()
    assert value(client, "railproof_readiness_failures_total", check="database") == 2
    assert value(client, "railproof_readiness_failures_total", check="schema") == 2


def test_setup_blockers_count_only_on_rails_enabled_for_production(client, engine):
    # Recorded chains: every rail lacks a live verifier; fake_live is enabled for production
    # and allowlisted, so that is its one blocker.
    rows = {r["rail_id"]: r for r in client.get("/v1/admin/rails/readiness", headers=STAFF).json()}
    assert rows["fake_live"]["production_enabled"]
    assert value(client, "railproof_rail_setup_blockers", rail_id="fake_live") == 1
    disabled = [rid for rid, r in rows.items() if not r["production_enabled"]]
    assert disabled and all(
        value(client, "railproof_rail_setup_blockers", rail_id=rid) == 0 for rid in disabled
    )
    engine.settings.apply_rail_allowlist = []  # and now not allowlisted either
    assert value(client, "railproof_rail_setup_blockers", rail_id="fake_live") == 2
    # A pause is deliberate: not a setup blocker.
    assert client.post("/v1/admin/rails/fake_live/pause", headers=STAFF, json=OP).status_code == 200
    assert value(client, "railproof_rail_setup_blockers", rail_id="fake_live") == 2


def test_unsettled_payment_age_follows_the_oldest_verified_proof_not_final(client, engine, chain):
    """A verified payment whose settlement is only confirmed (on x402: the facilitator has
    not settled it yet) ages per rail until its settlement is final."""
    sess = client.post("/v1/payment-sessions", headers=auth(), json=SESSION).json()
    chain.txs["fx0000c0f9"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": "confirmed",
    }
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000c0f9"}
    )
    assert r.json()["status"] == "verified" and not r.json()["settlement"]["is_final"]
    advance(engine, 2400)
    assert value(client, "railproof_unsettled_payment_age_seconds", rail_id="fake_live") == (
        pytest.approx(2400)
    )
    assert value(client, "railproof_unsettled_payment_age_seconds", rail_id="solana_usdc") == 0
    # The worker sees it final: the rail drops back to 0.
    from verifier.worker.loop import refresh_finality

    chain.statuses["fx0000c0f9"] = "finalized"
    assert refresh_finality(engine, "w-metrics", 10) == 1
    assert value(client, "railproof_unsettled_payment_age_seconds", rail_id="fake_live") == 0


def test_available_rails_counts_ready_rails(client, engine):
    rows = client.get("/v1/admin/rails/readiness", headers=STAFF).json()
    assert value(client, "railproof_available_rails") == sum(1 for r in rows if r["ready"])
    # Recorded chains: no rail has a live verifier, so none is ready.
    assert value(client, "railproof_available_rails") == 0
    # A live chain with an RPC URL for the fake network: fake_live becomes ready.
    engine.settings.chain = "live"
    engine.settings.env = {**engine.settings.env, "RAILPROOF_RPC_FAKENET": "http://127.0.0.1:9/"}
    rows = client.get("/v1/admin/rails/readiness", headers=STAFF).json()
    ready = [r["rail_id"] for r in rows if r["ready"]]
    assert "fake_live" in ready
    assert value(client, "railproof_available_rails") == len(ready)
    assert client.post("/v1/admin/rails/fake_live/pause", headers=STAFF, json=OP).status_code == 200
    assert value(client, "railproof_available_rails") == len(ready) - 1


def test_a_request_that_raised_counts_as_500_under_its_route(client, monkeypatch):
    from verifier.services import queries

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(queries, "entitlements_of", broken)
    r = client.get("/v1/entitlements?owner_id=alice", headers=auth())
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    monkeypatch.undo()
    labels = {"route": "/v1/entitlements", "method": "GET", "status": "500"}
    assert value(client, "railproof_http_requests_total", **labels) == 1
    assert value(client, "railproof_http_request_duration_seconds_count", **labels) == 1
