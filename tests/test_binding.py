"""A transfer pays only the session it was made for.

Treasuries are shared by every tenant, so amount and recipient never identify a session: a
Solana session binds a reference only its payment carries; EVM/Tron sessions bind the payer;
a transfer that could back two open sessions goes to review; and a failed (or pending) claim
of someone else's transfer reserves nothing. On SQLite and PostgreSQL; the many-process
version of the cross-owner race is tests/test_pg_concurrency.py.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from solders.keypair import Keypair
from sqlalchemy import select

from rails.codes import FailureCode
from rails.solana import TOKEN_PROGRAMS, token_account
from rails.transport.cassette import Call, CassetteTransport
from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, STAFF_TOKEN, auth
from tests.helpers import FIXTURES, audit_actions, cassette_engine
from tests.test_e2e_http import (
    EVM_CLOCK,
    EVM_USDC_AMOUNT,
    EVM_USDC_FROM,
    EVM_USDC_TO,
    EVM_USDC_TX,
)
from verifier.core.errors import BadInput, Conflict
from verifier.http.api import create_app
from verifier.services import gate, proofs, sessions
from verifier.services.assurance import assurance_report
from verifier.services.audit import Operator
from verifier.storage.db import Database, upgrade
from verifier.storage.models import (
    PaymentSession,
    Proof,
    Receipt,
    TransferHold,
    VerificationAttempt,
)

DEMO_CASSETTE = json.loads((FIXTURES / "solana" / "generated" / "demo_payment.json").read_text())
DEMO = DEMO_CASSETTE["demo"]
TREASURY = DEMO["recipient"]
USDC_MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
CONFIGURED_TREASURY = "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui"
TRON_RECIPIENT = "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn"


def _demo_ledger() -> dict[str, str]:
    """Accounts of the recorded demo payment that other payments carry too: the payer's
    wallet (the fee payer, a signer), the payer's source token account and the treasury's."""
    tx = next(c for c in DEMO_CASSETTE["calls"] if c["method"] == "getTransaction")["result"]
    keys = [k["pubkey"] for k in tx["transaction"]["message"]["accountKeys"]]
    payer = keys[0]
    by_owner = {b["owner"]: keys[b["accountIndex"]] for b in tx["meta"]["preTokenBalances"]}
    return {
        "payer wallet": payer,
        "payer token account": by_owner[payer],
        "treasury token account": by_owner[TREASURY],
    }


DEMO_LEDGER = _demo_ledger()
STAFF = auth(STAFF_TOKEN)
OPS = {"incident_id": "INC-9", "operator_reason": "binding test"}
WELL_KNOWN = {
    "memo program": "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",
    "token program": "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
    "the rail's mint": USDC_MINT,
    "clock sysvar": "SysvarC1ock11111111111111111111111111111111",
    "system program": "11111111111111111111111111111111",
    "the session's recipient": TREASURY,
    "a configured treasury": CONFIGURED_TREASURY,
}


@pytest.fixture
def sol(db_url):
    e = cassette_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDT": CONFIGURED_TREASURY})
    with TestClient(create_app(e), raise_server_exceptions=False) as c:
        yield e, c
    e.db.dispose()


def solana_session(c, token=SERVICE_TOKEN, owner="alice", **body):
    body = {
        "owner_id": owner,
        "rail_id": "solana_usdc",
        "access_product_id": "pro",
        "amount": DEMO["amount"],
        "recipient": TREASURY,
        **body,
    }
    return c.post("/v1/payment-sessions", headers=auth(token), json=body)


def submit(c, session_id, proof, token=SERVICE_TOKEN):
    return c.post(
        "/v1/proofs", headers=auth(token), json={"session_id": session_id, "proof": proof}
    )


# -- Solana: the reference ----------------------------------------------------------------


def test_a_session_without_a_reference_is_refused_on_solana(sol):
    _, c = sol
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=None)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "reference"


@pytest.mark.parametrize("what", sorted(WELL_KNOWN))
def test_a_well_known_account_is_no_reference(sol, what):
    _, c = sol
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=WELL_KNOWN[what])
    assert r.status_code == 422, (what, r.text)
    assert r.json()["error"]["field"] == "reference"


def test_by_default_every_session_gets_a_fresh_reference(sol):
    _, c = sol
    refs = {solana_session(c).json()["reference"] for _ in range(5)}
    assert len(refs) == 5 and None not in refs


def test_cross_owner_theft_of_a_payment_is_refused_and_cannot_block_it(sol):
    """Alice pays her session; Bob opens one of the same amount on the same treasury and
    submits Alice's signature first. Bob is never paid, and Alice still is."""
    e, c = sol
    alice = solana_session(c, reference=DEMO["reference"], memo=DEMO["memo"])
    assert alice.status_code == 201, alice.text
    # Bob cannot bind Alice's reference, nor go unbound.
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=DEMO["reference"])
    assert (r.status_code, r.json()["error"]["code"]) == (422, "reference_in_use")
    bob = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob")
    assert bob.status_code == 201 and bob.json()["reference"] != DEMO["reference"]

    # Bob first: his proof fails against his own session's binding, and holds nothing.
    r = submit(c, bob.json()["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("failed", "reference_missing")
    bob_proof = r.json()["id"]

    # Alice's own submission is not blocked.
    r = submit(c, alice.json()["id"], DEMO["signature"])
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "verified", r.json()
    alice_proof = r.json()["id"]

    # Now the transfer is held: Bob again is refused before the chain is asked, audited.
    r = submit(c, bob.json()["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "proof_owner_conflict")
    assert alice.json()["id"] not in r.text and "alice" not in r.text
    conflicts = [a for a in audit_actions(e, alice_proof) if a.action == "proof.owner_conflict"]
    assert len(conflicts) == 1
    assert conflicts[0].data["claimed_by_owner"] == "bob"
    assert conflicts[0].data["held_by_session_id"] == alice.json()["id"]
    metrics = c.get("/metrics").text
    assert (
        'railproof_replay_refusals_total{code="proof_owner_conflict",rail_id="solana_usdc"} 1.0'
        in metrics
    )

    # Bob's failed claim stays on record, the apply credits Alice only.
    attempts = c.get(f"/v1/admin/proofs/{bob_proof}/attempts", headers=STAFF).json()
    assert [a["failure_code"] for a in attempts] == ["reference_missing"]
    r = c.post(
        f"/v1/admin/proofs/{alice_proof}/apply", headers=STAFF, json={"confirm": True, **OPS}
    )
    assert r.status_code == 200 and r.json()["applied"] is True, r.text
    ents = c.get("/v1/entitlements", params={"owner_id": "alice"}, headers=auth()).json()
    assert [x["status"] for x in ents] == ["active"]
    ents = c.get(
        "/v1/entitlements", params={"owner_id": "bob"}, headers=auth(OTHER_SERVICE_TOKEN)
    ).json()
    assert [x["status"] for x in ents] == ["pending"]


TIPPED = json.loads((FIXTURES / "solana" / "generated" / "extra_instructions_a.json").read_text())
TIPPED_SIG = next(c for c in TIPPED["calls"] if c["method"] == "getTransaction")["params"][0]
TIP_ACCOUNT = "HH42wyq3g8DdUsY6pAM8FaBmFVyoj5NQDhbkYCai3eyK"  # the wallet's SOL tip goes here


@pytest.mark.parametrize("alice_open", [True, False], ids=["alice-open", "alice-expired"])
def test_a_tip_account_the_payment_pays_into_is_no_reference(sol, alice_open):
    """A wallet's payment carries a SOL tip to an account shared by many payments (a tip or
    fee account: writable, not a signer, no token balance). Bob names it as his session's
    reference, same amount, same treasury, and submits Alice's payment: he is never paid by
    it and never holds it, whether Alice's session is still open (he would block her) or
    expired (he would take it)."""
    e, c = sol
    want = TIPPED["expect"]
    if alice_open:
        alice = solana_session(
            c, amount=want["amount"], reference=want["reference"], memo=want["memo"]
        )
    else:
        alice = solana_session(c, amount=want["amount"], expires_in_seconds=60)
    assert alice.status_code == 201, alice.text
    bob = solana_session(
        c, token=OTHER_SERVICE_TOKEN, owner="bob", amount=want["amount"], reference=TIP_ACCOUNT
    )
    assert bob.status_code == 201, bob.text  # the key is no program, treasury or mint

    r = submit(c, bob.json()["id"], TIPPED_SIG, OTHER_SERVICE_TOKEN)
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("failed", "reference_missing")
    assert "writable" in r.json()["detail"]
    with e.db.tx() as s:
        assert s.scalars(select(TransferHold)).all() == []  # nothing reserved for Bob

    r = submit(c, alice.json()["id"], TIPPED_SIG)
    if alice_open:
        assert (r.status_code, r.json()["status"]) == (201, "verified"), r.text
    else:  # her session ran out before the payment landed: hers to sort out, not Bob's
        assert (r.status_code, r.json()["status"]) == (201, "failed"), r.text
        assert r.json()["failure_code"] != "proof_owner_conflict"
    ents = c.get(
        "/v1/entitlements", params={"owner_id": "bob"}, headers=auth(OTHER_SERVICE_TOKEN)
    ).json()
    assert [x["status"] for x in ents] == ["pending"]


@pytest.mark.parametrize(
    "wallet,program",
    [(TREASURY, p) for p in sorted(TOKEN_PROGRAMS)] + [(CONFIGURED_TREASURY, None)],
)
def test_a_treasurys_token_account_is_no_reference(sol, wallet, program):
    """Every payment to a treasury carries its token account: as a reference it would let a
    session claim any of them."""
    _, c = sol
    ata = token_account(wallet, USDC_MINT, *([program] if program else []))
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=ata)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "invalid_reference",
        "reference",
    )


def test_a_stored_treasurys_token_account_is_no_reference(sol):
    """A treasury approved and stored for a rail, not named by the configuration: a session
    that names its recipient is sent with the rail's state read, and its reference is checked
    against the stored treasuries once they are back. Refused, nothing stored."""
    from solders.pubkey import Pubkey
    from sqlalchemy import func, update

    from verifier.storage.models import PaymentSession, RailState

    e, c = sol
    stored = str(Pubkey.new_unique())
    with e.db.tx() as s:
        s.execute(
            update(RailState).where(RailState.rail_id == "solana_usdt").values(treasury=stored)
        )
        before = s.scalar(select(func.count()).select_from(PaymentSession))
    r = solana_session(
        c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=token_account(stored, USDC_MINT)
    )
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["field"]) == (
        422,
        "invalid_reference",
        "reference",
    ), r.text
    with e.db.tx() as s:
        assert s.scalar(select(func.count()).select_from(PaymentSession)) == before
    # A fresh key still opens one.
    fresh = str(Keypair().pubkey())
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=fresh)
    assert r.status_code == 201, r.text


