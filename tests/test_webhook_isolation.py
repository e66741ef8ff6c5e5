"""A tenant's webhook receiver cannot hold up anyone else: one POST takes at most the delivery
timeout, however the receiver dribbles its answer out, and the worker's webhooks go out from a
thread of their own, so a receiver that holds its answer delays no proof's re-check, finality
or apply. Whatever a receiver answers is stored only as text any database holds, and one
delivery's outcome that cannot be recorded leaves the others of its round recorded."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from rails.base import canonical_json
from tests.conftest import CLOCK, OTHER_SERVICE_TOKEN, SERVICE_TOKEN
from tests.test_webhooks import FAST, api, delivery_of, emit_now, subscribe  # noqa: F401
from tests.webhook_receiver import Receiver
from verifier.services import proofs, webhooks
from verifier.services.events import envelope
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Receipt
from verifier.storage.repo import webhooks as webhooks_repo
from verifier.storage.webhook_models import DeliveryStatus, OutboxEvent, WebhookDelivery
from verifier.worker import loop as worker


def _delivery(engine) -> WebhookDelivery:
    with engine.db.tx() as s:
        (d,) = s.scalars(select(WebhookDelivery)).all()
        s.expunge(d)
        return d


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_timeout(engine, api):  # noqa: F811
    # Each byte of the answer comes well within httpx's per-read timeout; the whole answer
    # (a 200) would take ~12 s against a 1.5 s timeout. It used to be waited for, and
    # delivered; the timeout now bounds the whole POST.
    with Receiver() as rcv:
        subscribe(api, rcv)
        rcv.drip_gap = 0.25
        emit_now(engine, "proof.verified")
        out = webhooks.deliver_due(engine, "w1", config=FAST)
        assert (out["claimed"], out["delivered"], out["retrying"]) == (1, 0, 1), out
        d = _delivery(engine)
        assert d.status == "pending" and d.last_error == "timeout: no answer within 1.5 s"
        assert rcv.ids()  # the receiver had the event; its answer never came in time


def test_a_2xx_is_an_acknowledgement_whatever_the_body_does(engine, api):  # noqa: F811
    # The status line and headers come at once, the body a byte every 1 s (timeout 1.5 s):
    # the receiver has the event and said so; its body is not waited for.
    with Receiver() as rcv:
        subscribe(api, rcv)
        rcv.drip_gap, rcv.drip_body_only = 1.0, True
        emit_now(engine, "proof.verified")
        out = webhooks.deliver_due(engine, "w1", config=FAST)
        assert (out["claimed"], out["delivered"]) == (1, 1), out
        assert _delivery(engine).status == "delivered" and len(rcv.requests) == 1


def test_a_receiver_holding_its_answer_delays_no_other_tenants_apply(engine, api, chain):  # noqa: F811
    engine.settings.auto_apply = True
    engine.settings.webhook_timeout_seconds = 60.0
    with Receiver() as rcv:
        subscribe(api, rcv)  # alice's endpoint
        rcv.hold = threading.Event()
        emit_now(engine, "proof.verified")  # one delivery for alice's receiver, held
        stop = threading.Event()
        run = threading.Thread(
            target=worker.run_worker,
            args=(engine,),
            kwargs={"interval": 0.05, "name": "w1", "stop": stop},
            daemon=True,
        )
        run.start()
        try:
            deadline = time.monotonic() + 30
            while not rcv.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rcv.requests, "the held delivery never reached the receiver"
            # Another owner's payment, verified and final, while alice's POST is in flight.
            bob = open_session(
                engine,
                NewSession(
                    owner_id="bob",
                    rail_id="fake_live",
                    access_product_id="pro",
                    amount=1_500_000,
                    recipient="fatreasury",
                ),
                actor="svc",
            )
            chain.txs["fx0000b0b0"] = {
                "status": "ok",
                "to": "fatreasury",
                "amount": 1_500_000,
                "asset": "fusd",
                "refs": [bob["reference"]],
                "finality": "finalized",
            }
            proof, _ = proofs.submit_proof(engine, bob["id"], "fx0000b0b0", ["bob"])
            assert proof["status"] == "verified", proof
            applied = None
            while applied is None and time.monotonic() < deadline:
                with engine.db.tx() as s:
                    applied = s.scalar(select(Receipt.id).where(Receipt.proof_id == proof["id"]))
                time.sleep(0.02)
            assert applied is not None, "bob's proof was not applied"
            # Applied while alice's delivery was still held: claimed, unanswered.
            d = _delivery(engine)
            assert d.status == "pending" and d.claimed_by == "w1" and d.last_error is None
        finally:
            rcv.hold.set()
            stop.set()
            run.join(timeout=30)
        assert not run.is_alive()
        assert _delivery(engine).status == "delivered"


_CONTROL_CHARS_BODY = b"bad\x00request\r\n\x1b[31m\xed\xa0\x80 " + b"x" * 2000


def _answer_500(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(500)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _ControlCharsAnswer(BaseHTTPRequestHandler):
    """A receiver answering 500 with a NUL and other control characters in its body."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _answer_500(self, _CONTROL_CHARS_BODY)

    def log_message(self, *a):
        pass


