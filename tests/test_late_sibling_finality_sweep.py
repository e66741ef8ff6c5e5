"""A late sibling held by the worker's finality sweep itself (it locks the verified proof,
then appends `settlement.finalized` to the audit chain): the credit reads its late siblings
before it takes the chain's lock, so the sweep's row comes free and the payer's second
transfer is told it is not credited."""

from __future__ import annotations

import threading

import pytest

from rails.base import Settlement
from tests.conftest import auth
from tests.helpers import FAKE_SESSION, fake_payment
from tests.test_lock_order_credit import _run
from tests.test_paid_twice_race import _until_done_or_waiting
from verifier.services import audit, gate
from verifier.storage.repo import proofs as proof_repo
from verifier.worker import loop as worker


def test_late_sibling_held_by_the_real_finality_sweep_is_told_not_credited(
    client, chain, engine, monkeypatch
):
    if not engine.db.postgres:
        pytest.skip("row and advisory locks: PostgreSQL only")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000f1c1")
    fake_payment(chain, sess, "fx0000f1c2", finality="confirmed")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000f1c1"}
    ).json()
    assert first["status"] == "verified"
    real_siblings = proof_repo.unapplied_siblings
    real_late = proof_repo.late_siblings
    second: list[dict] = []
    errors: list[BaseException] = []
    sweep: list[threading.Thread] = []

    def siblings(s, ids):
        out = real_siblings(s, ids)
        if not second:
            got: list = []
            t = threading.Thread(
                target=lambda: got.append(
                    client.post(
                        "/v1/proofs",
                        headers=auth(),
                        json={"session_id": sess["id"], "proof": "fx0000f1c2"},
                    ).json()
                )
            )
            t.start()
            t.join(20)
            second.append(got[0])
            # The worker's finality sweep claimed it (its lease).
            with engine.db.tx() as s2:
                p2 = proof_repo.get(s2, got[0]["id"], lock=True)
                p2.claimed_by = "w1"
        return out

    def late(s, ids, known):
        # The sweep records the second proof's settlement now: it locks the proof, then
        # waits for the audit chain's lock this credit holds.
        with engine.db.tx() as s2:
            ref = proof_repo.get(s2, second[0]["id"]).ref
        st = Settlement(ref=ref, finality="finalized", is_final=True)
        sweep.append(
            _run(
                lambda: worker._record_finality(engine, second[0]["id"], st, "sweep", "w1"),
                errors,
            )
        )
        # Until it has recorded the answer, or holds the proof and waits (for the chain's lock).
        _until_done_or_waiting(engine.settings.database_url, sweep[0])
        return real_late(s, ids, known)

    monkeypatch.setattr(gate.proof_repo, "unapplied_siblings", siblings)
    monkeypatch.setattr(gate.proof_repo, "late_siblings", late)
    op = audit.Operator("staff-a", incident_id="INC-1", reason="credit")
    assert gate.apply(engine, first["id"], op)["applied"]
    sweep[0].join(20)
    assert not sweep[0].is_alive(), "stuck"
    assert not errors, errors
    assert second[0]["status"] == "verified", second[0]
    got = client.get(f"/v1/proofs/{second[0]['id']}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None)
    assert "not credited" in got["detail"], got["detail"]