def test_the_recorded_treasury_token_account_is_refused(sol):
    _, c = sol
    ata = DEMO_LEDGER["treasury token account"]
    assert ata in {token_account(TREASURY, USDC_MINT, p) for p in TOKEN_PROGRAMS}
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=ata)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_reference"), r.text


@pytest.mark.parametrize("bad", ["not-a-key", "0OIl" * 11, "1" * 20, "5d1Gsdrx"])
def test_a_malformed_reference_is_refused(sol, bad):
    _, c = sol
    r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=bad)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == (
        "invalid_reference",
        "reference",
    )


@pytest.mark.parametrize("ledger", ["payer wallet", "payer token account"])
def test_a_payers_account_as_reference_cannot_claim_the_payment(sol, ledger):
    """A repeat payer's wallet and token account are in each of their payments. Bob binds
    one as his session's reference (nothing tells at opening time that it is someone's
    wallet) and submits Alice's payment first: it fails his binding, and Alice is paid."""
    _, c = sol
    alice = solana_session(c, reference=DEMO["reference"], memo=DEMO["memo"])
    assert alice.status_code == 201, alice.text
    bob = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=DEMO_LEDGER[ledger])
    assert bob.status_code == 201, bob.text

    r = submit(c, bob.json()["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == ("failed", "reference_missing")

    r = submit(c, alice.json()["id"], DEMO["signature"])
    assert (r.status_code, r.json()["status"]) == (201, "verified"), r.text
    r = c.post(
        f"/v1/admin/proofs/{r.json()['id']}/apply", headers=STAFF, json={"confirm": True, **OPS}
    )
    assert r.json()["applied"] is True, r.text
    ents = c.get(
        "/v1/entitlements", params={"owner_id": "bob"}, headers=auth(OTHER_SERVICE_TOKEN)
    ).json()
    assert [x["status"] for x in ents] == ["pending"]


def demo_with_extra_key(key: str) -> CassetteTransport:
    """The recorded demo payment whose message also lists `key`, a read-only non-signer
    account (as a client adds a reference key to its transfer instruction)."""
    calls = copy.deepcopy(DEMO_CASSETTE["calls"])
    tx = next(c for c in calls if c["method"] == "getTransaction")["result"]
    tx["transaction"]["message"]["accountKeys"].append(
        {"pubkey": key, "signer": False, "source": "transaction", "writable": False}
    )
    for lamports in ("preBalances", "postBalances"):
        tx["meta"][lamports].append(0)
    return CassetteTransport([Call(c) for c in calls], "solana-mainnet")


SMART_WALLET = "SQDS4ep65T869zMMBKyuUq6aD6EgTu8psMjkvj52pCf"  # a vault's execute instruction


def demo_through_a_smart_wallet(reference: str) -> CassetteTransport:
    """The recorded demo payment carrying `reference` (instead of its own) both on its transfer
    and in the accounts of another program's instruction, as a payment a smart wallet's
    execute makes: the wallet's program lists every account its inner transfer uses."""
    calls = copy.deepcopy(DEMO_CASSETTE["calls"])
    tx = next(c for c in calls if c["method"] == "getTransaction")["result"]
    message = tx["transaction"]["message"]
    for k in message["accountKeys"]:
        if k["pubkey"] == DEMO["reference"]:
            k["pubkey"] = reference
    message["accountKeys"].append(
        {"pubkey": SMART_WALLET, "signer": False, "source": "transaction", "writable": False}
    )
    for lamports in ("preBalances", "postBalances"):
        tx["meta"][lamports].append(0)
    message["instructions"].insert(
        0, {"programId": SMART_WALLET, "accounts": [reference], "data": "", "stackHeight": None}
    )
    return CassetteTransport([Call(c) for c in calls], "solana-mainnet")


@pytest.mark.parametrize("generated", [True, False], ids=["generated", "chosen"])
def test_a_generated_reference_is_found_wherever_the_transaction_carries_it(sol, generated):
    """A reference railproof generated (from a secret, for this session alone) is this
    payment's wherever it sits, also passed to another program (a smart wallet paying from
    its vault): verified. A key the client chose is taken only where no program's shared
    accounts can be: there it is `reference_missing`."""
    e, c = sol
    body = {"memo": DEMO["memo"]} if generated else {"reference": str(Keypair().pubkey())}
    r = solana_session(c, **body)
    assert r.status_code == 201, r.text
    reference = r.json()["reference"]
    e.chains.set_transport("solana-mainnet", demo_through_a_smart_wallet(reference))
    view = submit(c, r.json()["id"], DEMO["signature"]).json()
    if generated:
        assert (view["status"], view["failure_code"]) == ("verified", None), view
    else:
        assert (view["status"], view["failure_code"]) == ("failed", "reference_missing"), view


@pytest.mark.parametrize("rival", [True, False])
def test_a_transfer_carrying_two_open_sessions_references_is_held_for_review(sol, rival):
    """Ambiguity on Solana: the transfer carries session A's reference and session B's (same
    recipient and amount, another owner). Neither may take it first-come: it is held for
    review with both named. Without B, the extra key changes nothing."""
    e, c = sol
    extra = str(Keypair().pubkey())
    e.chains.set_transport("solana-mainnet", demo_with_extra_key(extra))
    a = solana_session(c, reference=DEMO["reference"], memo=DEMO["memo"])
    assert a.status_code == 201, a.text
    if not rival:
        r = submit(c, a.json()["id"], DEMO["signature"])
        assert (r.status_code, r.json()["status"]) == (201, "verified"), r.text
        return
    b = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=extra)
    assert b.status_code == 201, b.text

    r = submit(c, a.json()["id"], DEMO["signature"])
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == (
        "requires_review",
        "ambiguous_transfer",
    )
    attempts = c.get(f"/v1/admin/proofs/{r.json()['id']}/attempts", headers=STAFF).json()
    assert set(attempts[-1]["observed"]["candidate_sessions"]) == {a.json()["id"], b.json()["id"]}
    # Held for review: B cannot take it meanwhile.
    r = submit(c, b.json()["id"], DEMO["signature"], OTHER_SERVICE_TOKEN)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "proof_owner_conflict")


