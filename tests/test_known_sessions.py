"""A submission to a session this process has seen (verifier.core.known_sessions) sends its
proof's statements ahead of the session's read, in its round trip on PostgreSQL. The guess is
only ever a guess: the read decides. A guess that does not fit the session as read (another
owner, another rail, no longer open) rolls back everything sent for it and the submission is
made the usual way, with the usual answer; nothing it sent is ever stored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select, update

from tests.test_engine_proofs import count, open_session, pay
from verifier.core.errors import Conflict, NotFound, Refused
from verifier.core.known_sessions import KnownSessions, SessionKey
from verifier.services import audit, proofs, rails_admin
from verifier.storage.models import AuditEvent, PaymentSession, Proof, TransferHold


def stored(engine) -> tuple[int, int, int]:
    return count(engine, Proof), count(engine, AuditEvent), count(engine, TransferHold)


def chain_ok(engine) -> None:
    with engine.db.tx() as s:
        report = audit.verify_chain(s)
    assert report.ok, report.message


def guess(engine, sess: dict, **wrong: str) -> None:
    """Make this process remember `sess` with some of its facts wrong."""
    facts = {k: sess[k] for k in ("id", "owner_id", "rail_id", "network", "asset")}
    engine.known_sessions.remember(SimpleNamespace(**{**facts, **wrong}))


def set_status(engine, session_id: str, status: str) -> None:
    with engine.db.tx() as s:
        s.execute(
            update(PaymentSession).where(PaymentSession.id == session_id).values(status=status)
        )


def test_a_session_opened_here_is_known_by_its_owner_and_rail(engine):
    sess = open_session(engine)
    key = engine.known_sessions.get(sess["id"])
    assert key == SessionKey(sess["id"], "alice", "fake_live", sess["network"], sess["asset"])


def test_a_guess_naming_the_caller_as_owner_of_another_owners_session_stores_nothing(engine, chain):
    """SECURITY: the process's memory says alice owns bob's session (it never does: an owner
    never changes; here it is forged). Alice's submission goes ahead of the read; the read
    answers 404 as for any other owner's session, and nothing she sent is stored: no proof,
    no hold, no audit event. Bob's own submission of the transfer then verifies."""
    bob = open_session(engine, owner="bob")
    pay(chain, "fxc0000001", bob)
    guess(engine, bob, owner_id="alice")
    before = stored(engine)
    with pytest.raises(NotFound):
        proofs.submit_proof(engine, bob["id"], "fxc0000001", ["alice"])
    assert stored(engine) == before
    chain_ok(engine)
    view, created = proofs.submit_proof(engine, bob["id"], "fxc0000001", ["bob"])
    assert (view["status"], created) == ("verified", True)
    assert view["owner_id"] == "bob"
    chain_ok(engine)


def test_a_guess_of_another_rail_is_answered_as_the_session_is(engine, chain):
    """A guess whose rail is not the session's: what was sent for it (a proof row with the
    wrong rail and fingerprint) is rolled back, and the proof is stored for the session's
    own rail; the process remembers the session as it is."""
    sess = open_session(engine)
    pay(chain, "fxc0000002", sess)
    guess(engine, sess, rail_id="fake_gated")
    view, created = proofs.submit_proof(engine, sess["id"], "fxc0000002", ["alice"])
    assert (view["status"], view["rail_id"], created) == ("verified", "fake_live", True)
    with engine.db.tx() as s:
        rails = set(s.scalars(select(Proof.rail_id).where(Proof.session_id == sess["id"])))
    assert rails == {"fake_live"}
    assert engine.known_sessions.get(sess["id"]).rail_id == "fake_live"
    chain_ok(engine)


