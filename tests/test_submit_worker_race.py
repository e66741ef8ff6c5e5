"""A submission's own (slow) verification is not recorded over what a worker decided meanwhile.

`_submit_as` commits the proof `pending` and due at once (step 1), asks the chain outside any
transaction (step 2), then records its answer (step 3). A worker may claim the new proof
between steps 1 and 3, verify it, and (RAILPROOF_AUTO_APPLY=1) apply it: receipt, active
entitlement, session paid. Recorded over that, a node that was behind for the API ("not found
yet") sent the verified, credited proof back to `pending`, and the next sweep sent the tenant
`proof.verified` a second time. Step 3 records nothing then, and answers the proof as stored.
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
from tests.helpers import advance
from verifier.core.engine import Engine
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Entitlement, Proof, Receipt, VerificationAttempt
from verifier.storage.webhook_models import OutboxEvent
from verifier.worker import loop as worker


class _BehindNode:
    """The API's node: asked while the worker runs, and answers "not found yet" (behind)."""

    source = "cassette"

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.go = threading.Event()

    def call(self, method, params):
        assert method == "fake_getTransfer"
        self.asked.set()
        assert self.go.wait(30)
        return None


def test_a_late_submission_answer_does_not_send_a_credited_proof_back(db_url, chain):
    api = Engine(make_settings(db_url), catalog=catalog_with_fake())
    node = _BehindNode()
    api.chains.set_transport("fakenet", node)
    api.ensure_rail_states()
    wk = Engine(make_settings(db_url, auto_apply=True), catalog=catalog_with_fake())
    wk.chains.set_transport("fakenet", chain)
    try:
        sess = open_session(
            api,
            NewSession(
                owner_id="alice",
                rail_id="fake_live",
                access_product_id="pro",
                amount=1_500_000,
                recipient="fatreasury",
            ),
            actor="svc",
        )
        tx = "fx00c0ffee"
        chain.txs[tx] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1_500_000,
            "asset": "fusd",
            "refs": [sess["reference"]],
            "finality": "finalized",
        }
        out: dict = {}

        def submit() -> None:
            try:
                out["view"] = proofs.submit_proof(api, sess["id"], tx, ["alice"])[0]
            except BaseException as e:  # surfaced below
                out["error"] = e

        t = threading.Thread(target=submit)
        t.start()
        assert node.asked.wait(30)  # step 1 committed; the API waits on its node
        # Meanwhile the worker takes the new proof (due at once), verifies and applies it.
        done = worker.sweep(wk, "w1", deliveries=False)
        assert done["reverified"] == 1 and done["applied"] == 1, done
        with wk.db.tx() as s:
            pid = s.scalar(select(Proof.id).where(Proof.session_id == sess["id"]))
            assert s.get(Proof, pid).status == "verified"
        node.go.set()
        t.join(30)
        assert "error" not in out, out
        assert out["view"]["status"] == "verified", out["view"]

        with wk.db.tx() as s:
            p = s.get(Proof, pid)
            # The submission's answer is kept as evidence, second, changing nothing.
            attempts = s.scalars(
                select(VerificationAttempt)
                .where(VerificationAttempt.proof_id == pid)
                .order_by(VerificationAttempt.id)
            ).all()
            assert [(a.worker, a.status) for a in attempts] == [
                ("w1", "verified"),
                (None, "pending"),
            ]
            assert attempts[1].observed["superseded"] is True
            r = s.scalar(select(Receipt).where(Receipt.proof_id == pid))
            ent = s.scalar(select(Entitlement).where(Entitlement.session_id == sess["id"]))
            assert r is not None and ent.status == "active"
            # The credited proof stays verified: a later, staler answer is not its status.
            assert (p.status, p.failure_code) == ("verified", None), (p.status, p.failure_code)

        # And the tenant hears `proof.verified` once, however the sweeps go on.
        advance(wk, 3600)
        worker.sweep(wk, "w1", deliveries=False)
        with wk.db.tx() as s:
            n = s.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.resource_id == pid, OutboxEvent.type == "proof.verified")
            )
        assert n == 1, n
    finally:
        node.go.set()
        api.db.dispose()
        wk.db.dispose()