def test_many_clients_racing_with_ledger_references_never_take_the_payment(sol):
    """Thieves with the payer's wallet, the payer's token account and fresh references race
    Alice's own submissions: Alice's session ends verified and credited exactly once, and no
    thief's proof holds or is credited."""
    e, c = sol
    alice = solana_session(c, reference=DEMO["reference"], memo=DEMO["memo"]).json()
    thieves = [
        solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=ref).json()
        for ref in (DEMO_LEDGER["payer wallet"], DEMO_LEDGER["payer token account"])
    ] + [
        solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob").json(),
        solana_session(c, owner="alice-2").json(),
    ]
    jobs = [(alice, SERVICE_TOKEN)] * 4 + [
        (t, OTHER_SERVICE_TOKEN if t["owner_id"] == "bob" else SERVICE_TOKEN) for t in thieves
    ] * 3
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda j: (j[0], submit(c, j[0]["id"], DEMO["signature"], j[1])), jobs)
        )

    def j_token(sess):
        return OTHER_SERVICE_TOKEN if sess["owner_id"] == "bob" else SERVICE_TOKEN

    for sess, r in answers:
        assert r.status_code in (200, 201, 409), r.text
        if sess is alice:
            # A resubmission racing the first may still see the proof being verified.
            assert r.status_code in (200, 201), r.text
            assert r.json()["status"] in ("verified", "pending"), r.text
        elif r.status_code == 409:
            assert r.json()["error"]["code"] in ("proof_owner_conflict", "duplicate_payment")
        elif r.status_code == 200 and r.json()["status"] == "pending":
            # A resubmission racing the same session's first may see it being verified.
            final = c.get(f"/v1/proofs/{r.json()['id']}", headers=auth(j_token(sess))).json()
            assert final["failure_code"] == "reference_missing", final
        else:
            assert r.json()["failure_code"] == "reference_missing", r.text
    with e.db.tx() as s:
        held = s.scalars(select(TransferHold.session_id)).all()
        holding = s.scalars(select(Proof.session_id).where(Proof.status == "verified")).all()
    assert set(held) == {alice["id"]} and holding == [alice["id"]]
    (pid,) = {r.json()["id"] for sess, r in answers if sess is alice}
    assert c.get(f"/v1/proofs/{pid}", headers=auth()).json()["status"] == "verified"
    for _ in range(3):
        r = c.post(f"/v1/admin/proofs/{pid}/apply", headers=STAFF, json={"confirm": True, **OPS})
        assert r.json()["applied"] is True, r.text
    for owner, token, want in (
        ("alice", SERVICE_TOKEN, ["active"]),
        ("alice-2", SERVICE_TOKEN, ["pending"]),
        ("bob", OTHER_SERVICE_TOKEN, ["pending"] * 3),
    ):
        ents = c.get("/v1/entitlements", params={"owner_id": owner}, headers=auth(token)).json()
        assert [x["status"] for x in ents] == want, owner
    with e.db.tx() as s:
        assert s.scalars(select(Receipt.session_id)).all() == [alice["id"]]


