"""A session whose client submitted a transaction that never lands (an EVM wallet's "speed
up" replaces it under a new hash; a Solana wallet re-sends the payment under a new signature)
holds a proof `pending tx_not_found` until its expiry plus the not-found grace. Such a proof
holds nothing: discovery still watches the session and submits its real payment, and
reconciliation binds that payment to it (`orphan_bound`), never advising a refund. A pending
proof that is the discovered transfer itself is not submitted again; and should both the
session's proofs verify, one is credited and the other reported as money to send back."""

from __future__ import annotations

import json
import os

import pytest
from solders.keypair import Keypair

from tests.helpers import FIXTURES, SwitchableTransport
from tests.test_discovery import EXPECT, _paying_elsewhere, make_engine, session_for
from tests.test_reconciliation import by_kind, evm, evm_session, proofs_of, req  # noqa: F401
from verifier.core.errors import Refused
from verifier.services import discovery, gate, proofs, reconciliation
from verifier.services.audit import Operator
from verifier.storage.models import RailState

OP = Operator("ops1", "INC-40", "the session's payment")


def _never_mined_hash() -> str:
    return "0x" + os.urandom(32).hex()


def _dropped_signature() -> str:
    """A well-formed Solana signature no transaction has."""
    return str(Keypair().sign_message(b"a payment whose blockhash expired"))


