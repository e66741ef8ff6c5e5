"""Attacks on the submission that guesses its session (verifier.core.known_sessions,
services.proofs `_Sent`/`_Guessed`): forged and stale memories, tenants probing each other's
sessions, wrong guesses under an Idempotency-Key, and races (a session closed, a rail paused,
one transfer claimed many times) on PostgreSQL. Whatever the memory says, the session as read
decides: nothing sent for a wrong guess is ever stored."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from tests.conftest import OTHER_SERVICE_TOKEN, auth
from tests.test_engine_proofs import count, open_session, pay
from tests.test_lock_behind_attack import chain_ok, join_all
from verifier.core.errors import Conflict, EngineError, NotFound, Refused
from verifier.core.known_sessions import KnownSessions, SessionKey
from verifier.services import audit, idempotency, proofs, rails_admin
from verifier.storage.models import (
    AuditEvent,
    IdempotencyClaim,
    PaymentSession,
    Proof,
    TransferHold,
    VerificationAttempt,
)

OP = audit.Operator("ops1", "INC-KS", "known sessions attack")
DEADLOCK = "40P01"


@pytest.fixture
def pg(engine):
    if not engine.db.postgres:
        pytest.skip("concurrency of the guessed submission is PostgreSQL's")
    return engine


# -- helpers ---------------------------------------------------------------------------------


def stored(engine) -> dict[str, int]:
    return {
        "proofs": count(engine, Proof),
        "audit": count(engine, AuditEvent),
        "holds": count(engine, TransferHold),
        "attempts": count(engine, VerificationAttempt),
        "claims": count(engine, IdempotencyClaim),
    }


_FAILED = object()  # what `answered` gives for an error it kept


def answered(call, refusal: type[EngineError], errors: list[BaseException]) -> object:
    """A thread's `call()`: its answer, the code of a `refusal` it raised, or `_FAILED` with
    anything else kept in `errors` (a thread must not die silently)."""
    try:
        return call()
    except refusal as e:
        return e.code
    except BaseException as e:
        errors.append(e)
        return _FAILED


def forge(engine, sess: dict, **wrong: str) -> SessionKey:
    """Make this process remember `sess` with some of its facts wrong."""
    facts = {k: sess[k] for k in ("id", "owner_id", "rail_id", "network", "asset")}
    engine.known_sessions.remember(SimpleNamespace(**{**facts, **wrong}))
    return engine.known_sessions.get(sess["id"])


def always_guess(monkeypatch, engine, sess: dict, **wrong: str) -> SessionKey:
    """Every submission to `sess` guesses it with `wrong` facts (forgetting does not help)."""
    facts = {k: sess[k] for k in ("id", "owner_id", "rail_id", "network", "asset")}
    key = SessionKey(**{**facts, **wrong})
    real_get = engine.known_sessions.get
    monkeypatch.setattr(
        engine.known_sessions, "get", lambda sid: key if sid == sess["id"] else real_get(sid)
    )
    return key


def set_status(engine, session_id: str, status: str) -> None:
    with engine.db.tx() as s:
        s.execute(
            update(PaymentSession).where(PaymentSession.id == session_id).values(status=status)
        )


def proofs_of(engine, session_id: str) -> list[Proof]:
    with engine.db.tx() as s:
        return list(s.scalars(select(Proof).where(Proof.session_id == session_id)))


def actions(engine) -> list[tuple[int, str, str | None]]:
    with engine.db.tx() as s:
        return [
            (e.id, e.action, e.subject_id)
            for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]


def holders(engine) -> list[tuple[str, str, str]]:
    with engine.db.tx() as s:
        return [(h.transfer_key, h.session_id, h.owner_id) for h in s.scalars(select(TransferHold))]


def refused_storing_nothing(engine, code: str, session_id: str, tx: str, owners: list[str]):
    """The submission is refused with `code`, nothing is stored and the chain verifies."""
    before = stored(engine)
    with pytest.raises(EngineError) as refused:
        proofs.submit_proof(engine, session_id, tx, owners)
    assert refused.value.code == code
    assert stored(engine) == before
    chain_ok(engine)


def run_threads(targets: list) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    join_all(threads)


def no_deadlock(errors: list[BaseException]) -> None:
    for e in errors:
        code = getattr(getattr(e, "orig", None), "sqlstate", None)
        assert code != DEADLOCK, f"deadlock: {e!r}"


def denials(engine, reason: str) -> float:
    line = f'owner_isolation_denials_total{{reason="{reason}"}} '.encode()
    for row in engine.metrics.render().splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return 0.0


# -- one tenant, another tenant's session ----------------------------------------------------


@pytest.mark.parametrize(
    "wrong",
    [
        {"owner_id": "alice"},
        {"owner_id": "alice", "rail_id": "fake_gated"},
        {"owner_id": "alice", "rail_id": "fake_review"},
    ],
    ids=["owner", "owner+rail", "owner+review-rail"],
)
def test_a_forged_owner_never_reaches_another_tenants_held_transfer(engine, chain, wrong):
    """SECURITY: bob's session holds transfer X. The memory (forged) says alice owns bob's
    session. Alice submits X to it: her statements (the hold read among them) go ahead of the
    read, but the answer is the 404 of any other owner's session, never the hold's refusal
    (proof_owner_conflict would tell her the transfer is taken and audit a refusal naming
    bob's proof). Nothing of hers is stored; bob's session, proof and holds are untouched."""
    bob = open_session(engine, owner="bob")
    pay(chain, "fxb0b0000001", bob)
    held, _ = proofs.submit_proof(engine, bob["id"], "fxb0b0000001", ["bob"])
    assert held["status"] == "verified"
    forge(engine, bob, **wrong)
    before, holds_before = stored(engine), holders(engine)
    owner_conflicts = denials(engine, "proof_owner_conflict")
    for attempt in ("fxb0b0000001", "FXB0B0000001", "fxb0b0000002"):
        with pytest.raises(NotFound) as nf:
            proofs.submit_proof(engine, bob["id"], attempt, ["alice", "alice-2"])
        assert nf.value.code == "session_not_found"
    assert stored(engine) == before
    assert holders(engine) == holds_before
    assert denials(engine, "proof_owner_conflict") == owner_conflicts
    assert all(a != "proof.owner_conflict" for _, a, _ in actions(engine))
    (only,) = proofs_of(engine, bob["id"])
    assert (only.id, only.owner_id, only.status) == (held["id"], "bob", "verified")
    chain_ok(engine)
    # Bob's own resubmission is still his replay, and a new transfer of his is stored.
    again, created = proofs.submit_proof(engine, bob["id"], "fxb0b0000001", ["bob"])
    assert (again["id"], created) == (held["id"], False)


def test_a_forged_owner_for_staff_stores_the_proof_under_the_real_owner(engine, chain):
    """A caller without owners (staff) and a memory naming the wrong owner: the guess does
    not fit the row, so nothing sent with alice's name is stored; the proof is bob's."""
    bob = open_session(engine, owner="bob")
    pay(chain, "fxb0b0000003", bob)
    forge(engine, bob, owner_id="alice")
    view, created = proofs.submit_proof(engine, bob["id"], "fxb0b0000003", None)
    assert created and view["status"] == "verified" and view["owner_id"] == "bob"
    (p,) = proofs_of(engine, bob["id"])
    assert p.owner_id == "bob"
    assert {o for _, _, o in holders(engine)} == {"bob"}
    assert engine.known_sessions.get(bob["id"]).owner_id == "bob"  # remembered as it is
    chain_ok(engine)


def test_a_memory_of_a_session_for_another_owner_is_never_used_for_this_one(engine, chain):
    """The memory is right (bob's session, bob's owner): alice never guesses with it, and a
    caller owning both sees the proof under bob's name."""
    bob = open_session(engine, owner="bob")
    pay(chain, "fxb0b0000004", bob)
    before = stored(engine)
    for owners in (["alice"], ["alice", "alice-2"], []):
        with pytest.raises(NotFound):
            proofs.submit_proof(engine, bob["id"], "fxb0b0000004", owners)
    assert stored(engine) == before
    view, created = proofs.submit_proof(engine, bob["id"], "fxb0b0000004", ["alice", "bob"])
    assert created and view["owner_id"] == "bob" and view["status"] == "verified"
    chain_ok(engine)


def test_a_stale_memory_of_a_session_that_is_not_stored_answers_404(engine, chain):
    """The process remembers a session the database does not hold (forged here; in life a
    session committed on a primary lost in a failover, or a database restored from a backup
    while the API process kept running). The answer must be the 404 of any unknown session,
    with nothing stored and the chain intact, on every database: the proof's insert sent
    ahead of the read names a session id no row has."""
    ghost = {
        "id": "ps_" + "0" * 29,
        "owner_id": "alice",
        "rail_id": "fake_live",
        "network": "fakenet",
        "asset": "fusd",
    }
    forge(engine, ghost)
    chain.txs["fxdead00001"] = {"status": "ok", "to": "fatreasury", "amount": 1, "asset": "fusd"}
    refused_storing_nothing(engine, "session_not_found", ghost["id"], "fxdead00001", ["alice"])


def test_a_stale_memory_of_a_session_that_is_not_stored_is_404_over_http(client, engine):
    """The same over HTTP: never a 5xx."""
    ghost_id = "ps_" + "1" * 29
    forge(
        engine,
        {
            "id": ghost_id,
            "owner_id": "alice",
            "rail_id": "fake_live",
            "network": "fakenet",
            "asset": "fusd",
        },
    )
    r = client.post(
        "/v1/proofs", headers=auth(), json={"session_id": ghost_id, "proof": "fxdead00002"}
    )
    assert r.status_code == 404, r.text
    assert stored(engine)["proofs"] == 0


@pytest.mark.parametrize(
    "wrong",
    [
        {"rail_id": "no_such_rail"},
        {"network": "no_such_net"},
        {"asset": "no_such_asset"},
    ],
    ids=["unknown-rail", "unknown-network", "unknown-asset"],
)
def test_a_memory_naming_a_rail_the_catalog_lacks_does_not_decide_the_answer(engine, chain, wrong):
    """The guess is only a guess: a memory whose rail (or network, or asset) the catalog
    cannot resolve must be found wrong by the read and the submission made the usual way,
    not refused with an error about a rail the session is not on."""
    sess = open_session(engine)
    pay(chain, "fxaaa0000001", sess)
    forge(engine, sess, **wrong)
    view, created = proofs.submit_proof(engine, sess["id"], "fxaaa0000001", ["alice"])
    assert created and view["status"] == "verified" and view["rail_id"] == "fake_live"
    assert engine.known_sessions.get(sess["id"]) == SessionKey(
        sess["id"], "alice", "fake_live", sess["network"], sess["asset"]
    )
    chain_ok(engine)


# -- a wrong guess stores nothing ------------------------------------------------------------


@pytest.mark.parametrize("status", ["expired", "cancelled"])
def test_a_known_session_closed_behind_the_memory_stores_nothing(engine, chain, status):
    sess = open_session(engine)
    pay(chain, "fxc10500001", sess)
    assert engine.known_sessions.get(sess["id"]) is not None
    set_status(engine, sess["id"], status)
    before, events = stored(engine), chain_ok(engine)
    with pytest.raises(Conflict) as refused:
        proofs.submit_proof(engine, sess["id"], "fxc10500001", ["alice"])
    assert refused.value.code == "session_not_open"
    assert stored(engine) == before
    assert chain_ok(engine) == events
    assert engine.known_sessions.get(sess["id"]) is None  # no longer guessed
    # And again, without the memory: the same answer, still nothing.
    with pytest.raises(Conflict):
        proofs.submit_proof(engine, sess["id"], "fxc10500001", ["alice"])
    assert stored(engine) == before
    assert engine.known_sessions.get(sess["id"]) is None  # a closed session is not learnt


def test_a_guessed_rail_that_is_paused_does_not_refuse_the_sessions_own(engine, chain):
    """The memory names fake_gated (paused); the session is on fake_live (running): the
    pause of the guessed rail must not answer, the session's own rail does."""
    sess = open_session(engine)
    pay(chain, "fxbad0000001", sess)
    rails_admin.set_paused(engine, "fake_gated", True, OP)
    forge(engine, sess, rail_id="fake_gated")
    view, created = proofs.submit_proof(engine, sess["id"], "fxbad0000001", ["alice"])
    assert created and view["status"] == "verified" and view["rail_id"] == "fake_live"
    # The reverse: the session's rail paused, the guessed one running: refused, nothing kept.
    rails_admin.set_paused(engine, "fake_gated", False, OP)
    rails_admin.set_paused(engine, "fake_live", True, OP)
    forge(engine, sess, rail_id="fake_gated")
    pay(chain, "fxbad0000002", sess)
    refused_storing_nothing(engine, "rail_paused", sess["id"], "fxbad0000002", ["alice"])


def test_a_wrong_guess_with_a_proof_the_guessed_rail_cannot_read(engine, chain):
    """The guessed rail (another family) finds the proof malformed; the session's own rail
    reads it: the answer is the session's, not the guessed rail's 400."""
    sess = open_session(engine)
    pay(chain, "fxbad0000003", sess)
    sol = engine.rail("solana_usdc")
    forge(engine, sess, rail_id=sol.rail_id, network=sol.network, asset=sol.asset)
    view, created = proofs.submit_proof(engine, sess["id"], "fxbad0000003", ["alice"])
    assert created and view["status"] == "verified" and view["rail_id"] == "fake_live"
    chain_ok(engine)


# -- HTTP: a wrong guess under an Idempotency-Key --------------------------------------------


def claims(engine) -> list[IdempotencyClaim]:
    with engine.db.tx() as s:
        return list(s.scalars(select(IdempotencyClaim)))


def test_a_wrong_guess_under_a_key_boards_the_claim_once_and_replays(
    client, engine, chain, monkeypatch
):
    """Every try guesses wrong (the memory names another rail): the first transaction rolls
    back with the claim aboard, the retry carries it and commits it with the proof, the
    answer completes it, and the same request again gets the stored answer, stores nothing."""
    sess = open_session(engine)
    pay(chain, "fxcafe000001", sess)
    always_guess(monkeypatch, engine, sess, rail_id="fake_gated")
    body = {"session_id": sess["id"], "proof": "fxcafe000001"}
    headers = {**auth(), "Idempotency-Key": "ks-wrong-1"}
    r = client.post("/v1/proofs", headers=headers, json=body)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["status"] == "verified" and first["rail_id"] == "fake_live"
    (claim,) = claims(engine)
    assert claim.status == "completed" and claim.response == first
    after = stored(engine)
    again = client.post("/v1/proofs", headers=headers, json=body)
    assert again.status_code == 201 and again.json() == first
    assert stored(engine) == after
    # The same key with another body is refused, still nothing stored.
    pay(chain, "fxcafe000002", sess)
    other = client.post("/v1/proofs", headers=headers, json={**body, "proof": "fxcafe000002"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    assert stored(engine) == after
    assert [p.rail_id for p in proofs_of(engine, sess["id"])] == ["fake_live"]
    chain_ok(engine)


@pytest.mark.parametrize("status", ["expired", "cancelled"])
def test_a_wrong_guess_under_a_key_for_a_closed_session(client, engine, chain, status):
    """The memory says open; the session closed. Refused with nothing run: the claim is not
    left behind (in progress it would answer every retry 409 in progress)."""
    sess = open_session(engine)
    pay(chain, "fxcafe000003", sess)
    set_status(engine, sess["id"], status)
    headers = {**auth(), "Idempotency-Key": f"ks-closed-{status}"}
    body = {"session_id": sess["id"], "proof": "fxcafe000003"}
    for _ in range(2):
        r = client.post("/v1/proofs", headers=headers, json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_not_open", r.text
        assert all(c.status != "in_progress" for c in claims(engine))
        assert stored(engine)["proofs"] == 0
    # Reopened (by the operator): the key runs the work now, once.
    set_status(engine, sess["id"], "open")
    r = client.post("/v1/proofs", headers=headers, json=body)
    assert r.status_code == 201 and r.json()["status"] == "verified", r.text
    assert client.post("/v1/proofs", headers=headers, json=body).json() == r.json()
    assert len(proofs_of(engine, sess["id"])) == 1
    chain_ok(engine)


def test_another_tenant_with_a_forged_memory_and_a_key_gets_404_and_no_claim(client, engine, chain):
    """Bob (other token) submits to alice's session that the memory says is his: 404, no
    proof, no claim left in progress; alice's own keyed request then stores her proof."""
    sess = open_session(engine)
    pay(chain, "fxcafe000004", sess)
    forge(engine, sess, owner_id="bob")
    body = {"session_id": sess["id"], "proof": "fxcafe000004"}
    for _ in range(2):
        r = client.post(
            "/v1/proofs",
            headers={**auth(OTHER_SERVICE_TOKEN), "Idempotency-Key": "ks-steal"},
            json=body,
        )
        assert r.status_code == 404, r.text
        assert all(c.status != "in_progress" for c in claims(engine))
        assert stored(engine)["proofs"] == 0
    r = client.post("/v1/proofs", headers={**auth(), "Idempotency-Key": "ks-steal"}, json=body)
    assert r.status_code == 201 and r.json()["owner_id"] == "alice", r.text
    chain_ok(engine)


# -- races on PostgreSQL ---------------------------------------------------------------------


@pytest.mark.parametrize("guess", ["right", "wrong"])
def test_many_threads_one_transfer_one_known_session(pg, chain, monkeypatch, guess):
    """Twelve submissions of one transfer to one session, guessed right (or every one
    wrong): one proof, created once, verified once; the others replay it; no deadlock."""
    engine = pg
    sess = open_session(engine)
    pay(chain, "fx5a5a000001", sess)
    if guess == "wrong":
        always_guess(monkeypatch, engine, sess, rail_id="fake_gated")
    results: list[tuple[dict, bool]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(12)

    def one():
        gate.wait(10)
        try:
            results.append(proofs.submit_proof(engine, sess["id"], "fx5a5a000001", ["alice"]))
        except BaseException as e:
            errors.append(e)

    run_threads([one] * 12)
    no_deadlock(errors)
    assert not errors, errors
    assert sum(created for _, created in results) == 1
    assert len({v["id"] for v, _ in results}) == 1
    (p,) = proofs_of(engine, sess["id"])
    assert (p.status, p.rail_id, p.owner_id) == ("verified", "fake_live", "alice")
    assert count(engine, VerificationAttempt) == 1
    submitted = [a for _, a, subject in actions(engine) if a == "proof.submitted"]
    assert len(submitted) == 1
    chain_ok(engine)


def test_a_session_closed_while_guessed_submissions_run(pg, chain):
    """Submissions of distinct transfers to a known session while another connection
    cancels it: each answer is a stored proof or session_not_open, every stored proof was
    answered created, every refused one left nothing; no deadlock, no other error."""
    engine = pg
    sess = open_session(engine)
    txs = [f"fxc1c1{n:06x}" for n in range(16)]
    for tx in txs:
        pay(chain, tx, sess)
    answers: dict[str, object] = {}
    errors: list[BaseException] = []
    go = threading.Event()

    def submit(tx: str):
        def run():
            go.wait(10)
            got = answered(
                lambda: proofs.submit_proof(engine, sess["id"], tx, ["alice"]), Conflict, errors
            )
            if got is not _FAILED:
                answers[tx] = got

        return run

    def cancel():
        go.wait(10)
        time.sleep(0.01)
        set_status(engine, sess["id"], "cancelled")

    go_timer = threading.Timer(0.05, go.set)
    go_timer.start()
    run_threads([submit(tx) for tx in txs] + [cancel])
    no_deadlock(errors)
    assert not errors, errors
    stored_refs = {p.ref for p in proofs_of(engine, sess["id"])}
    for tx, got in answers.items():
        if isinstance(got, tuple):
            assert got[1] is True and got[0]["status"] == "verified", (tx, got)
            assert tx in stored_refs
        else:
            assert got == "session_not_open", (tx, got)
            assert tx not in stored_refs
    assert len(answers) == len(txs)
    # After the cancellation committed, every submission is refused.
    with pytest.raises(Conflict):
        proofs.submit_proof(engine, sess["id"], txs[0] + "ff", ["alice"])
    assert {p.ref for p in proofs_of(engine, sess["id"])} == stored_refs
    held_sessions = {sid for _, sid, _ in holders(engine)}
    assert held_sessions <= {sess["id"]}
    chain_ok(engine)


def test_two_sessions_race_for_one_transfer_with_guesses(pg, chain):
    """One transfer naming both sessions' references, submitted by their owners to their
    known sessions from many threads at once: exactly one session ends up holding it; every
    answer for the other is a refusal; no deadlock."""
    engine = pg
    alice = open_session(engine, owner="alice")
    bob = open_session(engine, owner="bob")
    chain.txs["fx2e2e000001"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_500_000,
        "asset": "fusd",
        "refs": [alice["reference"], bob["reference"]],
    }
    assert engine.known_sessions.get(alice["id"]) and engine.known_sessions.get(bob["id"])
    got: list[tuple[str, object, bool]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def submit(sess: dict, owner: str):
        def run():
            gate.wait(10)
            try:
                view, created = proofs.submit_proof(engine, sess["id"], "fx2e2e000001", [owner])
                got.append((owner, view["status"], created))
            except Conflict as e:
                got.append((owner, e.code, True))
            except BaseException as e:
                errors.append(e)

        return run

    run_threads([submit(alice, "alice"), submit(bob, "bob")] * 4)
    no_deadlock(errors)
    assert not errors, errors
    assert len(got) == 8
    hold_sessions = {sid for _, sid, _ in holders(engine)}
    assert len(hold_sessions) == 1, holders(engine)
    (winner_session,) = hold_sessions
    winner = "alice" if winner_session == alice["id"] else "bob"
    # The winner's session stored one proof: the submission that stored it answers its
    # verdict, the others replay it as it stood (pending until its first attempt committed).
    # The loser's submissions are refused (from the hold), or its proof waits, pending, for
    # the staff decision of a review naming its session (the transfer carries both
    # references), or replays its proof.
    mine = [(a, c) for o, a, c in got if o == winner]
    assert [a for a, c in mine if c] in (["verified"], ["requires_review"]), got
    assert {a for a, c in mine if not c} <= {"pending", "verified", "requires_review"}, got
    theirs = [a for o, a, _ in got if o != winner]
    if [a for a, c in mine if c] == ["verified"]:
        assert "proof_owner_conflict" in theirs, got
    assert set(theirs) <= {"proof_owner_conflict", "pending", "failed"}, got
    with engine.db.tx() as s:
        holding = s.scalars(
            select(Proof).where(Proof.status.in_(("verified", "requires_review")))
        ).all()
    assert [p.session_id for p in holding] == [winner_session]
    chain_ok(engine)


def test_a_rail_paused_while_guessed_submissions_run(pg, chain):
    """SECURITY: once the pause has committed, no proof of the rail commits that read it
    running: every proof.submitted of the rail is on the chain before rail.paused; every
    other submission is refused rail_paused with nothing stored; no deadlock."""
    engine = pg
    sessions = [open_session(engine, owner=o) for o in ("alice", "bob") for _ in range(3)]
    answers: list[object] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def submit(sess: dict, n: int):
        def run():
            go.wait(10)
            for i in range(3):
                tx = f"fxa5e{n:02x}{i:04x}"
                pay(chain, tx, sess)
                got = answered(
                    lambda tx=tx: proofs.submit_proof(engine, sess["id"], tx, [sess["owner_id"]]),
                    Refused,
                    errors,
                )
                if got is not _FAILED:
                    answers.append(got)

        return run

    def pause():
        go.wait(10)
        time.sleep(0.02)
        rails_admin.set_paused(engine, "fake_live", True, OP)

    threading.Timer(0.05, go.set).start()
    run_threads([submit(s, n) for n, s in enumerate(sessions)] + [pause])
    no_deadlock(errors)
    assert not errors, errors
    log = actions(engine)
    (paused_at,) = [i for i, a, subject in log if a == "rail.paused"]
    submitted = {subject: i for i, a, subject in log if a == "proof.submitted"}
    stored_ids = {p.id for s in sessions for p in proofs_of(engine, s["id"])}
    assert set(submitted) == stored_ids
    assert all(i < paused_at for i in submitted.values()), (submitted, paused_at)
    created = [a for a in answers if isinstance(a, tuple)]
    refused = [a for a in answers if not isinstance(a, tuple)]
    assert len(created) == len(stored_ids)
    assert set(refused) <= {"rail_paused"}
    assert len(created) + len(refused) == 18
    chain_ok(engine)


def test_one_key_many_threads_every_guess_wrong(pg, chain, monkeypatch):
    """Eight requests with one Idempotency-Key and one body, each guessing wrong: the work
    runs once (one proof, one submitted event), the claim is completed with its answer, and
    every other request gets that answer or 'in progress'; no deadlock, nothing else."""
    engine = pg
    sess = open_session(engine)
    pay(chain, "fx1c1c000001", sess)
    always_guess(monkeypatch, engine, sess, rail_id="fake_gated")
    body = {"session_id": sess["id"], "proof": "fx1c1c000001"}
    out: list[object] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def one():
        gate.wait(10)
        try:
            out.append(
                idempotency.run_idempotent(
                    engine,
                    "svc:alice",
                    "POST /v1/proofs",
                    "ks-many",
                    body,
                    lambda: proofs.submit_proof(engine, sess["id"], "fx1c1c000001", ["alice"]),
                    lambda r: (201 if r[1] else 200, r[0]),
                )
            )
        except Conflict as e:
            out.append(e.code)
        except BaseException as e:
            errors.append(e)

    run_threads([one] * 8)
    no_deadlock(errors)
    assert not errors, errors
    (p,) = proofs_of(engine, sess["id"])
    assert (p.rail_id, p.owner_id) == ("fake_live", "alice")  # as read, never as guessed
    replies = [a for a in out if isinstance(a, tuple)]
    assert replies and all(code == 201 and v["id"] == p.id for code, v in replies), out
    assert set(a for a in out if not isinstance(a, tuple)) <= {"idempotency_in_progress"}
    (claim,) = claims(engine)
    assert claim.status == "completed" and claim.response["id"] == p.id
    assert [a for _, a, _ in actions(engine)].count("proof.submitted") == 1
    # Once settled, the key answers the stored answer (the work stops at its first
    # statement, where the claim is found taken) and nothing more is stored.
    after = stored(engine)
    again = idempotency.run_idempotent(
        engine,
        "svc:alice",
        "POST /v1/proofs",
        "ks-many",
        body,
        lambda: proofs.submit_proof(engine, sess["id"], "fx1c1c000001", ["alice"]),
        lambda r: (201, r[0]),
    )
    assert again == (201, claim.response)
    assert stored(engine) == after
    chain_ok(engine)


def test_a_forging_tenant_hammering_another_tenants_session_never_blocks_it(pg, chain, monkeypatch):
    """Alice's memory (forged) makes every one of her submissions to bob's session send a
    proof row for it ahead of the read. While she hammers it with bob's own transfer, bob
    submits it: bob's proof is stored and verified, alice only ever gets 404, nothing of
    hers is stored, no deadlock."""
    engine = pg
    bob = open_session(engine, owner="bob")
    pay(chain, "fxbeef000001", bob)
    always_guess(monkeypatch, engine, bob, owner_id="alice")
    stop = threading.Event()
    alice_answers: list[object] = []
    errors: list[BaseException] = []

    def alice():
        while not stop.is_set():
            try:
                proofs.submit_proof(engine, bob["id"], "fxbeef000001", ["alice"])
                alice_answers.append("stored!")
            except NotFound as e:
                alice_answers.append(e.code)
            except BaseException as e:
                errors.append(e)
                return

    bob_answer: list[object] = []

    def bob_submits():
        time.sleep(0.1)
        try:
            bob_answer.append(proofs.submit_proof(engine, bob["id"], "fxbeef000001", ["bob"]))
        except BaseException as e:
            errors.append(e)
        finally:
            time.sleep(0.1)
            stop.set()

    run_threads([alice, alice, alice, bob_submits])
    no_deadlock(errors)
    assert not errors, errors
    assert alice_answers and set(alice_answers) == {"session_not_found"}
    # Answered at all: run_threads fails a thread still blocked at its deadline.
    ((view, created),) = bob_answer
    assert created and view["status"] == "verified" and view["owner_id"] == "bob"
    assert {p.owner_id for p in proofs_of(engine, bob["id"])} == {"bob"}
    assert {o for _, _, o in holders(engine)} == {"bob"}
    chain_ok(engine)


def test_guessed_submissions_with_status_flips_pauses_and_wrong_memories(pg, chain):
    """A mix on one rail: right guesses, forged rails, forged owners, a session flipped
    closed and open, the rail paused and resumed. Every answer is a stored proof or a 4xx;
    no deadlock, no 5xx-class error; the chain verifies."""
    engine = pg
    mine = [open_session(engine) for _ in range(3)]
    bobs = open_session(engine, owner="bob")
    errors: list[BaseException] = []
    codes: list[str] = []
    stop = threading.Event()

    def submitter(n: int):
        def run():
            i = 0
            while not stop.is_set() and i < 25:
                sess = mine[i % len(mine)]
                tx = f"fxe1{n:02x}{i:06x}"
                pay(chain, tx, sess)
                if i % 3 == 1:
                    forge(engine, sess, rail_id="fake_gated")
                if i % 5 == 2:
                    forge(engine, bobs, owner_id="alice")
                    target = bobs
                else:
                    target = sess
                try:
                    proofs.submit_proof(engine, target["id"], tx, ["alice"])
                    codes.append("stored")
                except EngineError as e:
                    assert e.status < 500, e
                    codes.append(e.code)
                except BaseException as e:
                    errors.append(e)
                    return
                i += 1

        return run

    def flipper():
        for k in range(6):
            set_status(engine, mine[k % 3]["id"], "expired")
            time.sleep(0.01)
            set_status(engine, mine[k % 3]["id"], "open")
            if k % 2 == 0:
                rails_admin.set_paused(engine, "fake_live", True, OP)
                time.sleep(0.01)
                rails_admin.set_paused(engine, "fake_live", False, OP)

    run_threads([submitter(n) for n in range(4)] + [flipper])
    no_deadlock(errors)
    assert not errors, errors
    assert set(codes) <= {"stored", "session_not_open", "rail_paused", "session_not_found"}
    assert "stored" in codes and "session_not_found" in codes
    assert codes.count("stored") == sum(len(proofs_of(engine, s["id"])) for s in mine)
    assert proofs_of(engine, bobs["id"]) == []
    with engine.db.tx() as s:
        assert set(s.scalars(select(Proof.rail_id))) == {"fake_live"}
    chain_ok(engine)


# -- the memory itself -----------------------------------------------------------------------


def test_known_sessions_stay_bounded_and_consistent_under_threads():
    known = KnownSessions(size=50)
    errors: list[BaseException] = []

    def churn(n: int):
        def run():
            try:
                for i in range(400):
                    sid = f"s{n}-{i}"
                    known.remember(
                        SimpleNamespace(
                            id=sid, owner_id=f"o{n}", rail_id="r", network="n", asset="a"
                        )
                    )
                    got = known.get(sid)
                    assert got is None or (got.id, got.owner_id) == (sid, f"o{n}")
                    if i % 7 == 0:
                        known.forget(sid)
            except BaseException as e:
                errors.append(e)

        return run

    run_threads([churn(n) for n in range(6)])
    assert not errors, errors
    assert len(known) <= 50
    known.remember(SimpleNamespace(id="last", owner_id="o", rail_id="r", network="n", asset="a"))
    assert len(known) == 50 and known.get("last") == SessionKey("last", "o", "r", "n", "a")