# -- the fake rail: holds, refusals, two transfers for one session ----------------------


def fake_session(engine, owner="alice", amount=1_500_000, **kw):
    return sessions.open_session(
        engine,
        sessions.NewSession(
            owner_id=owner,
            rail_id="fake_live",
            access_product_id="pro",
            amount=amount,
            recipient="fatreasury",
            **kw,
        ),
        actor="test",
    )


def pay(chain, tx, sess, amount=1_500_000):
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": amount,
        "asset": "fusd",
        "refs": [sess["reference"]],
    }


def test_a_pending_claim_reserves_nothing_either(engine, chain):
    alice, bob = fake_session(engine), fake_session(engine, owner="bob")
    # Not on chain yet: Bob's claim is pending, and Alice's is not refused for it.
    view, _ = proofs.submit_proof(engine, bob["id"], "fx0101010101", ["bob"])
    assert view["status"] == "pending"
    pay(chain, "fx0101010101", alice)
    view, _ = proofs.submit_proof(engine, alice["id"], "fx0101010101", ["alice"])
    assert view["status"] == "verified"
    # Bob's pending proof re-verified later fails its own binding; Alice's hold stands.
    with engine.db.tx() as s:
        bob_pid = s.scalar(select(Proof.id).where(Proof.session_id == bob["id"]))
    v = proofs.verify_proof(engine, bob_pid)
    assert v.code is FailureCode.reference_missing
    with engine.db.tx() as s:
        held = s.scalars(select(TransferHold.session_id)).all()
    assert set(held) == {alice["id"]}