@contextlib.contextmanager
def _alice_receiver(api, handler):  # noqa: F811 - the api fixture, passed in
    """A receiver on loopback answering with `handler`, subscribed to proof.verified for the
    service token (alice's); yields nothing, shut down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        r = api.post(
            "/v1/webhook-endpoints",
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            json={
                "url": f"http://127.0.0.1:{server.server_address[1]}/h",
                "event_types": ["proof.verified"],
            },
        )
        assert r.status_code == 201, r.text
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_a_receivers_control_characters_are_not_stored_nor_stop_the_round(engine, api):  # noqa: F811
    # PostgreSQL text cannot hold NUL: the start of this answer, stored as last_error as it
    # came, failed the write, and the sweep with it before bob's delivery of the same round
    # was recorded (bob had the event; his delivery stayed leased, was sent again, and could
    # dead-letter though his receiver took it).
    with _alice_receiver(api, _ControlCharsAnswer), Receiver() as bob_rcv:
        subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
        alice_ev = emit_now(engine, "proof.verified", "alice", rid="pa")
        bob_ev = emit_now(engine, "proof.verified", "bob", rid="pb")

        out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)

        assert (out["delivered"], out["retrying"], out["unrecorded"]) == (1, 1, 0), out
        assert bob_rcv.ids() == [bob_ev]
        assert delivery_of(engine, bob_ev).status == DeliveryStatus.delivered
        d = delivery_of(engine, alice_ev)
        assert d.status == DeliveryStatus.pending and d.claimed_by is None
        assert d.last_status_code == 500
        assert d.last_error == webhooks.answer_error(500, _CONTROL_CHARS_BODY[:300])
        assert d.last_error.isprintable() and len(d.last_error) <= 1024


class _EchoingAnswer(BaseHTTPRequestHandler):
    """A receiver that fails and echoes the request it got: in its body (as many frameworks'
    error pages do), or where the status line goes (not HTTP at all)."""

    in_status_line = False

    def do_POST(self):  # noqa: N802
        got = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.in_status_line:
            self.wfile.write(b"HTTP/1.1 " + got + b"\r\n\r\n")
            self.close_connection = True
            return
        _answer_500(self, b"invalid payload: " + got)

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("in_status_line", [False, True])
def test_a_receivers_echo_of_the_payload_is_not_kept(engine, api, in_status_line):  # noqa: F811
    # A failing receiver that echoed the request put up to 300 characters of the event's
    # payload in last_error, which listings show without --include-payload. Its answer's
    # text is not kept: the status, and a fingerprint of the answer's start.
    handler = type("Echo", (_EchoingAnswer,), {"in_status_line": in_status_line})
    secret_data = {"tx_hash": "0xfeedfacecafe", "amount": "1234.56", "payer": "wallet-789"}
    with _alice_receiver(api, handler):
        ev = emit_now(engine, "proof.verified", "alice", rid="pa", data=secret_data)
        out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
        assert out["retrying"] == 1, out
        d = delivery_of(engine, ev)
        body = canonical_json(envelope(_event(engine, ev)))
        if in_status_line:
            assert d.last_status_code is None
            assert d.last_error == "RemoteProtocolError: the answer is not valid HTTP (not kept)"
        else:
            assert d.last_status_code == 500
            assert re.fullmatch(
                r"HTTP 500 \(answer not kept; sha256 of its start: [0-9a-f]{16}\)", d.last_error
            ), d.last_error
            assert d.last_error == webhooks.answer_error(500, (b"invalid payload: " + body)[:300])
        (listed,) = webhooks.list_events(engine)
        shown = json.dumps(listed)
        assert "invalid payload" not in shown
        for value in secret_data.values():
            assert value not in shown, value


def _event(engine, event_id: str) -> OutboxEvent:
    with engine.db.tx() as s:
        ev = s.get(OutboxEvent, event_id)
        s.expunge(ev)
        return ev


def test_an_outcome_that_cannot_be_recorded_leaves_the_rest_of_the_round_recorded(
    engine,
    api,  # noqa: F811
    monkeypatch,
):
    with Receiver() as alice_rcv, Receiver() as bob_rcv:
        subscribe(api, alice_rcv, ["proof.verified"])
        subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
        alice_ev = emit_now(engine, "proof.verified", "alice", rid="pa")
        bob_ev = emit_now(engine, "proof.verified", "bob", rid="pb")
        alice_d = delivery_of(engine, alice_ev).id
        real = webhooks_repo.delivery_locked

        def failing(s, delivery_id):
            if delivery_id == alice_d:  # any database error writing this one outcome
                raise RuntimeError("cannot record this outcome")
            return real(s, delivery_id)

        monkeypatch.setattr(webhooks_repo, "delivery_locked", failing)
        out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
        assert (out["claimed"], out["delivered"], out["unrecorded"]) == (2, 1, 1), out
        assert delivery_of(engine, bob_ev).status == DeliveryStatus.delivered
        # Alice's keeps its lease, and goes out again once the lease has run out.
        d = delivery_of(engine, alice_ev)
        assert d.status == DeliveryStatus.pending and d.claimed_by == "w1"
        monkeypatch.undo()
        later = CLOCK + timedelta(seconds=FAST.lease_s + 1)
        out = webhooks.deliver_due(engine, "w2", now=later, config=FAST)
        assert (out["claimed"], out["delivered"]) == (1, 1), out
        assert delivery_of(engine, alice_ev).status == DeliveryStatus.delivered
        assert alice_rcv.ids() == [alice_ev] and bob_rcv.ids() == [bob_ev]


def test_a_hanging_receivers_backlog_does_not_hold_up_another_tenants_delivery(engine, api):  # noqa: F811
    # Alice's receiver answers nothing and she has twenty deliveries due before bob's one.
    # Rounds of `concurrency` POSTs, earliest due first, each waiting for its slowest, sent
    # bob's only after five rounds of alice's timeouts; she now holds `per_token` slots
    # and bob's goes out in the first claim.
    with Receiver() as alice_rcv, Receiver() as bob_rcv:
        subscribe(api, alice_rcv, ["proof.verified"])
        subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
        alice_rcv.hold = threading.Event()
        for i in range(20):
            emit_now(engine, "proof.verified", "alice", rid=f"pa{i}")
        bob_ev = emit_now(engine, "proof.verified", "bob", rid="pb")
        out: dict[str, dict[str, int]] = {}
        sweep = threading.Thread(
            target=lambda: out.setdefault(
                "w1", webhooks.deliver_due(engine, "w1", 6, now=CLOCK, config=FAST)
            )
        )
        sweep.start()
        try:
            assert [e["id"] for e in bob_rcv.wait_for(1, deadline_s=15)] == [bob_ev]
            with alice_rcv.lock:
                alice_seen = len(alice_rcv.requests)
            assert alice_seen <= FAST.per_token, alice_seen
        finally:
            alice_rcv.hold.set()
            sweep.join(30)
        assert out["w1"]["claimed"] == 6 and out["w1"]["delivered"] >= 1, out


def test_a_token_has_at_most_per_token_deliveries_leased_across_workers(engine, api):  # noqa: F811
    # Alice's events go to three endpoints of her token: together they get `per_token`
    # deliveries in flight, counting other workers' leases, and bob's goes out beside them.
    with Receiver() as a1, Receiver() as a2, Receiver() as a3, Receiver() as bob_rcv:
        for rcv in (a1, a2, a3):
            subscribe(api, rcv, ["proof.verified"])
        subscribe(api, bob_rcv, ["proof.verified"], OTHER_SERVICE_TOKEN)
        alice = [emit_now(engine, "proof.verified", "alice", rid=f"pa{i}") for i in range(3)]
        bob = emit_now(engine, "proof.verified", "bob", rid="pb")

        def owners(*claims: list[webhooks.Job]) -> dict[str, int]:
            ids = [(j.event_id, j.endpoint_id) for c in claims for j in c]
            assert len(set(ids)) == len(ids), ids  # no delivery leased twice
            events = [e for e, _ in ids]
            return {"alice": sum(e in alice for e in events), "bob": events.count(bob)}

        first = webhooks.claim(engine, "w1", 1, CLOCK, FAST)
        second = webhooks.claim(engine, "w2", 10, CLOCK, FAST)
        # w1's lease counts: alice has two in flight in all, whatever w2's limit asked.
        assert owners(first, second) == {"alice": 2, "bob": 1}
        assert webhooks.claim(engine, "w3", 10, CLOCK, FAST) == []
        later = CLOCK + timedelta(seconds=FAST.lease_s + 1)  # both workers gone: leases out
        third = webhooks.claim(engine, "w3", 10, later, FAST)
        assert owners(third) == {"alice": 2, "bob": 1}


def test_a_resources_next_events_wait_out_of_the_claims_way_while_its_first_retries(
    engine,
    api,  # noqa: F811
):
    # Event 2 of a resource cannot go before event 1; while event 1 waits out its backoff,
    # event 2 waits with it (its due time moved to event 1's), so claims do not read it and
    # pass it over every time. Once event 1 is delivered, event 2 goes in the same sweep.
    with Receiver() as rcv:
        subscribe(api, rcv, ["proof.verified", "settlement.finalized"])
        first = emit_now(engine, "proof.verified", rid="p1")
        second = emit_now(engine, "settlement.finalized", rid="p1")
        rcv.fail_next = 1
        out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
        assert (out["claimed"], out["retrying"]) == (1, 1), out
        head, tail = delivery_of(engine, first), delivery_of(engine, second)
        assert head.next_attempt_at > CLOCK.replace(tzinfo=head.next_attempt_at.tzinfo)
        assert tail.next_attempt_at == head.next_attempt_at
        later = CLOCK + timedelta(seconds=FAST.backoff_max_s + FAST.backoff_jitter_s + 1)
        out = webhooks.deliver_due(engine, "w1", now=later, config=FAST)
        assert (out["claimed"], out["delivered"]) == (2, 2), out
        assert rcv.ids() == [first, second]