def test_a_known_session_no_longer_open_takes_no_proof_and_replays_its_own(engine, chain):
    """The session closed after this process saw it: a new transfer is refused
    (session_not_open) with nothing stored, a proof it took is answered as the replay it is,
    and the process stops guessing for it."""
    sess = open_session(engine)
    pay(chain, "fxc0000003", sess)
    first, _ = proofs.submit_proof(engine, sess["id"], "fxc0000003", ["alice"])
    set_status(engine, sess["id"], "expired")
    assert engine.known_sessions.get(sess["id"]) is not None  # still remembered as open
    pay(chain, "fxc0000004", sess)
    before = stored(engine)
    with pytest.raises(Conflict) as refused:
        proofs.submit_proof(engine, sess["id"], "fxc0000004", ["alice"])
    assert refused.value.code == "session_not_open"
    assert stored(engine) == before
    assert engine.known_sessions.get(sess["id"]) is None
    again, created = proofs.submit_proof(engine, sess["id"], "fxc0000003", ["alice"])
    assert (again["id"], created) == (first["id"], False)
    assert stored(engine) == before
    chain_ok(engine)


def test_a_known_session_paid_since_still_takes_a_second_transfer_as_it_is_guessed(engine, chain):
    """Paid after this process saw it: a second transfer the payer made for it is stored and
    verified (for refund: the gate never credits it), through the guess, which still holds."""
    sess = open_session(engine)
    pay(chain, "fxc0000013", sess)
    proofs.submit_proof(engine, sess["id"], "fxc0000013", ["alice"])
    set_status(engine, sess["id"], "paid")
    pay(chain, "fxc0000014", sess)
    second, created = proofs.submit_proof(engine, sess["id"], "fxc0000014", ["alice"])
    assert (second["status"], second["receipt_id"], created) == ("verified", None, True)
    assert "not credited" in second["detail"]
    assert engine.known_sessions.get(sess["id"]) is not None
    chain_ok(engine)


def test_a_known_session_on_a_paused_rail_or_with_a_malformed_proof_stores_nothing(engine, chain):
    sess = open_session(engine)
    pay(chain, "fxc0000005", sess)
    before = stored(engine)
    with pytest.raises(NotFound):  # none of the caller's sessions: not even a guess
        proofs.submit_proof(engine, sess["id"], "fxc0000005", ["mallory"])
    op = audit.Operator("ops1", "INC-9", "drill")
    rails_admin.set_paused(engine, "fake_live", True, op)
    before = stored(engine)
    with pytest.raises(Refused):
        proofs.submit_proof(engine, sess["id"], "fxc0000005", ["alice"])
    assert stored(engine) == before
    rails_admin.set_paused(engine, "fake_live", False, op)
    before = stored(engine)
    with pytest.raises(Exception) as bad:
        proofs.submit_proof(engine, sess["id"], "not-a-fake-tx", ["alice"])
    assert getattr(bad.value, "field", None) == "proof"
    assert stored(engine) == before
    view, _ = proofs.submit_proof(engine, sess["id"], "fxc0000005", ["alice"])
    assert view["status"] == "verified"
    chain_ok(engine)


def test_known_sessions_keep_the_most_recently_seen():
    known = KnownSessions(size=3)
    for n in range(5):
        known.remember(
            SimpleNamespace(id=f"s{n}", owner_id="o", rail_id="r", network="n", asset="a")
        )
    known.remember(SimpleNamespace(id="s2", owner_id="o", rail_id="r", network="n", asset="a"))
    known.remember(SimpleNamespace(id="s5", owner_id="o", rail_id="r", network="n", asset="a"))
    assert len(known) == 3
    assert [known.get(f"s{n}") is not None for n in range(6)] == [
        False,
        False,
        True,
        False,
        True,
        True,
    ]


def test_sessions_counted_by_the_database_match_what_was_opened(engine):
    """Opening sessions never stores more than their rows (a guess is in memory only)."""
    for n in range(3):
        open_session(engine, owner=f"o{n}")
    with engine.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(PaymentSession)) == 3
    assert len(engine.known_sessions) == 3