def test_same_owner_second_session_is_duplicate_payment(engine, chain):
    a, b = fake_session(engine), fake_session(engine)
    pay(chain, "fx0202020202", a)
    proofs.submit_proof(engine, a["id"], "fx0202020202", ["alice"])
    with pytest.raises(Conflict) as e:
        proofs.submit_proof(engine, b["id"], "fx0202020202", ["alice"])
    assert e.value.code == "duplicate_payment"
    assert any(x.action == "proof.duplicate_payment" for x in audit_actions(engine))
    assert (
        b'replay_refusals_total{code="duplicate_payment",rail_id="fake_live"} 1.0'
        in engine.metrics.render()
    )


def test_two_transfers_for_one_session_the_uncredited_one_is_reported(engine, chain):
    sess = fake_session(engine)
    pay(chain, "fx0303030303", sess)
    pay(chain, "fx0404040404", sess)  # the payer paid twice, both carry the reference
    first, _ = proofs.submit_proof(engine, sess["id"], "fx0303030303", ["alice"])
    second, _ = proofs.submit_proof(engine, sess["id"], "fx0404040404", ["alice"])
    assert first["status"] == second["status"] == "verified"
    op = Operator("ops1", "INC-9", "credit the first")
    assert gate.apply(engine, first["id"], op, gate.Via.staff)["applied"] is True
    rep = assurance_report(engine)
    found = [i for i in rep["issues"] if i["category"] == "verified_transfer_not_credited"]
    assert [i["subject"] for i in found] == [f"proof {second['id']}"]
    assert "refund" in found[0]["repair"]
    assert rep["summary"]["status"] != "ok"