def test_evm_payment_is_discovered_while_a_replaced_hash_is_pending(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    alice = evm_session(e, evm["payer"], 5_000_000)
    # The hash the wallet showed first; it then sped the transaction up (same nonce, new
    # hash), so that hash is never mined.
    replaced = _never_mined_hash()
    wrong, _ = proofs.submit_proof(e, alice["id"], replaced, ["alice"])
    assert (wrong["status"], wrong["failure_code"]) == ("pending", "tx_not_found")
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(2)
    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 1, out
    got = {(p.ref, p.status) for p in proofs_of(e, alice["id"])}
    assert got == {(paid, "verified"), (replaced, "pending")}
    # Held by its proof now: the session is no longer watched, nothing is submitted twice.
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["submitted"] == 0
    assert len(proofs_of(e, alice["id"])) == 2


def test_evm_reconciliation_binds_the_payment_of_a_session_with_a_pending_proof(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    alice = evm_session(e, evm["payer"], 5_000_000)
    wrong, _ = proofs.submit_proof(e, alice["id"], _never_mined_hash(), ["alice"])
    assert wrong["status"] == "pending"
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(2)
    run = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [f for f in run["findings"] if f["subjects"]["transfer"] == paid]
    # Alice's session's payer, amount and window: bound to it, not a transfer to refund.
    assert (f["kind"], f["subjects"].get("session_id")) == ("orphan_bound", alice["id"]), f


def test_solana_payment_is_discovered_while_a_dropped_signature_is_pending(db_url):
    e = make_engine(db_url)
    try:
        sig = EXPECT["bound"]["signature"]
        bound = session_for(e, "bound")
        # The wallet's first attempt, whose blockhash expired before it landed; the wallet
        # re-sent the payment under `sig`.
        dropped = _dropped_signature()
        wrong, _ = proofs.submit_proof(e, bound["id"], dropped, ["alice"], verify=False)
        assert wrong["status"] == "pending"
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert out["submitted"] == 1, out
        got = {(p.ref, p.status) for p in proofs_of(e, bound["id"])}
        assert got == {(sig, "verified"), (dropped, "pending")}
    finally:
        e.db.dispose()


def test_solana_reconciliation_binds_the_payment_of_a_session_with_a_pending_proof(db_url):
    e = make_engine(db_url)
    try:
        bound = session_for(e, "bound")
        proofs.submit_proof(e, bound["id"], _dropped_signature(), ["alice"], verify=False)
        run = reconciliation.run(e, req(), "ops1")
        [f] = [
            f for f in run["findings"] if f["subjects"]["transfer"] == EXPECT["bound"]["signature"]
        ]
        assert (f["kind"], f["subjects"].get("session_id")) == ("orphan_bound", bound["id"]), f
    finally:
        e.db.dispose()


def test_a_pending_proof_of_the_discovered_transfer_is_not_submitted_again(db_url):
    e = make_engine(db_url)
    try:
        sig = EXPECT["bound"]["signature"]
        bound = session_for(e, "bound")
        # Its client submitted the payment itself, not checked yet: the worker asks the chain
        # about it; discovery does not submit it once more.
        mine, _ = proofs.submit_proof(e, bound["id"], sig, ["alice"], verify=False)
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert out["submitted"] == 0, out
        assert [(p.id, p.status) for p in proofs_of(e, bound["id"])] == [(mine["id"], "pending")]
    finally:
        e.db.dispose()


def _elsewhere():
    """The recorded transfer to a merchant's wallet (not the treasury), listed under its
    reference: (engine-less chain, its signature, the recording's expectations)."""
    doc = json.loads((FIXTURES / "solana" / "generated" / "ata_created_same_tx.json").read_text())
    exp, sig = doc["expect"], doc["calls"][0]["params"][0]
    listing = {
        "method": "getSignaturesForAddress",
        "params": [exp["reference"], {"limit": 10}],
        "result": [
            {
                "signature": sig,
                "slot": doc["calls"][0]["result"]["slot"],
                "blockTime": doc["calls"][0]["result"]["blockTime"],
                "err": None,
                "memo": None,
                "confirmationStatus": "finalized",
            }
        ],
    }
    return SwitchableTransport([listing, *doc["calls"]]), sig, exp


def test_a_reference_watch_submits_the_payment_while_a_dropped_signature_is_pending(db_url):
    e = make_engine(db_url)
    try:
        chain, sig, exp = _elsewhere()
        e.chains.set_transport("solana-mainnet", chain)
        s = _paying_elsewhere(e, exp)
        dropped = _dropped_signature()
        proofs.submit_proof(e, s["id"], dropped, ["alice"], verify=False)
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert out["submitted"] == 1, out
        got = {(p.ref, p.status) for p in proofs_of(e, s["id"])}
        assert got == {(sig, "verified"), (dropped, "pending")}
    finally:
        e.db.dispose()


def test_a_reference_watch_does_not_submit_the_sessions_pending_proof_again(db_url):
    e = make_engine(db_url)
    try:
        chain, sig, exp = _elsewhere()
        e.chains.set_transport("solana-mainnet", chain)
        s = _paying_elsewhere(e, exp)
        mine, _ = proofs.submit_proof(e, s["id"], sig, ["alice"], verify=False)
        assert discovery.watch_solana(e, e.rail("solana_usdc"))["submitted"] == 0
        assert [(p.id, p.status) for p in proofs_of(e, s["id"])] == [(mine["id"], "pending")]
    finally:
        e.db.dispose()


def _crediting(e) -> None:
    """The local chain's USDC rail allowed to create receipts."""
    e.settings.live_apply = True
    e.settings.apply_rail_allowlist = ["evm_usdc"]
    e.settings.receipt_creation_rails = ["evm_usdc"]
    with e.db.tx() as s:
        s.get(RailState, "evm_usdc").production_enabled = True


def test_when_the_pending_proof_verifies_too_one_is_credited_and_one_sent_back(evm):  # noqa: F811
    # The payer paid twice: a first transfer its client submitted before the node returned
    # it (older than the watch's first look), and a second that discovery found.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    alice = evm_session(e, evm["payer"], 5_000_000)
    first = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(3)
    mine, _ = proofs.submit_proof(e, alice["id"], first, ["alice"], verify=False)
    second = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(2)
    e.settings.discovery = True
    e.settings.discovery_evm_lookback_blocks = 3
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["submitted"] == 1
    [found] = [p for p in proofs_of(e, alice["id"]) if p.ref == second]
    assert found.status == "verified"
    assert proofs.verify_proof(e, mine["id"]).status.value == "verified"
    # One receipt per session: the discovered payment is credited, the other is refused by
    # the gate and reported as a transfer to send back.
    _crediting(e)
    assert gate.apply(e, found.id, OP, gate.Via.staff_receipt)["applied"] is True
    with pytest.raises(Refused) as refused:
        gate.apply(e, mine["id"], OP, gate.Via.staff_receipt)
    assert refused.value.code == "apply_blocked"
    blockers = refused.value.extra["report"]["blockers"]
    assert [b["code"] for b in blockers] == ["tuple_bound"], blockers
    assert "session already paid by another proof" in blockers[0]["detail"]
    run = reconciliation.run(e, req(scope="rail_proofs"), "ops1")
    kinds = [f["kind"] for f in run["findings"] if f["subjects"].get("proof_id") == mine["id"]]
    assert kinds == ["verified_transfer_not_credited"], kinds
