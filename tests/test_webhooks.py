"""Outbound webhooks: outbox, signed delivery to a real HTTP receiver on 127.0.0.1, retries,
order per resource, dead letters and staff replay, worker death, rollbacks — on SQLite and
PostgreSQL (the `engine` fixture is parametrized by `db_url`).

Time never passes by sleeping: deliver_due takes `now`, and each test moves it forward past
the (small) backoff of FAST. The `wiring` tests at the end go through the real state changes
(proofs, worker, gate, rails admin, API, CLI, metric spec) and skip, naming what is missing,
until those modules call verifier.events / verifier.webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
import typer
import yarl
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi import Header
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from tests.conftest import CLOCK, OTHER_SERVICE_TOKEN, SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.webhook_receiver import Receiver
from verifier.cli import webhooks as cli_webhooks
from verifier.core.config import Settings, describe_error
from verifier.http.api import Unauthorized, create_app
from verifier.http.webhook_routes import webhook_router
from verifier.services import webhooks
from verifier.services.events import EventType, emit
from verifier.services.webhooks import verify_signature
from verifier.storage.db import alembic_config, upgrade
from verifier.storage.models import AuditEvent, Base
from verifier.storage.webhook_models import DeliveryStatus, OutboxEvent, WebhookDelivery

FAST = webhooks.DeliveryConfig(
    timeout_s=1.5,
    max_attempts=3,
    backoff_initial_s=1.0,
    backoff_max_s=4.0,
    backoff_jitter_s=0.5,
    lease_s=5.0,
    concurrency=4,
)
ALL_TYPES = [e.value for e in EventType]
APPLY = {"confirm": True, "incident_id": "INC-1", "operator_reason": "webhook test"}
WEBHOOK_TABLES = {"webhook_endpoints", "outbox_events", "webhook_deliveries"}


# -- fixtures and helpers -------------------------------------------------------------------------
def _service_dep(engine):
    # The same contract as create_app's service dependency: (principal, owners) or 401.
    def dep(authorization: Annotated[str | None, Header()] = None) -> tuple[str, list[str]]:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        owners = engine.settings.service_owners(token) if token else None
        if owners is None:
            raise Unauthorized(
                "unauthorized", "Authorization: unknown service token", field="Authorization"
            )
        return "svc:" + ",".join(sorted(owners)), owners

    return dep


def _staff_dep(engine):
    def dep(authorization: Annotated[str | None, Header()] = None) -> str:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        name = engine.settings.staff_name(token) if token else None
        if name is None:
            raise Unauthorized(
                "unauthorized", "Authorization: unknown staff token", field="Authorization"
            )
        return name

    return dep


def _has_route(app, path: str) -> bool:
    return any(getattr(r, "path", None) == path for r in app.routes)


@pytest.fixture
def api(engine):
    """The real app; the webhook router is added here until create_app includes it."""
    app = create_app(engine)
    if not _has_route(app, "/v1/webhook-endpoints"):
        app.include_router(webhook_router(engine, _service_dep(engine), _staff_dep(engine)))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def subscribe(
    api, rcv: Receiver, types: list[str] | None = None, token: str = SERVICE_TOKEN
) -> dict[str, Any]:
    r = api.post(
        "/v1/webhook-endpoints",
        headers=auth(token),
        json={"url": rcv.url, "event_types": types or ALL_TYPES},
    )
    assert r.status_code == 201, r.text
    rcv.secret = r.json()["secret"]
    return r.json()


def emit_now(
    engine,
    type_: str,
    owner: str | None = "alice",
    rtype: str = "proof",
    rid: str = "p1",
    data: dict[str, Any] | None = None,
) -> str:
    with engine.db.tx() as s:
        return emit(
            s,
            engine.now(),
            type_,
            owner,
            rtype,
            rid,
            data if data is not None else {"id": rid, "type": type_},
        )


def deliveries(engine) -> list[WebhookDelivery]:
    with engine.db.tx() as s:
        return list(
            s.scalars(
                select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        )


def delivery_of(engine, event_id: str) -> WebhookDelivery:
    with engine.db.tx() as s:
        return s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id))


def pending_count(engine) -> int:
    with engine.db.tx() as s:
        return s.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == DeliveryStatus.pending)
        )


def drain(
    engine, cfg: webhooks.DeliveryConfig = FAST, start: datetime = CLOCK, rounds: int = 25
) -> datetime:
    """Sweep, moving the clock past the longest backoff each time, until nothing is pending."""
    t = start
    for _ in range(rounds):
        webhooks.deliver_due(engine, "w1", now=t, config=cfg)
        if pending_count(engine) == 0:
            return t
        t += timedelta(seconds=cfg.backoff_max_s + cfg.backoff_jitter_s + 1)
    raise AssertionError("deliveries still pending after every round")


def sequences(engine) -> dict[str, tuple[str, int]]:
    with engine.db.tx() as s:
        return {
            e.id: (f"{e.resource_type}:{e.resource_id}", e.sequence)
            for e in s.scalars(select(OutboxEvent))
        }


# -- signed delivery ------------------------------------------------------------------------------
def test_signed_delivery_of_each_event_type(engine, api, receiver):
    ep = subscribe(api, receiver)
    ids = {}
    for i, et in enumerate(EventType):
        ownerless = et.value.startswith("rail.")
        ids[et.value] = emit_now(
            engine,
            et,
            None if ownerless else "alice",
            "rail" if ownerless else et.value.split(".")[0],
            "fake_live" if ownerless else f"r{i}",
            {"id": f"r{i}", "n": i},
        )
    out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
    assert out["delivered"] == len(EventType), out
    got = receiver.wait_for(len(EventType))
    assert sorted(e["type"] for e in got) == sorted(ALL_TYPES)
    for e in got:
        assert set(e) == {"id", "type", "created_at", "owner_id", "data"}
        assert e["id"] == ids[e["type"]] and e["created_at"] == "2026-01-01T00:00:00Z"
        assert e["owner_id"] == (None if e["type"].startswith("rail.") else "alice")
    for req in receiver.requests:
        assert req["verified"] and req["content_type"] == "application/json"
        assert req["headers"]["webhook-id"] == json.loads(req["body"])["id"]
        assert verify_signature(ep["secret"], req["headers"], req["body"])
        assert not verify_signature(webhooks.new_secret(), req["headers"], req["body"])
        assert not verify_signature(ep["secret"], req["headers"], req["body"] + b" ")
    assert receiver.rejected == 0 and receiver.duplicates == 0
    rows = deliveries(engine)
    assert {d.status for d in rows} == {DeliveryStatus.delivered}
    assert all(d.attempts == 1 and d.delivered_at and d.last_status_code == 200 for d in rows)


def test_forged_and_stale_signatures_are_rejected(receiver):
    secret, body, now = webhooks.new_secret(), b'{"id":"evt_1"}', int(time.time())
    good = webhooks.signed_headers(secret, "evt_1", body, now)
    assert set(good) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert good["webhook-signature"].startswith("v1,")
    assert verify_signature(secret, good, body)
    assert verify_signature(secret, good, body.decode())
    # The spec's tolerance is five minutes either way (a minute of margin for a slow run).
    assert verify_signature(secret, webhooks.signed_headers(secret, "evt_1", body, now - 240), body)
    assert not verify_signature(
        secret, webhooks.signed_headers(secret, "evt_1", body, now - 3600), body
    )  # stale: a replay
    assert not verify_signature(
        secret, webhooks.signed_headers(secret, "evt_1", body, now + 3600), body
    )  # from the future
    assert not verify_signature(webhooks.new_secret(), good, body)  # forged
    assert not verify_signature(secret, good, b'{"id":"evt_2"}')  # tampered
    assert not verify_signature(secret, {**good, "webhook-id": "evt_2"}, body)  # another id
    sig = good["webhook-signature"]
    for bad in ("", "garbage", "v1", "v1,", "v2," + sig[3:], "v1,!!!", sig[3:]):
        assert not verify_signature(secret, {**good, "webhook-signature": bad}, body), bad
    for missing in good:
        assert not verify_signature(secret, {k: v for k, v in good.items() if k != missing}, body)
    assert not verify_signature(secret, {**good, "webhook-timestamp": "soon"}, body)
    assert not verify_signature(secret, good, b"\xff" + body)  # not UTF-8: not what was signed
    other = webhooks.signed_headers(webhooks.new_secret(), "evt_1", body, now)
    rotating = {**good, "webhook-signature": f"{other['webhook-signature']} {sig}"}
    assert verify_signature(secret, rotating, body)  # several signatures while keys rotate
    assert not verify_signature("whsec_", good, body)  # an empty key never verifies

    # The real receiver refuses a forged and a stale request and takes a good one.
    receiver.secret = secret
    payload = b'{"id":"evt_x","type":"proof.verified","created_at":"","owner_id":"a","data":{}}'
    sent = {
        "forged": webhooks.signed_headers(webhooks.new_secret(), "evt_x", payload, now),
        "stale": webhooks.signed_headers(secret, "evt_x", payload, now - 3600),
        "good": webhooks.signed_headers(secret, "evt_x", payload, now),
    }
    codes = {
        k: httpx.post(
            receiver.url,
            content=payload,
            timeout=5,
            headers={**v, "Content-Type": "application/json"},
        ).status_code
        for k, v in sent.items()
    }
    assert codes == {"forged": 400, "stale": 400, "good": 200}
    assert receiver.rejected == 2 and receiver.ids() == ["evt_x"]


# -- retries, order, dead letters -----------------------------------------------------------------
def test_failing_receiver_recovers_and_gets_every_event_once_in_order(engine, api, receiver):
    subscribe(api, receiver)
    plan = [
        ("proof.verified", "alice", "proof", "pA"),
        ("settlement.finalized", "alice", "proof", "pA"),
        ("entitlement.activated", "alice", "entitlement", "eB"),
        ("entitlement.revoked", "alice", "entitlement", "eB"),
        ("proof.failed", "alice-2", "proof", "pC"),
        ("rail.paused", None, "rail", "fake_live"),
        ("rail.resumed", None, "rail", "fake_live"),
    ]
    ids = [emit_now(engine, t, o, rt, rid) for t, o, rt, rid in plan]
    receiver.fail_next = 5  # the first five requests fail outright
    receiver.fail_after_processing = 2  # then two are taken but the answer is lost
    drain(engine, replace(FAST, max_attempts=8))

    got = receiver.ids()
    assert sorted(got) == sorted(ids) and len(got) == len(ids)  # exactly once after dedupe
    assert receiver.duplicates == 2  # at-least-once: the two lost answers were retried
    seq = sequences(engine)
    arrived: dict[str, list[int]] = {}
    for req in receiver.requests:  # every request, including failed ones, in arrival order
        res, n = seq[req["event_id"]]
        arrived.setdefault(res, []).append(n)
    for res, ns in arrived.items():
        assert ns == sorted(ns), f"{res}: event n+1 was sent before event n was done: {ns}"
    rows = deliveries(engine)
    assert {d.status for d in rows} == {DeliveryStatus.delivered}
    assert max(d.attempts for d in rows) > 1


def test_later_event_waits_until_earlier_is_delivered_or_dead_lettered(engine, api, receiver):
    subscribe(api, receiver)
    n1 = emit_now(engine, "proof.verified", rid="pR")
    n2 = emit_now(engine, "settlement.finalized", rid="pR")
    other = emit_now(engine, "proof.verified", rid="pS")
    receiver.fail_ids = {n1}
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
    assert receiver.ids() == [other]
    assert delivery_of(engine, n2).attempts == 0  # held back behind n1

    drain(engine)
    assert delivery_of(engine, n1).status == DeliveryStatus.dead_letter
    assert receiver.ids() == [other, n2]
    order = [r["event_id"] for r in receiver.requests]
    assert order.index(n2) > max(i for i, e in enumerate(order) if e == n1)


def test_silent_receiver_dead_letters_and_staff_replay_delivers(engine, api, receiver):
    ep = subscribe(api, receiver)
    receiver.hang = True
    ev = emit_now(
        engine,
        "receipt.created",
        rtype="receipt",
        rid="rc1",
        data={"id": "rc1", "amount": "1500000"},
    )
    drain(engine)
    d = delivery_of(engine, ev)
    assert d.status == DeliveryStatus.dead_letter and d.attempts == FAST.max_attempts
    assert d.last_error.startswith("timeout") and receiver.ids() == []

    staff = auth(STAFF_TOKEN)
    r = api.get("/v1/admin/webhook-events", params={"status": "dead_letter"}, headers=staff)
    assert r.status_code == 200 and [x["event_id"] for x in r.json()] == [ev]
    assert api.get("/v1/admin/webhook-events?status=delivered", headers=staff).json() == []
    assert api.get("/v1/admin/webhook-events?status=nope", headers=staff).status_code == 422
    r = api.get(f"/v1/admin/webhook-events/{ev}", headers=staff)
    assert r.status_code == 200 and r.json()["event"]["data"] == {"id": "rc1", "amount": "1500000"}
    assert r.json()["deliveries"][0]["status"] == "dead_letter"
    assert ep["secret"] not in r.text
    assert api.get(f"/v1/admin/webhook-events/{ev}", headers=auth()).status_code == 401
    assert api.get("/v1/admin/webhook-events/evt_nope", headers=staff).status_code == 404
    assert api.get(f"/v1/admin/webhook-events/{d.id}", headers=staff).json()["event"]["id"] == ev

    url = f"/v1/admin/webhook-events/{ev}/replay"
    r = api.post(url, headers=staff, json={"reason": "receiver fixed"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "confirm"
    r = api.post(url, headers=staff, json={"confirm": True})
    assert r.status_code == 422 and r.json()["error"]["field"] == "incident_id"
    r = api.post(url, headers=staff, json={"confirm": True, "incident_id": "INC-42"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "operator_reason"
    receiver.recover()
    r = api.post(
        url,
        headers=staff,
        json={"confirm": True, "reason": "receiver fixed", "incident_id": "INC-42"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["replayed"] == [d.id]
    again = api.post(
        url, headers=staff, json={"confirm": True, "operator_reason": "again", "incident_id": "I"}
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_dead_letter"
    with engine.db.tx() as s:
        a = s.scalar(select(AuditEvent).where(AuditEvent.action == "webhook.replayed"))
        assert (a.actor, a.subject_id, a.incident_id, a.reason) == (
            "ops1",
            d.id,
            "INC-42",
            "receiver fixed",
        )
        assert a.data["previous"]["last_error"].startswith("timeout")

    webhooks.deliver_due(engine, "w1", config=FAST)  # a replay is due now, on the wall clock
    assert receiver.ids() == [ev]
    assert delivery_of(engine, ev).status == DeliveryStatus.delivered
    assert all(r["verified"] for r in receiver.requests)


# -- worker death, concurrency, rollback ----------------------------------------------------------
def test_worker_killed_after_claiming_loses_nothing(engine, api, receiver):
    subscribe(api, receiver)
    ids = [emit_now(engine, "proof.verified", rid=f"p{i}") for i in range(5)]
    ids.append(emit_now(engine, "settlement.finalized", rid="p0"))  # behind p0's first event
    doomed = webhooks.claim(engine, "doomed", 10, CLOCK, replace(FAST, per_token=10))
    assert len(doomed) == 5  # the worker took them... and died without sending anything

    quiet = webhooks.deliver_due(engine, "rescuer", now=CLOCK + timedelta(seconds=1), config=FAST)
    assert quiet["claimed"] == 0 and receiver.ids() == []  # leases still held

    later = CLOCK + timedelta(seconds=FAST.lease_s + 1)
    out = webhooks.deliver_due(engine, "rescuer", now=later, config=FAST)
    assert out["delivered"] == 6, out
    assert sorted(receiver.ids()) == sorted(ids) and receiver.duplicates == 0
    assert all(
        d.status == DeliveryStatus.delivered and d.claimed_by is None for d in deliveries(engine)
    )


class _Killed(BaseException):
    """Stands for the process dying (not an Exception, so nothing catches it)."""


def test_worker_killed_between_post_and_record_redelivers_and_receiver_dedupes(
    engine, api, receiver, monkeypatch
):
    subscribe(api, receiver)
    ids = [emit_now(engine, "proof.verified", rid=f"p{i}") for i in range(3)]

    def record_or_die(*args, **kw):
        raise _Killed()  # the process is gone before any outcome is written

    monkeypatch.setattr(webhooks, "_record", record_or_die)
    with pytest.raises(_Killed):
        webhooks.deliver_due(engine, "doomed", now=CLOCK, config=replace(FAST, per_token=3))
    monkeypatch.undo()
    assert sorted(receiver.ids()) == sorted(ids)  # POSTed, but no outcome written
    assert pending_count(engine) == 3

    later = CLOCK + timedelta(seconds=FAST.lease_s + 1)
    webhooks.deliver_due(engine, "rescuer", now=later, config=FAST)
    assert pending_count(engine) == 0
    assert sorted(receiver.ids()) == sorted(ids) and receiver.duplicates == 3


def test_worker_lost_on_the_final_attempt_goes_to_dead_letter_not_lost(engine, api, receiver):
    subscribe(api, receiver)
    ev = emit_now(engine, "proof.verified")
    cfg = replace(FAST, max_attempts=1)
    assert len(webhooks.claim(engine, "doomed", 10, CLOCK, cfg)) == 1
    webhooks.deliver_due(engine, "w2", now=CLOCK + timedelta(seconds=cfg.lease_s + 1), config=cfg)
    d = delivery_of(engine, ev)
    assert d.status == DeliveryStatus.dead_letter and "worker lost" in d.last_error


def test_two_workers_at_once_never_send_an_event_twice(engine, api, receiver):
    subscribe(api, receiver)
    ids = [emit_now(engine, "proof.verified", rid=f"p{i}") for i in range(12)]
    # What is asked here is that no event goes twice; every one arriving in this one pass
    # needs the receiver to answer each POST in time, which a loaded host can delay past
    # FAST's 1.5 s (a timed-out POST is retried later, as it should be): a lease that holds.
    cfg = replace(FAST, concurrency=2, timeout_s=15.0, lease_s=60.0)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            webhooks.deliver_due(engine, name, now=CLOCK, config=cfg)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    assert sorted(receiver.ids()) == sorted(ids) and receiver.duplicates == 0
    assert len(receiver.requests) == 12


def test_no_event_for_a_rolled_back_transaction(engine, api, receiver):
    subscribe(api, receiver)
    with pytest.raises(RuntimeError):
        with engine.db.tx() as s:
            emit(s, engine.now(), "receipt.created", "alice", "receipt", "rc1", {"id": "rc1"})
            emit(
                s,
                engine.now(),
                "entitlement.activated",
                "alice",
                "entitlement",
                "e1",
                {"id": "e1", "status": "active"},
            )
            raise RuntimeError("apply failed after the receipt insert")
    with engine.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(OutboxEvent)) == 0
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    assert webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)["claimed"] == 0
    assert receiver.requests == []

    ev = emit_now(engine, "receipt.created", rtype="receipt", rid="rc1")  # committed: sent
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
    assert receiver.ids() == [ev]


# -- endpoints API --------------------------------------------------------------------------------
def test_endpoints_api_secret_once_validation_and_owner_isolation(
    engine, api, receiver, monkeypatch
):
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", False)
    ep = subscribe(api, receiver, ["rail.paused", "proof.verified", "proof.verified"])
    assert ep["secret"].startswith("whsec_") and ep["owners"] == ["alice", "alice-2"]
    # A Standard Webhooks secret: strict base64 of 32 random bytes after the prefix.
    assert len(base64.b64decode(ep["secret"].removeprefix("whsec_"), validate=True)) == 32
    assert webhooks.secret_problem(ep["secret"]) is None
    assert ep["event_types"] == ["proof.verified", "rail.paused"]
    listed = api.get("/v1/webhook-endpoints", headers=auth())
    assert [e["id"] for e in listed.json()] == [ep["id"]]
    assert "secret" not in listed.json()[0] and ep["secret"] not in listed.text
    again = api.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": receiver.url, "event_types": ["proof.verified"]},
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "webhook_endpoint_exists"

    def refused(body: dict[str, Any], field: str) -> None:
        r = api.post("/v1/webhook-endpoints", headers=auth(), json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text

    ok = {"event_types": ["proof.verified"]}
    refused({**ok, "url": "ftp://127.0.0.1/hook"}, "url")
    refused({**ok, "url": "http://example.com/hook"}, "url")  # off this machine
    refused({**ok, "url": "http://user:pw@127.0.0.1/hook"}, "url")
    refused({**ok, "url": "not a url"}, "url")
    # What the delivering client cannot parse, or reads another host from, is refused as the
    # URL it is (never a 500), and the loopback check reads the host it would connect to.
    for bad in (
        "http://[::1]x/hook",
        "http://[::1].example.com/hook",
        "http://[::1]]/hook",
        "http://127.0.0.1:0/hook",
        "http://xn--/hook",  # malformed A-labels: the client could not send to them
        "http://xn--zz/hook",
        "http://[::1%25eth0]/hook",  # an IPv6 zone id
    ):
        refused({**ok, "url": bad}, "url")
    for raw, field in (
        (
            b'{"url": "http://127.0.0.1/\\ud800", "event_types": ["proof.verified"]}',
            "url",
        ),  # a lone surrogate, as JSON escapes carry it
        (b'{"url": "http://127.0.0.1/x", "event_types": ["\\ud800"]}', "event_types"),
    ):
        r = api.post(
            "/v1/webhook-endpoints",
            headers={**auth(), "Content-Type": "application/json"},
            content=raw,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    refused({"url": receiver.url + "2", "event_types": ["proof.nope"]}, "event_types")
    refused({"url": receiver.url + "2", "event_types": []}, "event_types")
    refused({**ok, "url": receiver.url + "2", "extra": 1}, "extra")
    assert api.post("/v1/webhook-endpoints", json={**ok, "url": receiver.url}).status_code == 401

    # Bob's token sees nothing of Alice's and cannot delete it (404, as if missing).
    with Receiver() as bob_rcv:
        bob = subscribe(api, bob_rcv, ["proof.verified", "rail.paused"], OTHER_SERVICE_TOKEN)
        assert [
            e["id"]
            for e in api.get("/v1/webhook-endpoints", headers=auth(OTHER_SERVICE_TOKEN)).json()
        ] == [bob["id"]]
        r = api.delete(f"/v1/webhook-endpoints/{ep['id']}", headers=auth(OTHER_SERVICE_TOKEN))
        assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_endpoint_not_found"
        alice_ev = emit_now(engine, "proof.verified", "alice")
        rail_ev = emit_now(engine, "rail.paused", None, "rail", "fake_live")
        emit_now(engine, "proof.verified", "bob", rid="pb")
        webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
        assert sorted(receiver.ids()) == sorted([alice_ev, rail_ev])
        assert len(bob_rcv.ids()) == 2 and rail_ev in bob_rcv.ids()
        assert alice_ev not in bob_rcv.ids()

    # Deleting stops deliveries and cancels what was still queued.
    queued = emit_now(engine, "proof.verified", "alice", rid="p9")
    r = api.delete(f"/v1/webhook-endpoints/{ep['id']}", headers=auth())
    assert r.status_code == 200 and r.json()["active"] is False
    assert r.json()["cancelled_deliveries"] == 1
    assert delivery_of(engine, queued).status == DeliveryStatus.cancelled
    assert api.get("/v1/webhook-endpoints", headers=auth()).json() == []
    assert api.delete(f"/v1/webhook-endpoints/{ep['id']}", headers=auth()).status_code == 404
    emit_now(engine, "proof.verified", "alice", rid="p10")
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
    assert len(receiver.ids()) == 2
    with engine.db.tx() as s:
        actions = set(s.scalars(select(AuditEvent.action)))
    assert {"webhook_endpoint.created", "webhook_endpoint.deleted"} <= actions


def test_send_time_host_check_when_a_setting_is_withdrawn(engine, api, monkeypatch):
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", True)
    r = api.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": "https://hooks.example.invalid/railproof", "event_types": ["proof.verified"]},
    )
    assert r.status_code == 201, r.text
    # An IDN host in punycode, as the client sends it (its Unicode spelling is refused).
    idn = {"event_types": ["proof.verified"]}
    r = api.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": "https://xn--bcher-kva.example/h", **idn},
    )
    assert r.status_code == 201, r.text
    r = api.post(
        "/v1/webhook-endpoints", headers=auth(), json={"url": "https://bücher.example/h", **idn}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "url", r.text
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", False)
    ev = emit_now(engine, "proof.verified")
    out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=replace(FAST, max_attempts=1))
    d = delivery_of(engine, ev)
    assert out["dead_lettered"] == 2 and d.last_error.startswith("not sent")  # both endpoints


# -- policies, migration, CLI ---------------------------------------------------------------------
def test_backoff_is_exponential_bounded_and_jittered():
    cfg = webhooks.DeliveryConfig(backoff_initial_s=30, backoff_max_s=3600, backoff_jitter_s=30)
    for attempt in range(1, 15):
        base = 30 * 2 ** (attempt - 1)
        got = webhooks.backoff(attempt, cfg).total_seconds()
        assert min(base, 3600) <= got <= min(base + 30, 3600)
    assert len({webhooks.backoff(1, cfg) for _ in range(20)}) > 1  # jitter spreads retries
    with pytest.raises(ValueError):
        webhooks.DeliveryConfig(timeout_s=10, lease_s=5)


def test_delivery_settings_come_from_the_settings_class(monkeypatch):
    for name in [k for k in os.environ if k.startswith("RAILPROOF_WEBHOOK_")]:
        monkeypatch.delenv(name)
    # The hand-built defaults are the Settings defaults.
    assert webhooks.DeliveryConfig.from_settings(Settings(env={})) == webhooks.DeliveryConfig()
    monkeypatch.setenv("RAILPROOF_WEBHOOK_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("RAILPROOF_WEBHOOK_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("RAILPROOF_WEBHOOK_ALLOW_ANY_HOST", "1")
    monkeypatch.setenv("RAILPROOF_WEBHOOK_CONCURRENCY", "")  # empty: the default, as before
    monkeypatch.setenv("RAILPROOF_WEBHOOK_TOKEN_CONCURRENCY", "3")
    assert webhooks.DeliveryConfig.from_settings(Settings(env={})) == webhooks.DeliveryConfig(
        timeout_s=2.5, max_attempts=4, allow_any_host=True, per_token=3
    )
    for name, value, words in (
        ("RAILPROOF_WEBHOOK_TOKEN_CONCURRENCY", "0", "greater than or equal to 1"),
        ("RAILPROOF_WEBHOOK_MAX_ATTEMPTS", "0", "greater than or equal to 1"),
        ("RAILPROOF_WEBHOOK_TIMEOUT_SECONDS", "soon", "valid number"),
        ("RAILPROOF_WEBHOOK_ALLOW_ANY_HOST", "perhaps", "valid boolean"),
        ("RAILPROOF_WEBHOOK_LEASE_SECONDS", "2", "must be longer than"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValueError) as e:
                Settings(env={})
            lines = describe_error(e.value)
            assert any(ln.startswith(name) and words in ln for ln in lines), lines


def test_migration_0002_matches_the_models(db_url):
    eng = create_engine(db_url)
    try:
        with eng.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        eng.dispose()
    ours = [d for d in diffs if any(t in repr(d) for t in WEBHOOK_TABLES)]
    assert ours == []
    # The migration also goes down and up again cleanly.
    command.downgrade(alembic_config(db_url), "0001")
    upgrade(db_url)


def test_cli_list_inspect_replay(engine, api, receiver, monkeypatch):
    subscribe(api, receiver)
    ev = emit_now(engine, "entitlement.revoked", rtype="entitlement", rid="e1")
    receiver.fail_ids = {ev}
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=replace(FAST, max_attempts=1))
    base = "http://railproof.test"
    monkeypatch.setenv("RAILPROOF_API_BASE_URL", base)
    monkeypatch.setenv("RAILPROOF_STAFF_TOKEN", STAFF_TOKEN)

    def via_test_client(method, url, headers=None, json=None, params=None, timeout=None):
        return api.request(
            method, url.removeprefix(base), headers=headers, json=json, params=params
        )

    monkeypatch.setattr("verifier.cli.ops.httpx.request", via_test_client)
    app = typer.Typer()
    cli_webhooks.register(app)
    run = CliRunner().invoke

    r = run(app, ["list-webhook-events", "--status", "dead_letter", "--json"])
    assert r.exit_code == 0, r.output
    assert f'"event_id": "{ev}"' in r.output
    assert run(app, ["list-webhook-events", "--status", "dead_letter"]).exit_code == 0
    assert run(app, ["inspect-webhook-event", ev]).exit_code == 0
    assert run(app, ["inspect-webhook-event", "evt_missing"]).exit_code == 1
    assert run(app, ["replay-webhook-event", ev, "--reason", "fixed"]).exit_code == 2
    assert run(app, ["replay-webhook-event", ev, "--confirm"]).exit_code == 2  # no --reason
    r = run(
        app,
        [
            "replay-webhook-event",
            ev,
            "--reason",
            "receiver fixed",
            "--confirm",
            "--incident-id",
            "INC-7",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    # Without incident context the CLI refuses before sending anything (exit 2); with it, the
    # API refuses a second replay of an event that is not dead (exit 1).
    assert run(app, ["replay-webhook-event", ev, "--reason", "x", "--confirm"]).exit_code == 2
    assert (
        run(
            app,
            ["replay-webhook-event", ev, "--reason", "x", "--confirm", "--incident-id", "INC-7"],
        ).exit_code
        == 1
    )
    receiver.recover()
    webhooks.deliver_due(engine, "w1", config=FAST)  # replays are due on the wall clock
    assert receiver.ids() == [ev]
    with engine.db.tx() as s:
        a = s.scalar(select(AuditEvent).where(AuditEvent.action == "webhook.replayed"))
        assert (a.incident_id, a.reason) == ("INC-7", "receiver fixed")


# -- end to end through real state changes -------------------------------------------------


def _session(api, rail: str = "fake_live") -> dict[str, Any]:
    r = api.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": rail,
            "access_product_id": "pro",
            "amount": 1500000,
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def _paid(
    chain, sess: dict[str, Any], tx: str, finality: str = "finalized", status: str = "ok"
) -> None:
    chain.txs[tx] = {
        "status": status,
        "to": "fatreasury",
        "amount": 1500000,
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": finality,
    }


def _submit(api, sess: dict[str, Any], tx: str) -> dict[str, Any]:
    r = api.post("/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx})
    assert r.status_code == 201, r.text
    return r.json()


def _types_by_resource(got: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in got:
        key = e["data"].get("id") or e["data"].get("rail_id")
        out.setdefault(key, []).append(e["type"])
    return out


def test_wired_payment_lifecycle_events_reach_the_receiver_in_order(engine, api, receiver, chain):
    from verifier.worker import loop as worker

    subscribe(api, receiver)
    sess = _session(api)
    _paid(chain, sess, "fx00aa11bb", finality="confirmed")
    proof = _submit(api, sess, "fx00aa11bb")
    assert proof["status"] == "verified"
    chain.statuses["fx00aa11bb"] = "finalized"
    engine.settings.clock = CLOCK + timedelta(hours=1)  # the finality re-check is due
    worker.sweep(engine, "w1")
    staff = auth(STAFF_TOKEN)
    ctx = {"confirm": True, "incident_id": "INC-1", "operator_reason": "test"}
    r = api.post(f"/v1/admin/proofs/{proof['id']}/apply", headers=staff, json=ctx)
    assert r.status_code == 200, r.text
    receipt_id, ent_id = r.json()["receipt_id"], r.json()["entitlement_id"]
    assert (
        api.post(f"/v1/admin/entitlements/{ent_id}/revoke", headers=staff, json=ctx).status_code
        == 200
    )
    assert api.post("/v1/admin/rails/fake_live/pause", headers=staff, json=ctx).status_code == 200
    assert api.post("/v1/admin/rails/fake_live/resume", headers=staff, json=ctx).status_code == 200
    worker.sweep(engine, "w1")  # the worker's sweep delivers

    got = receiver.wait_for(7)
    by = _types_by_resource(got)
    assert by[proof["id"]] == ["proof.verified", "settlement.finalized"]
    assert by[receipt_id] == ["receipt.created"]
    assert by[ent_id] == ["entitlement.activated", "entitlement.revoked"]
    assert by["fake_live"] == ["rail.paused", "rail.resumed"]
    assert receiver.rejected == 0 and receiver.duplicates == 0
    verified = next(e for e in got if e["type"] == "proof.verified")
    # Every field of the proof read, but the rail's state at read time (`rail_paused`).
    read = set(api.get(f"/v1/proofs/{proof['id']}", headers=auth()).json()) - {"rail_paused"}
    assert read <= set(verified["data"])
    assert verified["owner_id"] == "alice"


def test_wired_failed_review_and_pending_proofs(engine, api, receiver, chain):
    subscribe(api, receiver)
    failed_sess, review_sess = _session(api), _session(api, "fake_review")
    pending_sess = _session(api)
    _paid(chain, failed_sess, "fx00000001", status="failed")
    _paid(chain, review_sess, "fx00000002")
    failed = _submit(api, failed_sess, "fx00000001")
    review = _submit(api, review_sess, "fx00000002")
    pending = _submit(api, pending_sess, "fx00000003")  # not on chain yet: no event
    assert (failed["status"], review["status"], pending["status"]) == (
        "failed",
        "requires_review",
        "pending",
    )
    webhooks.deliver_due(engine, "w1", config=FAST)
    by = _types_by_resource(receiver.wait_for(2))
    assert by == {failed["id"]: ["proof.failed"], review["id"]: ["proof.requires_review"]}


def test_wired_reorg_emits_settlement_reorged(engine, api, receiver, chain):
    from verifier.worker import loop as worker

    subscribe(api, receiver, ["settlement.reorged"])
    sess = _session(api)
    _paid(chain, sess, "fx00cc11dd", finality="confirmed")
    proof = _submit(api, sess, "fx00cc11dd")
    chain.statuses["fx00cc11dd"] = "reorged"
    engine.settings.clock = CLOCK + timedelta(hours=1)
    worker.sweep(engine, "w1")
    webhooks.deliver_due(engine, "w1", config=FAST)
    assert [(e["type"], e["data"]["id"]) for e in receiver.wait_for(1)] == [
        ("settlement.reorged", proof["id"])
    ]


def test_wired_rolled_back_apply_emits_nothing(engine, api, receiver, chain):
    subscribe(api, receiver, ["receipt.created", "entitlement.activated"])
    sess = _session(api)
    _paid(chain, sess, "fx00ee11ff")
    proof = _submit(api, sess, "fx00ee11ff")
    engine.fail_after_receipt_insert = True
    r = api.post(f"/v1/admin/proofs/{proof['id']}/apply", headers=auth(STAFF_TOKEN), json=APPLY)
    assert r.status_code == 500
    with engine.db.tx() as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.type.in_(["receipt.created", "entitlement.activated"]))
            )
            == 0
        )
    engine.fail_after_receipt_insert = False
    r = api.post(f"/v1/admin/proofs/{proof['id']}/apply", headers=auth(STAFF_TOKEN), json=APPLY)
    assert r.status_code == 200, r.text
    webhooks.deliver_due(engine, "w1", config=FAST)
    assert sorted(e["type"] for e in receiver.wait_for(2)) == [
        "entitlement.activated",
        "receipt.created",
    ]


def test_wired_metrics_spec_cli_and_router(engine, api, receiver):
    from verifier.cli.main import app as cli_app
    from verifier.core.metrics import SPEC

    spec = {m.name: m for m in SPEC}
    assert spec["webhook_delivery_latency_seconds"].kind == "histogram"
    assert spec["webhook_delivery_failures_total"].kind == "counter"
    assert spec["webhook_dead_letter_depth"].kind == "gauge"
    assert spec["webhook_dead_letter_depth"].alerts
    subscribe(api, receiver)
    ev = emit_now(engine, "proof.verified")
    receiver.fail_ids = {ev}
    webhooks.deliver_due(engine, "w1", now=CLOCK, config=replace(FAST, max_attempts=1))
    text = api.get("/metrics").text
    assert "railproof_webhook_dead_letter_depth 1.0" in text
    assert "railproof_webhook_delivery_failures_total" in text
    names = {c.name for c in cli_app.registered_commands}
    assert {"list-webhook-events", "inspect-webhook-event", "replay-webhook-event"} <= names


def test_another_spelling_of_an_endpoints_url_is_the_same_endpoint(api):
    """The duplicate check compares receivers, not strings: each spelling below would have
    doubled every delivery to one receiver. A trailing or doubled slash, another path or port
    may be another receiver and is accepted."""
    base = "http://127.0.0.1:9000/h"
    TYPES = {"event_types": ["proof.verified"]}
    first = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": base, **TYPES})
    assert first.status_code == 201, first.text
    for same in (
        base,
        "HTTP://127.0.0.1:9000/h",
        "http://127.0.0.1:9000/h?",
        "http://127.0.0.1:9000/h#x",
        "http://localhost:9000/h",
        "http://LOCALHOST:9000/h",
        "http://127.0.0.1:9000/%68",
        "http://127.0.0.1:9000/a/../h",
        "http://127.0.0.1:9000/a/%2e%2E/h",
    ):
        r = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": same, **TYPES})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "webhook_endpoint_exists"), same
    for other in ("http://127.0.0.1:9000/h/", "http://127.0.0.1:9001/h", "http://127.0.0.1:9000/g"):
        r = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": other, **TYPES})
        assert r.status_code == 201, (other, r.text)
    # Another token's endpoint for the same receiver is its own.
    r = api.post(
        "/v1/webhook-endpoints", headers=auth(OTHER_SERVICE_TOKEN), json={"url": base, **TYPES}
    )
    assert r.status_code == 201, r.text
    key = webhooks.endpoint_key
    assert key("http://127.0.0.1:80/h") == key("http://127.0.0.1/h")
    for ipv6 in ("[0::1]", "[::0001]", "[0:0:0:0:0:0:0:1]", "[::1]"):
        assert key(f"http://{ipv6}:9/h") == "http://[::1]:9/h", ipv6
    assert key("http://127.0.0.1:9000") == key("http://127.0.0.1:9000/")  # both POST /
    assert key("http://127.0.0.1:9000/%7e/%7E") == key("http://127.0.0.1:9000/~/~")
    assert key("http://127.0.0.1:9000/a%3bb") == key("http://127.0.0.1:9000/a%3Bb")
    # Where yarl's normalization is right (unreserved escapes, non-ASCII, dot segments), the
    # key's path is yarl's; yarl also decodes escaped reserved characters, which the key keeps.
    for path in (
        "/%7e%41/b/./c/../d",
        "/x%2Dy%5f",
        "/%C3%A9t%c3%a9",
        "/",
        "/a/%2e%2e/h",
        "/a/%2E/h",
        "/a/.%2e/b/..",
        "/a/..%2e/h",
        "/%2e%2e/h",
    ):
        u = "http://127.0.0.1:9000" + path
        assert key(u) == "http://127.0.0.1:9000" + yarl.URL(u).raw_path, u
    # An escaped reserved character is not the character to a server (RFC 3986 6.2.2.2).
    for escaped, plain in (("a%3Bv=2", "a;v=2"), ("a%2Fb", "a/b"), ("a%3Fb", "a?b")):
        assert key(f"http://127.0.0.1:9000/{escaped}") != key(f"http://127.0.0.1:9000/{plain}")
    r = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": base + "/a;v=2", **TYPES})
    assert r.status_code == 201, r.text
    r = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": base + "/a%3Bv=2", **TYPES})
    assert r.status_code == 201, r.text


# -- with any host allowed: public addresses only, the address checked is the one reached ----------
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",  # the cloud's metadata service
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "[::ffff:10.0.0.1]",
        "[fd00::1]",
        "[fe80::1]",
        # Not global, though Python 3.11.7's `is_global` (before the CVE-2024-4032 fix) says so.
        "192.0.0.100",  # IETF protocol assignments
        "192.0.0.8",
        "[fec0::1]",  # site-local
        "[5f00::1]",  # SRv6 SIDs
    ],
)
def test_any_host_still_refuses_addresses_that_are_not_public(host):
    problem = webhooks.url_problem(f"https://{host}/hook", allow_any_host=True)
    assert problem is not None and "not a public address" in problem, problem


def test_any_host_takes_public_addresses_names_and_listed_private_networks():
    for url in (
        "https://93.184.216.34/h",
        "https://192.0.0.9/h",  # PCP anycast: the globally reachable ones in 192.0.0.0/24
        "https://192.0.0.10/h",  # TURN anycast
        "https://[2606:4700::1111]/h",
        "https://hooks.example/h",
    ):
        assert webhooks.url_problem(url, allow_any_host=True) is None, url
    nets = ["10.0.0.0/8"]
    assert webhooks.url_problem("https://10.1.2.3/h", True, nets) is None
    assert webhooks.url_problem("https://[::ffff:10.1.2.3]/h", True, nets) is None
    assert "not a public address" in (webhooks.url_problem("https://192.168.1.1/h", True, nets))


def test_registering_a_private_address_with_any_host_names_the_url(engine, api, monkeypatch):
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", True)
    r = api.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": "http://169.254.169.254/latest/meta-data", "event_types": ["proof.verified"]},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "url", r.text
    assert "not a public address" in r.json()["error"]["message"]
    monkeypatch.setattr(engine.settings, "webhook_private_networks", ["169.254.0.0/16"])
    r = api.post(
        "/v1/webhook-endpoints",
        headers=auth(),
        json={"url": "http://169.254.169.254/latest/meta-data", "event_types": ["proof.verified"]},
    )
    assert r.status_code == 201, r.text


def _named_receiver(api, receiver: Receiver, name: str) -> dict[str, Any]:
    url = receiver.url.replace("127.0.0.1", name)
    r = api.post(
        "/v1/webhook-endpoints", headers=auth(), json={"url": url, "event_types": ALL_TYPES}
    )
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    return r.json()


def _resolving(monkeypatch, *addresses: str) -> list[str]:
    asked: list[str] = []

    async def resolve(host: str, port: int, *_: Any) -> list[Any]:
        asked.append(host)
        return [webhooks.ipaddress.ip_address(a) for a in addresses]

    monkeypatch.setattr(webhooks, "_resolve", resolve)
    return asked


def test_a_name_resolving_to_a_private_address_is_not_sent_to(engine, api, receiver, monkeypatch):
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", True)
    _named_receiver(api, receiver, "hooks.example")
    cfg = replace(FAST, allow_any_host=True, max_attempts=1)
    for addresses in (["127.0.0.1"], ["93.184.216.34", "10.0.0.7"]):
        asked = _resolving(monkeypatch, *addresses)
        ev = emit_now(engine, "proof.verified", rid=f"p-{len(addresses)}")
        out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=cfg)
        d = delivery_of(engine, ev)
        assert asked == ["hooks.example"] and out["dead_lettered"] == 1, out
        assert "resolves to an address that is not a public address" in d.last_error
    assert receiver.requests == []


def test_a_name_is_resolved_once_and_the_address_checked_is_the_one_reached(
    engine, api, receiver, monkeypatch
):
    # A listed private network lets the loopback receiver stand in for a public one.
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", True)
    ep = _named_receiver(api, receiver, "hooks.example")
    asked = _resolving(monkeypatch, "127.0.0.1")
    cfg = replace(FAST, allow_any_host=True, private_networks=("127.0.0.0/8",))
    ev = emit_now(engine, "proof.verified")
    assert webhooks.deliver_due(engine, "w1", now=CLOCK, config=cfg)["delivered"] == 1
    (req,) = receiver.requests
    port = receiver.url.split(":")[2].split("/")[0]
    assert asked == ["hooks.example"]
    assert req["headers"]["host"] == f"hooks.example:{port}"
    assert req["headers"]["webhook-id"] == ev and verify_signature(
        ep["secret"], req["headers"], req["body"]
    )


IDN_A_LABEL = "xn--fa-hia.de"  # faß.de under IDNA 2008 (what registries and browsers use)


def test_an_idn_host_is_resolved_and_named_in_tls_as_registered(engine, api, receiver, monkeypatch):
    # The host as sent is the A-label; httpx's `.host` is its Unicode form (`faß.de`), which
    # Python's `idna` codec (IDNA 2003) encodes as `fass.de`, another registered domain: the
    # POST went to that domain's address, with its certificate checked. The A-label is what
    # is resolved, and the TLS server name.
    asked: list[bytes] = []
    real = socket.getaddrinfo

    def dns(host, port, *a, **k):
        if host in (IDN_A_LABEL, IDN_A_LABEL.encode()) or (
            isinstance(host, str) and not host.isascii()
        ):
            # What the socket module sends to the resolver: a str through Python's `idna`
            # codec, bytes as they are. The receiver stands in for the domain.
            asked.append(host.encode("idna") if isinstance(host, str) else host)
            return real("127.0.0.1", port, *a, **k)
        return real(host, port, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    monkeypatch.setattr(engine.settings, "webhook_allow_any_host", True)
    ep = _named_receiver(api, receiver, IDN_A_LABEL)
    assert webhooks.url_problem(ep["url"], True) is None
    cfg = replace(FAST, allow_any_host=True, private_networks=("127.0.0.0/8",))
    ev = emit_now(engine, "proof.verified")
    assert webhooks.deliver_due(engine, "w1", now=CLOCK, config=cfg)["delivered"] == 1
    assert set(asked) == {IDN_A_LABEL.encode()}, f"registered {IDN_A_LABEL}, resolved {asked}"
    assert receiver.ids() == [ev]

    request = httpx.Request("POST", f"https://{IDN_A_LABEL}/hooks")
    assert asyncio.run(webhooks._pinned(request, ["127.0.0.0/8"])) is None
    assert request.extensions["sni_hostname"] == IDN_A_LABEL
    assert request.url.host == "127.0.0.1" and request.headers["host"] == IDN_A_LABEL


def test_private_networks_setting_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("RAILPROOF_WEBHOOK_PRIVATE_NETWORKS", "10.0.0.0/8, 192.168.1.7")
    settings = Settings(env={})
    assert settings.webhook_private_networks == ["10.0.0.0/8", "192.168.1.7/32"]
    assert webhooks.DeliveryConfig.from_settings(settings).private_networks == (
        "10.0.0.0/8",
        "192.168.1.7/32",
    )
    monkeypatch.setenv("RAILPROOF_WEBHOOK_PRIVATE_NETWORKS", "10.0.0.0/8,intranet")
    with pytest.raises(ValueError) as e:
        Settings(env={})
    lines = describe_error(e.value)
    assert any(
        ln.startswith("RAILPROOF_WEBHOOK_PRIVATE_NETWORKS") and "'intranet'" in ln for ln in lines
    ), lines


def test_a_follower_left_at_its_delivered_predecessors_retry_time_goes_out(engine, api, receiver):
    # The resource's next event was written while the event ahead of it waited for a retry
    # hours away, and that one's late 2xx was recorded before the follower's transaction
    # committed (so `followers_due_at` could not see it): the follower is due in hours
    # though nothing is ahead of it. The delivering worker brings it forward.
    subscribe(api, receiver)
    first = emit_now(engine, "proof.verified", rid="p-late")
    later = CLOCK + timedelta(hours=3)
    with engine.db.tx() as s:
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == first))
        d.attempts, d.next_attempt_at = 2, later
    second = emit_now(engine, "settlement.finalized", rid="p-late")
    assert delivery_of(engine, second).next_attempt_at.replace(tzinfo=None) == later.replace(
        tzinfo=None
    )
    with engine.db.tx() as s:  # the late 2xx, recorded without seeing the follower
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == first))
        d.status, d.delivered_at, d.next_attempt_at = DeliveryStatus.delivered, CLOCK, None
    out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
    assert out["delivered"] == 1 and receiver.ids() == [second], (out, receiver.ids())
    # A follower still behind a pending predecessor, or with retries of its own, stays.
    third = emit_now(engine, "proof.verified", rid="p-other")
    with engine.db.tx() as s:
        d = s.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == third))
        d.attempts, d.next_attempt_at = 1, later
    fourth = emit_now(engine, "settlement.finalized", rid="p-other")
    with engine.db.tx() as s:
        assert webhooks.delivery_repo.unblock_followers(s, CLOCK) == 0
    assert delivery_of(engine, fourth).next_attempt_at.replace(tzinfo=None) == later.replace(
        tzinfo=None
    )


@pytest.mark.parametrize("action", ["create", "rotate"])
def test_a_secret_committed_before_the_process_died_is_given_again_to_the_keys_retry(
    engine, api, receiver, monkeypatch, action
):
    # The endpoint's transaction commits its secret and the Idempotency-Key's completion
    # together: a process dying right after that commit (here: failing before it answers)
    # leaves the key's answer stored, and the retry gets the secret that now signs.
    from verifier.services import webhook_endpoints

    body = {"url": receiver.url, "event_types": ["proof.verified"]}
    path = "/v1/webhook-endpoints"
    if action == "rotate":
        path = f"{path}/{subscribe(api, receiver)['id']}/rotate-secret"
    name = "create_endpoint" if action == "create" else "rotate_secret"
    real = getattr(webhook_endpoints, name)

    def dies_after_commit(*a, **k):
        real(*a, **k)
        raise RuntimeError("process lost after the commit")

    monkeypatch.setattr(webhook_endpoints, name, dies_after_commit)
    key = {**auth(), "Idempotency-Key": f"hook-{action}-1"}
    assert api.post(path, headers=key, json=body).status_code == 500
    monkeypatch.setattr(webhook_endpoints, name, real)
    r = api.post(path, headers=key, json=body)
    assert r.status_code == (201 if action == "create" else 200), r.text
    assert r.headers["Idempotent-Replayed"] == "true"
    receiver.secret = r.json()["secret"]
    ev = emit_now(engine, "proof.verified", rid=f"p-{action}")
    assert webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)["delivered"] == 1
    (req,) = [q for q in receiver.requests if q["headers"]["webhook-id"] == ev]
    assert verify_signature(r.json()["secret"], req["headers"], req["body"])


# openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=a.hooks.example
#   -addext subjectAltName=DNS:a.hooks.example (its own CA: valid for that name only)
A_HOOKS_CERT_AND_KEY = """\
-----BEGIN CERTIFICATE-----
MIIDMzCCAhugAwIBAgIUA8rBeYiIAlxjy5rxRvyRFEK4EJAwDQYJKoZIhvcNAQEL
BQAwGjEYMBYGA1UEAwwPYS5ob29rcy5leGFtcGxlMCAXDTI2MTIwNzEzMTIzN1oY
DzIxMjYxMTEzMTMxMjM3WjAaMRgwFgYDVQQDDA9hLmhvb2tzLmV4YW1wbGUwggEi
MA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQDJkIVs2DlSRPB0P9XbkcpnOQId
z4+PrLVCRl2bLtvshBPHsGsBBxs2WGMGLGi6Dxfu7Zy35IP2Sw11XNoD698QGdGq
bl1c1gGCetxFJC/PpQKR0cD1FxMC8MEWqbDGu5nfcmr+RD2IiSPk88pv8xcvpTBA
B709jdhBoSRtLByTp4mpf4RQBxHEtkbxKpmDJuZKTSfacCOsuDCN8UfpfvPYPMww
aw3aFoSwGAuKZQY0luSbY8nbzJh/FaRQP2RnCAT/heSEWg/bODY3bhnRGeLSiasq
NBhV1xwit8uMH8Q5u8mQO9jG8vbgI28LGo5qNLE38UXbPYrsHf6Z45h4aqPBAgMB
AAGjbzBtMB0GA1UdDgQWBBQ2xcokhTsgS5kTEVW1NiKh1P6HFTAfBgNVHSMEGDAW
gBQ2xcokhTsgS5kTEVW1NiKh1P6HFTAPBgNVHRMBAf8EBTADAQH/MBoGA1UdEQQT
MBGCD2EuaG9va3MuZXhhbXBsZTANBgkqhkiG9w0BAQsFAAOCAQEAF+JlFsWA8j+k
XwCfuYtUHq8Y521JjqYv92vGEHd200c285v/Fwf5gOtAC0xR8BOSsT1m31sv76z2
LM7o6lBjvMCSofIxTiZeLQ4PcuEx68c9JG+tF1OCu+bzb1jFgiAg+lDEOoLrscqS
PZ/hx+v/Rm95qS+t/q8H99t7U+LW8iYPkJ0YGFbYEdNHxMHc1t+zO4W/JRWxIHWq
U03dJjQZt+umfavppfBBpmRzjXKlZkPQ13Kthmxrm9ZT3TUnlgWATVfp/sZz2DpD
00i7qP1e08m+Vmj16KcceL6D0AUJnqHttxfNBQGfJW4RUV/b142M9mRtcBB1Z5zW
WG/NQIyyCQ==
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDJkIVs2DlSRPB0
P9XbkcpnOQIdz4+PrLVCRl2bLtvshBPHsGsBBxs2WGMGLGi6Dxfu7Zy35IP2Sw11
XNoD698QGdGqbl1c1gGCetxFJC/PpQKR0cD1FxMC8MEWqbDGu5nfcmr+RD2IiSPk
88pv8xcvpTBAB709jdhBoSRtLByTp4mpf4RQBxHEtkbxKpmDJuZKTSfacCOsuDCN
8UfpfvPYPMwwaw3aFoSwGAuKZQY0luSbY8nbzJh/FaRQP2RnCAT/heSEWg/bODY3
bhnRGeLSiasqNBhV1xwit8uMH8Q5u8mQO9jG8vbgI28LGo5qNLE38UXbPYrsHf6Z
45h4aqPBAgMBAAECggEACKGeFQ5TstvHScyx/utvT2kRiu7bpu6Ux6tbtsyuF9Xp
qVNuQZnPgIEO1hgKVzohb3A2/DW85BiyqtcfC6vxRJWjQZ9+pmSqC+K9XyvKU4n6
Lv32CIjEatieBbc4HeQXfFbZ96luBe3zEfE4NsyiFL6hVYL/VFnbbA2kEa8h471+
7WmhDqhV1XjvI/uVGJlctwHxc5xWUcUyX11XDbERoZkt93dy7GzdnfsdjD9z5rE+
6X8qrWXdziYy1kzZ1yOmk2Zf/Qyiwdw8cf0hCrPP+XgNfETNj9jsE5eRr+3akBxQ
BmI5EOvUq8lB2bndzzMaXq+Sw4g8MwAngO4XvaiuQQKBgQD8pMlJuN2fUa9mBas1
F/KoFKcn/kinxAYEfxw+FZ+vPLnRG4iHbPsHd8U0Nj7ktscxqfldgnrlOTcigetI
hcQgs1gk/Zn42yV4F/M/SToz6KuRX5DnNoeKMDIVfURJDtkZKL61UN54sNlaYz44
0jXE5aUioys/N3t+vA82D3XzNwKBgQDMPgUuvgEL5iZGfe5dCBjnMDmD4LwIfM78
D7vu14KBFIqcJ11YPmwDrJSisrUmeiGBNxBtibnDi4+aWniViCvfRp5n70Shyr8e
57qBE9Y+fIwGbG+A+MWUTwPqgCh2ZA4roj+Yz9TudPOZyKcarYNzT1jZYDoE6mLI
KOwdCEwMxwKBgG1aqmHFqe/+/Gutgni9v+Ou5NdzwmETgQNLPZ9F3tOL9mYjg8oS
iumllu9Nl5WJ49iEWRJ3mthDFrFSCNRgSg9ZcYq5Vn8X5DUCMOCwwoebaz/GXMMn
oC1ZRSR2DyuMSL4SG9IBifo1mi78i/8uReXO/NZsSBjZ3BN0NSVSNdyrAoGALRK2
1BTsaDLXWZErDG7gCA01dCwhcwIQL8JNKC15SIE/Aa0SRYopDjqE5s7neWFUiY6c
WoAdddET1O2IVP+jJvgPt0IvdEEpImnjV98H1exofnZpuR2thMhXReYYh+AW3HxG
6rNa+3Dl3ZdRgWqvasAlDHvW8gTD3gZh7RpKpjsCgYEAkjWSX3LfeOisnVYKr5+g
gRFmiNWq/cXW3emgqhgmit8UNnfaWTwYWFejtVC25atY+sDADRBKeQdCDscrXQYX
cmHMjo9WWdnNMol088CuL4lMsQHIPSkhPzpO94DrJWXCB2zvBtc8sXfdDBUER5jO
2L07YqKcnV7nGv3BYsviCvc=
-----END PRIVATE KEY-----
"""


def test_a_pinned_connection_is_never_reused_for_another_name_at_the_address(tmp_path, monkeypatch):
    # Tenant A's https://a.hooks.example and tenant B's https://b.hooks.example resolve to
    # one address (a CDN, a shared ingress) whose certificate names a.hooks.example only.
    # B's delivery must fail TLS verification even right after A's (a non-2xx, read whole,
    # would have left A's connection in the pool): never sent over A's TLS session.
    import asyncio
    import http.server
    import ssl

    pem = tmp_path / "a.pem"
    pem.write_text(A_HOOKS_CERT_AND_KEY)
    hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hosts.append(self.headers["host"])
            self.send_response(503)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"busy")

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _resolving(monkeypatch, "127.0.0.1")

    def job(host: str) -> webhooks.Job:
        url = f"https://{host}:{port}/hook"
        return webhooks.Job("whd", "evt", "whe", url, webhooks.new_secret(), b"{}")

    async def deliveries() -> tuple[webhooks.Result, webhooks.Result]:
        verify = ssl.create_default_context(cafile=str(pem))
        async with httpx.AsyncClient(trust_env=False, verify=verify) as http_client:
            a = await webhooks.post(http_client, job("a.hooks.example"), True, 5.0, ["127.0.0.0/8"])
            b = await webhooks.post(http_client, job("b.hooks.example"), True, 5.0, ["127.0.0.0/8"])
        return a, b

    try:
        a, b = asyncio.run(deliveries())
    finally:
        srv.shutdown()
    assert a.status_code == 503 and hosts == [f"a.hooks.example:{port}"], (a, hosts)
    assert not b.ok and b.status_code is None and "certificate" in (b.error or "").lower(), b
    assert hosts == [f"a.hooks.example:{port}"]


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a9fe:a9fe]",  # NAT64's well-known prefix: 169.254.169.254
        "[64:ff9b:1::a00:7]",  # a local NAT64 prefix (RFC 8215): 10.0.0.7
        "[2002:a00:7::1]",  # 6to4: 10.0.0.7
        "[::10.0.0.7]",  # IPv4-compatible
        "[2001:0:4136:e378:8000:63bf:f5ff:fff8]",  # Teredo, its client 10.0.0.7
        "[2001:0:a00:1::f7f7:f7f7]",  # Teredo, its server 10.0.0.1
        "[64:ff9b:1:a9fe:a9:fe00:808:808]",  # local-use NAT64 at /48: 169.254.169.254
        "[::ffff:0:7f00:1]",  # IPv4-translated (SIIT): 127.0.0.1
        "[::ffff:0:a00:1]",  # IPv4-translated: 10.0.0.1
    ],
)
def test_ipv6_addresses_standing_for_a_private_ipv4_one_are_refused(host):
    problem = webhooks.url_problem(f"http://{host}/hook", allow_any_host=True)
    assert problem is not None and "not a public address" in problem, problem
    assert webhooks.url_problem("http://[64:ff9b::808:808]/hook", allow_any_host=True) is None
    assert webhooks.url_problem("http://[::ffff:0:808:808]/hook", allow_any_host=True) is None