# -- EVM: the payer ------------------------------------------------------------------------


@pytest.fixture
def evm(db_url):
    e = cassette_engine(db_url, clock=EVM_CLOCK)
    yield e
    e.db.dispose()


def evm_session(engine, owner="alice", payer=EVM_USDC_FROM, amount=EVM_USDC_AMOUNT, **kw):
    return sessions.open_session(
        engine,
        sessions.NewSession(
            owner_id=owner,
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=amount,
            recipient=EVM_USDC_TO,
            payer=payer,
            **kw,
        ),
        actor="test",
    )


def test_evm_sessions_must_name_the_payer(evm):
    with pytest.raises(BadInput) as e:
        evm_session(evm, payer=None)
    assert e.value.field == "payer"
    with pytest.raises(BadInput) as e:
        evm_session(evm, payer="0x1234")
    assert e.value.field == "payer"
    with pytest.raises(BadInput) as e:  # Solana binds by reference, not payer
        sessions.open_session(
            evm,
            sessions.NewSession(
                owner_id="alice",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=1,
                recipient=TREASURY,
                payer=EVM_USDC_FROM,
            ),
            actor="test",
        )
    assert e.value.field == "payer"


@pytest.mark.parametrize(
    "rail_id,recipient", [("tron_usdt", TRON_RECIPIENT), ("base_usdc", EVM_USDC_TO)]
)
def test_sessions_on_rails_without_a_reference_must_name_the_payer(sol, rail_id, recipient):
    _, c = sol
    body = {
        "owner_id": "alice",
        "rail_id": rail_id,
        "access_product_id": "pro",
        "amount": "1000000",
        "recipient": recipient,
    }
    r = c.post("/v1/payment-sessions", headers=auth(), json=body)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("invalid_payer", "payer")


def test_evm_transfer_from_another_payer_is_sender_mismatch(evm):
    sess = evm_session(evm, payer="0x" + "11" * 20)
    view, _ = proofs.submit_proof(evm, sess["id"], EVM_USDC_TX, ["alice"])
    assert (view["status"], view["failure_code"]) == ("failed", "sender_mismatch")


def test_a_second_open_session_for_one_payer_and_amount_is_refused(evm):
    """Same rail, recipient, amount and payer: a transfer could back either session, so the
    second is refused when it is opened, whoever's it is, before anyone pays."""
    mine = evm_session(evm)
    for owner in ("bob", "alice"):
        with pytest.raises(BadInput) as e:
            evm_session(evm, owner=owner)
        assert (e.value.code, e.value.field) == ("payer_in_use", "payer")
        with pytest.raises(BadInput) as e:  # the payer's address in another case is the same
            evm_session(evm, owner=owner, payer=EVM_USDC_FROM.upper().replace("0X", "0x"))
        assert e.value.code == "payer_in_use"
    # Another payer, or another amount, can be told apart.
    evm_session(evm, owner="bob", payer="0x" + "22" * 20)
    evm_session(evm, owner="bob", amount=EVM_USDC_AMOUNT + 1)
    # Once the first is paid, the same payer and amount may be asked for again.
    view, _ = proofs.submit_proof(evm, mine["id"], EVM_USDC_TX, ["alice"])
    assert view["status"] == "verified", view
    again = evm_session(evm, owner="bob")
    assert again["payer"].lower() == EVM_USDC_FROM.lower()


