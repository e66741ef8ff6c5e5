"""A payer's second transfer stored (step 1 of its submission committed)
after a credit of its session has read the session's other proofs, and verified before that
credit commits. The credit's `unapplied_siblings` read missed it (it did not exist yet), and
its attempt read the session still open: it ends `verified`, no receipt, on a paid session,
with nothing saying it is not credited (detail and `proof.verified` event)."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import auth
from tests.helpers import FAKE_SESSION, fake_payment
from verifier.services import audit, gate
from verifier.storage.repo import proofs as proof_repo


@pytest.mark.parametrize("path", ["apply_many", "apply"])
def test_second_transfer_stored_after_the_credit_read_its_siblings_says_not_credited(
    client, chain, engine, monkeypatch, path
):
    if not engine.db.postgres:
        pytest.skip("SQLite's one writer leaves no such window")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000a7c1")
    fake_payment(chain, sess, "fx0000a7c2")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000a7c1"}
    ).json()
    assert first["status"] == "verified"

    real = proof_repo.unapplied_siblings
    answers: list = []
    errors: list[BaseException] = []

    def submit_second() -> None:
        try:
            answers.append(
                client.post(
                    "/v1/proofs",
                    headers=auth(),
                    json={"session_id": sess["id"], "proof": "fx0000a7c2"},
                )
            )
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def siblings(s, ids):
        out = real(s, ids)
        if not answers:
            # Another API process handles the payer's second transfer right now, between the
            # credit's read of the session's other proofs and its locks.
            t = threading.Thread(target=submit_second)
            t.start()
            t.join(20)
            assert not t.is_alive(), "the submission waited on the credit"
        return out

    monkeypatch.setattr(gate.proof_repo, "unapplied_siblings", siblings)
    if path == "apply_many":  # the worker's apply sweep
        assert gate.apply_many(engine, [first["id"]], audit.Operator("worker")) == 1
    else:  # staff apply
        op = audit.Operator("staff-a", incident_id="INC-1", reason="credit")
        assert gate.apply(engine, first["id"], op)["applied"]
    assert not errors, errors
    second = answers[0]
    assert second.status_code == 201, second.text
    assert (
        client.get(f"/v1/payment-sessions/{sess['id']}", headers=auth()).json()["status"] == "paid"
    )
    got = client.get(f"/v1/proofs/{second.json()['id']}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None)
    # The session is paid by the first transfer: the second must say it is not credited.
    assert "not credited" in got["detail"], got["detail"]


def test_attempt_reading_its_session_during_a_credit_waits_for_it(
    client, chain, engine, monkeypatch
):
    """The second proof exists, pending, and is stored after the credit read the session's
    other proofs; its attempt records it verified while the credit holds the session's lock.
    Its read of the session waits for the credit (a share lock) rather than reading `open`,
    committing after the credit's last look at the session's proofs."""
    from tests.test_paid_twice_race import _until_done_or_waiting
    from verifier.services import proofs as proofs_service

    if not engine.db.postgres:
        pytest.skip("SQLite's one writer leaves no such window")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000a7c1")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000a7c1"}
    ).json()
    assert first["status"] == "verified"
    second: list[str] = []
    real_siblings = proof_repo.unapplied_siblings
    real_late = proof_repo.late_siblings
    real_insert = proofs_service.attempt_repo.insert_attempt
    read = threading.Event()
    go = threading.Event()
    errors: list[BaseException] = []

    def siblings(s, ids):
        out = real_siblings(s, ids)
        if not second:  # stored now, just after the credit's read: pending, not on chain yet
            got = client.post(
                "/v1/proofs",
                headers=auth(),
                json={"session_id": sess["id"], "proof": "fx0000a7c2"},
            ).json()
            assert got["status"] == "pending", got
            second.append(got["id"])
        return out

    def insert_attempt(s, values, *a, **kw):
        if threading.current_thread().name == "second-attempt":
            read.set()  # the session's status was read in the last round trip
            go.wait(20)
        return real_insert(s, values, *a, **kw)

    def verify() -> None:
        try:
            proofs_service.verify_proof(engine, second[0])
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    def late(s, ids, known):
        fake_payment(chain, sess, "fx0000a7c2")
        t = threading.Thread(target=verify, name="second-attempt")
        t.start()
        # The attempt either reads the session (and pauses before committing) or waits for
        # the credit's lock on it.
        deadline = 20.0
        while not read.is_set() and deadline > 0:
            try:
                _until_done_or_waiting(engine.settings.database_url, t, timeout=0.2)
                break
            except AssertionError:
                deadline -= 0.2
        out = real_late(s, ids, known)
        go.set()
        threads.append(t)
        return out

    threads: list[threading.Thread] = []
    monkeypatch.setattr(gate.proof_repo, "unapplied_siblings", siblings)
    monkeypatch.setattr(gate.proof_repo, "late_siblings", late)
    monkeypatch.setattr(proofs_service.attempt_repo, "insert_attempt", insert_attempt)
    assert gate.apply_many(engine, [first["id"]], audit.Operator("worker")) == 1
    threads[0].join(20)
    assert not threads[0].is_alive() and not errors, errors
    got = client.get(f"/v1/proofs/{second[0]}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None)
    assert "not credited" in got["detail"], got["detail"]
