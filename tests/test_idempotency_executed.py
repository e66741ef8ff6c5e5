"""Idempotency-Key and refusals: a refusal raised after the request ran side effects (a claim
of a transfer another session holds is audited and counted) is the request's result, stored
and replayed under its key; a refusal that ran nothing releases the key. SQLite and
PostgreSQL."""

from __future__ import annotations

import gc
import threading
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, auth
from tests.helpers import audit_actions
from verifier.core import timeutil
from verifier.core.errors import Conflict, NotFound
from verifier.services import idempotency
from verifier.storage.models import ClaimStatus, IdempotencyClaim
from verifier.storage.repo import idempotency as claim_repo

AMOUNT = 1_500_000


def open_session(client, token: str, owner: str) -> dict:
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(token),
        json={
            "owner_id": owner,
            "rail_id": "fake_live",
            "access_product_id": "pro",
            "amount": str(AMOUNT),
            "recipient": "fatreasury",
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def submit(client, token: str, session_id: str, tx: str, key: str | None = None):
    headers = auth(token) | ({"Idempotency-Key": key} if key else {})
    return client.post("/v1/proofs", headers=headers, json={"session_id": session_id, "proof": tx})


@pytest.mark.parametrize(
    "thief,token,code,action",
    [
        ("bob", OTHER_SERVICE_TOKEN, "proof_owner_conflict", "proof.owner_conflict"),
        ("alice", SERVICE_TOKEN, "duplicate_payment", "proof.duplicate_payment"),
    ],
)
def test_an_audited_refusal_is_replayed_under_its_key(
    client, engine, chain, thief, token, code, action
):
    alice = open_session(client, SERVICE_TOKEN, "alice")
    other = open_session(client, token, thief)
    chain.txs["fx0505050505"] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": AMOUNT,
        "asset": "fusd",
        "refs": [alice["reference"]],
    }
    r = submit(client, SERVICE_TOKEN, alice["id"], "fx0505050505")
    assert r.json()["status"] == "verified", r.text

    first = submit(client, token, other["id"], "fx0505050505", key="k-1")
    assert (first.status_code, first.json()["error"]["code"]) == (409, code)
    again = submit(client, token, other["id"], "fx0505050505", key="k-1")
    assert (again.status_code, again.json()) == (409, first.json())
    assert [a.action for a in audit_actions(engine)].count(action) == 1
    assert (
        f'replay_refusals_total{{code="{code}",rail_id="fake_live"}} 1.0'
        in client.get("/metrics").text
    )
    with engine.db.tx() as s:
        claim = s.scalar(select(IdempotencyClaim).where(IdempotencyClaim.key == "k-1"))
        assert (claim.status, claim.response_code) == (ClaimStatus.completed, 409)

    # Without a key, every refusal is a request of its own, audited each time.
    submit(client, token, other["id"], "fx0505050505")
    assert [a.action for a in audit_actions(engine)].count(action) == 2


def test_only_an_executed_refusal_keeps_the_claim(engine):
    """The storage rule itself: `executed` decides, whatever the refusal's status."""

    def refuse(e: Exception):
        def work():
            raise e

        return work

    for key, err, kept in (
        ("a", Conflict("proof_owner_conflict", "held", executed=True), True),
        ("b", Conflict("session_not_open", "closed"), False),
        ("c", NotFound("not_found", "no such session"), False),
    ):
        with pytest.raises(type(err)):
            idempotency.run_idempotent(engine, "svc:x", "POST /x", key, {}, refuse(err))
        with engine.db.tx() as s:
            claim = s.get(IdempotencyClaim, ("svc:x", "POST /x", key))
            assert (claim is not None) is kept, key
            if kept:
                assert (claim.response_code, claim.response) == (err.status, err.body())
    # The released key runs again; the kept one answers what it answered.
    assert idempotency.run_idempotent(engine, "svc:x", "POST /x", "b", {}, lambda: (201, {})) == (
        201,
        {},
    )
    status, body = idempotency.run_idempotent(
        engine, "svc:x", "POST /x", "a", {}, lambda: (201, {})
    )
    assert (status, body["error"]["code"]) == (409, "proof_owner_conflict")


def _released_and_claimed_again(engine, p: str, e: str, k: str) -> None:
    """Request A hung (an outage), staff released its claim as stuck (an assurance repair),
    and the client's retry B claimed the key (the same request, later) and runs."""
    with engine.db.tx() as s:
        mine = s.get(IdempotencyClaim, (p, e, k))
        assert mine is not None and mine.status == ClaimStatus.in_progress
        request_hash = mine.request_hash
    with engine.db.tx() as s:
        s.execute(delete(IdempotencyClaim).where(IdempotencyClaim.key == k))
        claim_repo.insert_claim(
            s,
            {
                "principal": p,
                "endpoint": e,
                "key": k,
                "request_hash": request_hash,
                "created_at": timeutil.process_now() + timedelta(seconds=1),
                "status": ClaimStatus.in_progress.value,
                "response_code": None,
                "completed_at": None,
            },
        )