def test_a_second_session_from_before_the_rule_still_sends_the_transfer_to_review(evm):
    """Two such sessions stored before sessions were refused at opening (here: the second
    opened for another amount, then given the first's): the transfer is held for review, and
    the other session cannot take it meanwhile."""
    mine = evm_session(evm)
    theirs = evm_session(evm, owner="bob", amount=EVM_USDC_AMOUNT + 1)
    with evm.db.tx() as s:
        s.get(PaymentSession, theirs["id"]).amount = EVM_USDC_AMOUNT
    view, _ = proofs.submit_proof(evm, mine["id"], EVM_USDC_TX, ["alice"])
    assert (view["status"], view["failure_code"]) == ("requires_review", "ambiguous_transfer")
    with evm.db.tx() as s:
        att = s.scalar(
            select(VerificationAttempt).where(VerificationAttempt.proof_id == view["id"])
        )
        assert att.observed["candidate_sessions"] == [mine["id"], theirs["id"]]
    with pytest.raises(Conflict) as e:
        proofs.submit_proof(evm, theirs["id"], EVM_USDC_TX, ["bob"])
    assert e.value.code == "proof_owner_conflict"
    # Never applied by the gate.
    assert gate.dry_run_apply(evm, view["id"])["would_apply"] is False


def test_evm_session_of_another_payer_is_no_candidate(evm):
    mine = evm_session(evm)
    evm_session(evm, owner="bob", payer="0x" + "22" * 20)
    view, _ = proofs.submit_proof(evm, mine["id"], EVM_USDC_TX, ["alice"])
    assert view["status"] == "verified", view


def test_evm_transfer_mined_before_the_session_opened_is_not_its_payment(db_url):
    e = cassette_engine(db_url, clock=EVM_CLOCK + timedelta(days=1))
    try:
        sess = evm_session(e)
        view, _ = proofs.submit_proof(e, sess["id"], EVM_USDC_TX, ["alice"])
        assert (view["status"], view["failure_code"]) == ("failed", "session_not_open")
    finally:
        e.db.dispose()


# -- the migration keeps what holds today ------------------------------------------------


def test_upgrade_gives_todays_holding_proofs_their_hold(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0004")
    db = Database(url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, amount, "
            "network, asset, recipient, reference, memo, status, created_at, expires_at) VALUES "
            "('s1', 'alice', 'solana_usdc', 'pro', 5, 'solana-mainnet', 'm', 'r', NULL, NULL, "
            "'open', ?, ?)",
            (now, now + timedelta(hours=1)),
        )
        for pid, fp, status in (("p1", "f" * 64, "verified"), ("p2", "e" * 64, "failed")):
            conn.exec_driver_sql(
                "INSERT INTO proofs (id, fingerprint, rail_id, proof_type, ref, raw, owner_id, "
                "session_id, status, detail, attempts, created_at, updated_at) VALUES "
                "(?, ?, 'solana_usdc', 't', 'x', 'x', 'alice', 's1', ?, '', 1, ?, ?)",
                (pid, fp, status, now, now),
            )
    db.dispose()
    upgrade(url)
    db = Database(url)
    with db.tx() as s:
        holds = s.scalars(select(TransferHold)).all()
    assert [(h.transfer_key, h.proof_id) for h in holds] == [("proof:" + "f" * 64, "p1")]
    db.dispose()


def test_a_deployment_can_refuse_every_reference_a_client_chooses(db_url):
    """RAILPROOF_CLIENT_REFERENCES=0: no tenant can name a key other payments carry (an
    Actions provider's identity, a processor's delegate), because no tenant names any; every
    session gets one railproof generated, recognised as its own."""
    e = cassette_engine(db_url, client_references=False)
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as c:
            for chosen in (str(Keypair().pubkey()), DEMO["reference"]):
                r = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=chosen)
                assert r.status_code == 422, r.text
                err = r.json()["error"]
                assert (err["code"], err["field"]) == ("invalid_reference", "reference")
                assert "RAILPROOF_CLIENT_REFERENCES" in err["message"]
            r = solana_session(c)
            assert r.status_code == 201, r.text
            with e.db.tx() as s:
                ps = s.get(PaymentSession, r.json()["id"])
                rail = e.rail(ps.rail_id)
                assert sessions.reference_generated(e, e.adapter(rail), ps)
    finally:
        e.db.dispose()


