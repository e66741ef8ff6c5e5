"""Lock order between a credit and the other writers of its session's proofs, on PostgreSQL
(deadlocks, SQLSTATE 40P01), and a late sibling another transaction holds for a moment.

1. A credit locks the session's pending proofs too (proof_repo.unapplied_siblings), in id
   order; the reverify sweep gives skipped claims back with `release_claims`: it locks them
   in id order first, whether or not their due times move.

2. An attempt reads its session FOR SHARE (sessions.status_behind). A payload replacement
   (proofs._another_payload: x402's failed proof named again by another payload) appends
   `proof.payload_replaced` to the audit chain: it takes the session's share lock first, as
   an attempt does, since a credit takes the session FOR UPDATE, then the audit lock.

3. A credit reads the session's verified proofs again once it holds the session
   (`late_siblings`), waiting a moment for one another transaction holds.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import auth
from tests.fake_rail import FakeAdapter
from tests.helpers import FAKE_SESSION, fake_payment
from tests.test_lock_behind_attack import wait_for_lock_wait
from verifier.services import audit, gate
from verifier.services import proofs as proofs_service
from verifier.storage.models import ProofStatus
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.repo import sessions as session_repo
from verifier.worker import loop as worker


def _run(fn, errors: list) -> threading.Thread:
    def body() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - asserted by the test
            errors.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


def test_release_of_skipped_claims_and_a_credit_locking_pending_siblings_do_not_deadlock(
    client, chain, engine
):
    if not engine.db.postgres:
        pytest.skip("row locks: PostgreSQL only")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000b1c1")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000b1c1"}
    ).json()
    assert first["status"] == "verified"
    # Two more transfers of the payer, not on chain yet: pending, due, claimed by a sweep.
    pend = [
        client.post(
            "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx}
        ).json()["id"]
        for tx in ("fx0000b1c2", "fx0000b1c3")
    ]
    lo, hi = sorted(pend)
    with engine.db.tx() as s:
        # Claimed with `hi` due first (the sweep's order is turn then due, not id).
        proof_repo.update(
            s, proof_repo.for_attempt(s, hi), {"next_check_at": engine.now() - timedelta(seconds=2)}
        )
        proof_repo.update(
            s, proof_repo.for_attempt(s, lo), {"next_check_at": engine.now() - timedelta(seconds=1)}
        )
    ids = worker.claim(engine, ProofStatus.pending, "w1", 10)
    assert ids.index(hi) < ids.index(lo), ids
    due = {hi: engine.now() - timedelta(minutes=1), lo: engine.now() - timedelta(seconds=59)}

    url = engine.settings.database_url
    holder = create_engine(url)
    errors: list[BaseException] = []
    with holder.connect() as c:
        tx = c.begin()
        # Whatever holds `hi` for a moment (an attempt recording it): the sweep's release
        # updates `hi` first and waits here.
        c.execute(text("SELECT id FROM proofs WHERE id = :i FOR UPDATE"), {"i": hi})

        def release() -> None:
            with engine.db.tx() as s:
                proof_repo.release_claims(s, [hi, lo], "w1", due)

        t1 = _run(release, errors)
        wait_for_lock_wait(url, "the other writer", 1, 15.0)
        # The credit locks the proof and its pending siblings in id order: `lo`, then waits
        # on `hi` behind the release.
        t2 = _run(lambda: gate.apply_many(engine, [first["id"]], audit.Operator("worker")), errors)
        wait_for_lock_wait(url, "both writers", 2, 15.0)
        tx.commit()
    t1.join(20)
    t2.join(20)
    holder.dispose()
    assert not t1.is_alive() and not t2.is_alive(), "stuck"
    assert not errors, [f"{type(e).__name__}: {str(e)[:200]}" for e in errors]


def test_payload_replacement_and_a_credit_of_the_same_session_do_not_deadlock(
    client, chain, engine, monkeypatch
):
    """The fake rail stands in for x402 (a rail whose proof is the payment: reads_chain
    False, so a failed proof named again by another spelling is verified again)."""
    if not engine.db.postgres:
        pytest.skip("row and advisory locks: PostgreSQL only")
    monkeypatch.setattr(FakeAdapter, "reads_chain", False)
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000c1c1")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000c1c1"}
    ).json()
    assert first["status"] == "verified"
    # A copy that fails first (here: the chain says failed), then the genuine one, spelled
    # otherwise (same fingerprint, other raw): the payload replacement path.
    fake_payment(chain, sess, "fx0000c1c2")
    chain.txs["fx0000c1c2"]["status"] = "failed"
    bad = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000c1c2"}
    ).json()
    assert bad["status"] == "failed", bad
    chain.txs["fx0000c1c2"]["status"] = "ok"

    url = engine.settings.database_url
    errors: list[BaseException] = []
    started: list[threading.Thread] = []
    real = proofs_service.audit.append

    def append(s, now, op, action, *a, **kw):
        out = real(s, now, op, action, *a, **kw)
        if action == "proof.payload_replaced" and not started:
            # The audit chain's lock is held: the worker's credit of the session's first
            # transfer runs now (session FOR UPDATE, then the chain's lock).
            started.append(
                _run(
                    lambda: gate.apply_many(engine, [first["id"]], audit.Operator("worker")),
                    errors,
                )
            )
            wait_for_lock_wait(url, "the other writer", 1, 15.0)
        return out

    monkeypatch.setattr(proofs_service.audit, "append", append)
    genuine = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "FX0000C1C2"}
    )
    assert started, "the payload replacement path did not run"
    started[0].join(20)
    assert not started[0].is_alive(), "stuck"
    assert not errors, [f"{type(e).__name__}: {str(e)[:200]}" for e in errors]
    assert genuine.status_code in (200, 201), genuine.text
    assert genuine.json()["status"] == "verified", genuine.text


def test_late_sibling_locked_by_the_finality_sweep_is_still_told_not_credited(
    client, chain, engine, monkeypatch
):
    """A second transfer stored and verified after the credit read the session's proofs,
    whose row the worker's finality sweep holds at that instant (it locks the verified proofs
    it records), is still told it is not credited: the credit waits a moment for the row."""
    if not engine.db.postgres:
        pytest.skip("SKIP LOCKED: PostgreSQL only")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000d1c1")
    # The second transfer is not final yet: the finality sweep checks it.
    fake_payment(chain, sess, "fx0000d1c2", finality="confirmed")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000d1c1"}
    ).json()
    assert first["status"] == "verified"
    real_siblings = proof_repo.unapplied_siblings
    real_late = proof_repo.late_siblings
    second: list[dict] = []
    holder = create_engine(engine.settings.database_url)
    conn = holder.connect()
    tx = conn.begin()

    def siblings(s, ids):
        out = real_siblings(s, ids)
        if not second:
            # Another API process: the payer's second transfer, stored and verified now.
            got: list = []
            t = threading.Thread(
                target=lambda: got.append(
                    client.post(
                        "/v1/proofs",
                        headers=auth(),
                        json={"session_id": sess["id"], "proof": "fx0000d1c2"},
                    ).json()
                )
            )
            t.start()
            t.join(20)
            second.append(got[0])
        return out

    def late(s, ids, known):
        # The finality sweep records the second proof's settlement right now (its row lock),
        # committing a moment later.
        conn.execute(text("SELECT id FROM proofs WHERE id = :i FOR UPDATE"), {"i": second[0]["id"]})
        threading.Timer(0.1, tx.commit).start()
        return real_late(s, ids, known)

    monkeypatch.setattr(gate.proof_repo, "unapplied_siblings", siblings)
    monkeypatch.setattr(gate.proof_repo, "late_siblings", late)
    op = audit.Operator("staff-a", incident_id="INC-1", reason="credit")
    try:
        assert gate.apply(engine, first["id"], op)["applied"]
    finally:
        if tx.is_active:
            tx.commit()
        conn.close()
        holder.dispose()
    assert second[0]["status"] == "verified", second[0]
    assert (
        client.get(f"/v1/payment-sessions/{sess['id']}", headers=auth()).json()["status"] == "paid"
    )
    got = client.get(f"/v1/proofs/{second[0]['id']}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None)
    assert "not credited" in got["detail"], got["detail"]


def test_a_paid_sessions_pending_proofs_are_not_locked_by_a_re_apply(client, chain, engine):
    """However many proofs a tenant keeps pending on a paid session, applying its credited
    proof again (idempotent) takes none of their locks: it waits for no attempt of theirs."""
    if not engine.db.postgres:
        pytest.skip("row locks: PostgreSQL only")
    from tests.test_paid_twice_race import _until_done_or_waiting

    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000e1c1")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000e1c1"}
    ).json()
    op = audit.Operator("staff-a", incident_id="INC-1", reason="credit")
    assert gate.apply(engine, first["id"], op)["applied"]
    pending = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000e1c2"}
    ).json()
    assert pending["status"] == "pending", pending
    holder = create_engine(engine.settings.database_url)
    errors: list = []
    answers: list = []
    try:
        with holder.connect() as conn, conn.begin():
            # An attempt of the pending proof in flight: its row locked.
            conn.execute(
                text("SELECT id FROM proofs WHERE id = :i FOR UPDATE"), {"i": pending["id"]}
            )
            t = _run(lambda: answers.append(gate.apply(engine, first["id"], op)), errors)
            _until_done_or_waiting(engine.settings.database_url, t)
            assert not t.is_alive(), "the re-apply waits on the paid session's pending proof"
    finally:
        holder.dispose()
    t.join(20)
    assert not errors, errors
    assert answers[0]["already_applied"], answers


def test_release_of_skipped_claims_without_moved_dues_and_a_credit_do_not_deadlock(
    client, chain, engine
):
    """Claims given back with no due time moved (every skipped proof's owner was asked) are
    one multi-row UPDATE, which locks rows in the order it scans them: the rows are locked in
    id order first, as a credit locks its session's pending proofs, or the two deadlock."""
    if not engine.db.postgres:
        pytest.skip("row locks: PostgreSQL only")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    other = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000f1c1")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000f1c1"}
    ).json()
    assert first["status"] == "verified"
    # The payer's two more transfers (not on chain yet: pending), and another session's.
    pend = [
        client.post(
            "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx}
        ).json()["id"]
        for tx in ("fx0000f1c2", "fx0000f1c3")
    ]
    mid = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": other["id"], "proof": "fx0000f1c4"}
    ).json()["id"]
    lo, hi = sorted(pend)
    url = engine.settings.database_url
    holder = create_engine(url)
    errors: list = []

    try:
        with holder.connect() as c:
            # The sweep's claims, written one row at a time (as attempts and claims happen):
            # the heap holds `hi`, then `mid`, then `lo`.
            for pid in (hi, mid, lo):
                c.execute(
                    text(
                        "UPDATE proofs SET claimed_by = 'w1', claimed_until = now() + "
                        "interval '1 hour' WHERE id = :i"
                    ),
                    {"i": pid},
                )
            c.commit()
            tx = c.begin()
            # An attempt recording `mid` holds its row a moment.
            c.execute(text("SELECT id FROM proofs WHERE id = :i FOR UPDATE"), {"i": mid})

            def release() -> None:
                with engine.db.tx() as s:
                    proof_repo.release_claims(s, [hi, mid, lo], "w1")  # no due moves

            t1 = _run(release, errors)
            wait_for_lock_wait(url, "the release", 1, 15.0)
            t2 = _run(
                lambda: gate.apply_many(engine, [first["id"]], audit.Operator("worker")), errors
            )
            # The credit waits for the release, or (its rows all before `mid` in id order,
            # which the release now locks first) finishes first.
            for _ in range(30):
                try:
                    wait_for_lock_wait(url, "both writers", 2, 0.5)
                    break
                except AssertionError:
                    if not t2.is_alive():
                        break
            tx.commit()
        t1.join(20)
        t2.join(20)
    finally:
        holder.dispose()
    assert not t1.is_alive() and not t2.is_alive(), "stuck"
    assert not errors, [f"{type(e).__name__}: {str(e)[:160]}" for e in errors]


