"""Idempotency-Key and refusals: a refusal raised after the request ran side effects (a claim
of a transfer another session holds is audited and counted) is the request's result, stored
and replayed under its key; a refusal that ran nothing releases the key. SQLite and
PostgreSQL."""

from __future__ import annotations

import gc
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


def test_a_refusals_release_leaves_a_later_requests_claim_of_the_key(engine):
    # Request A hung (an outage), staff released its claim as stuck (an assurance repair),
    # and the client's retry B claimed the key and runs. A, refused at last, releases only
    # the claim it wrote: deleting B's, a third try would run the work beside B.
    p, e, k = "svc:x", "POST /x", "k-a"

    def work():
        with engine.db.tx() as s:  # the work's first transaction: A's claim rides with it
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
        raise Conflict("session_not_open", "closed")  # A is refused, having run nothing

    with pytest.raises(Conflict):
        idempotency.run_idempotent(engine, p, e, k, {}, work)
    with engine.db.tx() as s:
        b = s.get(IdempotencyClaim, (p, e, k))
        assert b is not None and b.status == ClaimStatus.in_progress


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