# -- the chain's clock against railproof's ---------------------------------------------------

DEMO_BLOCK_TIME = datetime.fromtimestamp(
    next(c for c in DEMO_CASSETTE["calls"] if c["method"] == "getTransaction")["result"][
        "blockTime"
    ],
    UTC,
)


EVM_BLOCK_TIME = datetime.fromtimestamp(0x67BC518F, UTC)  # fixtures/evm/eth_usdc_transfer.json


@pytest.mark.parametrize(
    "generated,opened_after,skew,want",
    [
        (True, 1, None, ("verified", None)),
        (True, 30, None, ("verified", None)),
        (True, 31, None, ("failed", "session_not_open")),
        (True, 1, 0, ("failed", "session_not_open")),
        # A key anyone can read off the chain and name: no skew, or a tenant who saw the
        # transfer could open a session for it afterwards and take it.
        (False, 1, None, ("failed", "session_not_open")),
    ],
    ids=["generated-1s", "generated-30s", "generated-31s", "generated-no-skew", "chosen-1s"],
)
def test_a_block_time_just_before_a_generated_references_session_is_the_clocks(
    db_url, generated, opened_after, skew, want
):
    """A Solana block time is the validators' estimate: a payment made just after its session
    opened may carry an earlier time. A reference railproof generated cannot be carried before
    its session exists, so up to RAILPROOF_CHAIN_CLOCK_SKEW_SECONDS (30) earlier counts there;
    a chosen reference allows nothing."""
    kw = {} if skew is None else {"chain_clock_skew_seconds": skew}
    e = cassette_engine(db_url, clock=DEMO_BLOCK_TIME + timedelta(seconds=opened_after), **kw)
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as c:
            body = {"memo": DEMO["memo"]}
            if not generated:
                body["reference"] = DEMO["reference"]
            a = solana_session(c, **body)
            assert a.status_code == 201, a.text
            reference = a.json()["reference"]
            if generated:
                e.chains.set_transport("solana-mainnet", demo_through_a_smart_wallet(reference))
            r = submit(c, a.json()["id"], DEMO["signature"])
            assert (r.json()["status"], r.json()["failure_code"]) == want, r.text
    finally:
        e.db.dispose()


def test_a_payer_bound_session_opened_after_the_transfer_cannot_take_it(db_url):
    """EVM binds the payer, which anyone reads off the chain: a session opened 15 s after a
    transfer (for no session, or for another that has expired) is not its payment."""
    e = cassette_engine(db_url, clock=EVM_BLOCK_TIME + timedelta(seconds=15))
    try:
        sess = evm_session(e, owner="bob")
        view, _ = proofs.submit_proof(e, sess["id"], EVM_USDC_TX, ["bob"])
        assert (view["status"], view["failure_code"]) == ("failed", "session_not_open"), view
    finally:
        e.db.dispose()


def test_a_session_opened_after_the_transfer_is_no_candidate_for_it(db_url):
    """The ambiguity check allows no skew: a session opened after the transfer's chain time,
    naming one of its keys, cannot send the payment to review."""
    e = cassette_engine(db_url, clock=DEMO_BLOCK_TIME - timedelta(seconds=60))
    rival = str(Keypair().pubkey())
    e.chains.set_transport("solana-mainnet", demo_with_extra_key(rival))
    try:
        with TestClient(create_app(e), raise_server_exceptions=False) as c:
            a = solana_session(c, reference=DEMO["reference"], memo=DEMO["memo"])
            e.settings.clock = DEMO_BLOCK_TIME + timedelta(seconds=5)
            b = solana_session(c, token=OTHER_SERVICE_TOKEN, owner="bob", reference=rival)
            assert b.status_code == 201, b.text
            r = submit(c, a.json()["id"], DEMO["signature"])
            assert (r.json()["status"], r.json()["failure_code"]) == ("verified", None), r.text
    finally:
        e.db.dispose()
