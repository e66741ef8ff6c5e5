"""A tenant's webhook receiver cannot hold up anyone else: one POST takes at most the delivery
timeout, however the receiver dribbles its answer out, and the worker's webhooks go out from a
thread of their own, so a receiver that holds its answer delays no proof's re-check, finality
or apply."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from tests.test_webhooks import FAST, api, emit_now, subscribe  # noqa: F401 - fixture
from tests.webhook_receiver import Receiver
from verifier.services import proofs, webhooks
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Receipt
from verifier.storage.webhook_models import WebhookDelivery
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