def test_late_sibling_held_by_a_concurrent_apply_of_itself_is_still_told_not_credited(
    client, chain, engine, monkeypatch
):
    """The payer's second transfer B, verified while a credit of the first (A) runs, and
    applied at the same moment: `apply(B)` locks B (its id the lower), then waits for A, which
    the credit holds; the credit's `late_siblings` gives up on B after its wait. A pays the
    session, and apply(B), refused, tells B it is not credited, as the credit would have."""

    if not engine.db.postgres:
        pytest.skip("row locks: PostgreSQL only")
    sess = client.post("/v1/payment-sessions", headers=auth(), json=dict(FAKE_SESSION)).json()
    fake_payment(chain, sess, "fx0000a7c1")
    first = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": "fx0000a7c1"}
    ).json()
    assert first["status"] == "verified", first
    real_siblings = proof_repo.unapplied_siblings
    real_get = session_repo.get
    late: list[str] = []
    applying: list[threading.Thread] = []
    errors: list[BaseException] = []
    url = engine.settings.database_url
    op = audit.Operator("staff-a", incident_id="INC-1", reason="credit")

    def siblings(s, ids):
        out = real_siblings(s, ids)
        if not late and first["id"] in ids:
            # The payer's second transfer(s), stored and verified right now (another API
            # process): until one has an id below A's (uuid4: a fraction p of them, where p
            # is A's id's own place; up to N tries miss with probability 1/(N+1) over all A).
            for n in range(2, 5000):
                tx = f"fx0000a7{n:04x}"
                fake_payment(chain, sess, tx)
                got = client.post(
                    "/v1/proofs", headers=auth(), json={"session_id": sess["id"], "proof": tx}
                ).json()
                assert got["status"] == "verified", got
                if got["id"] < first["id"]:
                    late.append(got["id"])
                    break
        return out

    def get(s, session_id, lock=False):
        if lock and late and not applying:
            # A is locked now. B's apply starts: it locks B, then waits for A.
            def body() -> None:
                try:
                    gate.apply(engine, late[0], op)
                except BaseException as e:  # noqa: BLE001 - refused once A paid the session
                    errors.append(e)

            t = threading.Thread(target=body, daemon=True)
            t.start()
            applying.append(t)
            wait_for_lock_wait(url, "B's apply", 1, 15.0)
        return real_get(s, session_id, lock)

    monkeypatch.setattr(gate.proof_repo, "unapplied_siblings", siblings)
    monkeypatch.setattr(gate.session_repo, "get", get)
    assert gate.apply(engine, first["id"], op)["applied"]
    applying[0].join(20)
    assert not applying[0].is_alive()
    assert (
        client.get(f"/v1/payment-sessions/{sess['id']}", headers=auth()).json()["status"] == "paid"
    )
    got = client.get(f"/v1/proofs/{late[0]}", headers=auth()).json()
    assert (got["status"], got["receipt_id"]) == ("verified", None), got
    assert "not credited" in (got["detail"] or ""), (
        f"B ({got['id']}) left verified and uncredited, never told: {got['detail']!r}; "
        f"its apply ended with {[type(e).__name__ + ': ' + str(e)[:120] for e in errors]}"
    )