def _claim(engine, p: str, e: str, k: str) -> IdempotencyClaim:
    with engine.db.tx() as s:
        c = s.get(IdempotencyClaim, (p, e, k))
        assert c is not None
        return c


def test_a_refusals_release_leaves_a_later_requests_claim_of_the_key(engine):
    # A, refused at last, releases only the claim it wrote: deleting B's, a third try would
    # run the work beside B.
    p, e, k = "svc:x", "POST /x", "k-a"

    def work():
        with engine.db.tx() as s:  # the work's first transaction: A's claim rides with it
            s.get(IdempotencyClaim, (p, e, k))
        _released_and_claimed_again(engine, p, e, k)
        raise Conflict("session_not_open", "closed")  # A is refused, having run nothing

    with pytest.raises(Conflict):
        idempotency.run_idempotent(engine, p, e, k, {}, work)
    assert _claim(engine, p, e, k).status == ClaimStatus.in_progress


def test_a_late_request_does_not_complete_a_later_requests_claim(engine):
    """A, finishing after its claim was released and B claimed the key, answers its own client
    but stores nothing: its answer written into B's claim would be replayed as B's while B's
    work still runs."""
    p, e, k = "svc:x", "POST /x", "k-late"

    def work():
        with engine.db.tx() as s:
            s.get(IdempotencyClaim, (p, e, k))
        _released_and_claimed_again(engine, p, e, k)
        return (201, {"made_by": "A"})

    assert idempotency.run_idempotent(engine, p, e, k, {}, work) == (201, {"made_by": "A"})
    assert _claim(engine, p, e, k).status == ClaimStatus.in_progress


def test_a_late_request_completing_with_its_work_leaves_a_later_claim(engine):
    """The same with the answer stored in the work's last transaction (`Database.finish`)."""
    p, e, k = "svc:x", "POST /x", "k-late-finish"

    def work():
        with engine.db.tx() as s:
            s.get(IdempotencyClaim, (p, e, k))
        _released_and_claimed_again(engine, p, e, k)
        with engine.db.tx() as s:  # A's last transaction carries its completion
            engine.db.finish(s, {"made_by": "A"})
        return {"made_by": "A"}

    idempotency.run_idempotent(engine, p, e, k, {}, work, answer=lambda r: (201, r))
    assert _claim(engine, p, e, k).status == ClaimStatus.in_progress


def test_the_retry_holding_the_key_gets_its_own_answer_after_a_late_request(engine):
    """B, the retry holding the key, finishes after A: its answer is stored and returned. Its
    completion found no claim in progress (A had completed it) and answered 500, "may have
    been applied in part", for work that committed."""
    p, e, k = "svc:x", "POST /x", "k-both"
    b_claimed, a_done = threading.Event(), threading.Event()
    got: dict[str, object] = {}

    def work_a():
        with engine.db.tx() as s:
            s.get(IdempotencyClaim, (p, e, k))
        with engine.db.tx() as s:  # staff release A's claim as stuck
            s.execute(delete(IdempotencyClaim).where(IdempotencyClaim.key == k))
        b.start()  # the client's retry claims the key and runs
        assert b_claimed.wait(30)
        return (201, {"made_by": "A"})

    def work_b():
        with engine.db.tx() as s:  # B's first transaction: its claim rides with it
            s.get(IdempotencyClaim, (p, e, k))
        b_claimed.set()
        assert a_done.wait(30)
        return (201, {"made_by": "B"})

    def run_b():
        try:
            got["b"] = idempotency.run_idempotent(engine, p, e, k, {}, work_b)
        except BaseException as err:  # noqa: BLE001 - reported below
            got["b"] = err

    b = threading.Thread(target=run_b)
    assert idempotency.run_idempotent(engine, p, e, k, {}, work_a) == (201, {"made_by": "A"})
    a_done.set()
    b.join(60)
    assert not b.is_alive()
    assert got["b"] == (201, {"made_by": "B"}), f"B: {got['b']!r}"
    c = _claim(engine, p, e, k)
    assert (c.status, c.response) == (ClaimStatus.completed, {"made_by": "B"})


class _GoneEngine:
    pass


def test_a_kept_releases_thread_ends_once_its_engine_is_gone(monkeypatch):
    monkeypatch.setattr(idempotency, "RELEASE_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(idempotency, "RELEASE_RETRY_MAX_S", 0.02)
    engine = _GoneEngine()
    kept = idempotency._Unreleased(engine)  # type: ignore[arg-type]
    key = idempotency._Key(
        "svc:x", "POST /x", "k", idempotency.Request.of({}), timeutil.process_now()
    )
    kept.add(key)
    thread = kept._thread
    assert thread is not None
    del engine
    gc.collect()
    thread.join(timeout=2.0)
    assert not thread.is_alive(), "the release thread outlives its engine, looping for good"
    assert not kept, "the releases of an engine that is gone are kept for good"
