"""A pending proof holds nothing (README, replay rules): another tenant who submits a
transfer's hash from the mempool as the proof of their own session gets `pending
tx_not_found`, and that claim must not hide the transfer from the session it was made for.
Discovery and reconciliation used to count any pending proof of a transfer as "we have it":
discovery skipped the mined payment and moved its cursor past it, reconciliation reported it
`matched`, and once the claim failed nothing ever submitted it for its own session."""

from __future__ import annotations

from datetime import timedelta

from rails.base import Status
from tests.test_reconciliation import evm, evm_session, proofs_of, req  # noqa: F401
from verifier.services import discovery, reconciliation
from verifier.services.proofs import submit_proof, verify_proof
from verifier.services.sessions import NewSession, open_session


def _claimed_from_the_mempool(evm):  # noqa: F811
    """Alice's session, and her payer's transfer claimed first by Bob for a session of his
    own while it waited in the mempool; then mined. Returns (engine, alice, tx, bob's proof)."""
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    alice = evm_session(e, evm["payer"], 5_000_000)
    bob = open_session(
        e,
        NewSession(
            owner_id="bob",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            payer=chain.accounts[4],
            reference=None,
        ),
        actor="svc",
    )
    chain.tester.disable_auto_mine_transactions()
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000, gas=100_000).lower()
    view, _ = submit_proof(e, bob["id"], tx, ["bob"])
    assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found")
    chain.tester.enable_auto_mine_transactions()
    chain.mine(2)
    return e, alice, tx, view["id"]


def test_another_tenants_pending_claim_does_not_hide_a_payment_from_discovery(evm):  # noqa: F811
    e, alice, tx, bobs = _claimed_from_the_mempool(evm)
    e.settings.discovery = True
    out = discovery.watch_evm(e, e.rail("evm_usdc"))  # while Bob's claim is pending
    assert out["submitted"] == 1
    assert [(p.ref, p.status) for p in proofs_of(e, alice["id"])] == [(tx, "verified")]
    # Bob's claim, checked again, fails; later watches change nothing for Alice.
    assert verify_proof(e, bobs).status is Status.failed
    for _ in range(2):
        e.settings.clock += timedelta(minutes=2)
        discovery.watch_evm(e, e.rail("evm_usdc"))
    assert [(p.ref, p.status) for p in proofs_of(e, alice["id"])] == [(tx, "verified")]


def test_reconciliation_binds_a_transfer_another_session_claims_to_its_own(evm):  # noqa: F811
    e, alice, tx, bobs = _claimed_from_the_mempool(evm)
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [f for f in dry["findings"] if f["subjects"]["transfer"] == tx]
    assert (f["kind"], f["subjects"]["session_id"]) == ("orphan_bound", alice["id"])
    assert dry["summary"].get("matched", 0) == 0

    run = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    [g] = [g for g in run["findings"] if g["subjects"]["transfer"] == tx]
    assert g["repair_status"] == "applied", g
    assert [(p.ref, p.status) for p in proofs_of(e, alice["id"])] == [(tx, "verified")]
    # Held by Alice's proof now: the next run finds it matched.
    again = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert again["summary"]["matched"] == 1
    assert not [f for f in again["findings"] if f["subjects"].get("transfer") == tx]


def test_a_pending_proof_of_the_sessions_own_transfer_stays_matched(evm):  # noqa: F811
    # The control: the claim is the transfer's own session's (its client submitted the hash
    # before it was mined). It waits for its transfer, and nothing proposes another proof.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    alice = evm_session(e, evm["payer"], 5_000_000)
    chain.tester.disable_auto_mine_transactions()
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000, gas=100_000).lower()
    view, _ = submit_proof(e, alice["id"], tx, ["alice"])
    assert view["status"] == "pending"
    chain.tester.enable_auto_mine_transactions()
    chain.mine(2)
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert dry["summary"]["awaiting_proof"] == 1 and not dry["summary"]["unresolved"]
    # Recorded, as information, for the next run to judge again: the proof may still fail.
    [f] = [f for f in dry["findings"] if f["subjects"].get("transfer") == tx]
    assert (f["kind"], f["severity"], f["subjects"]["proof_ids"]) == (
        "inflow_awaiting_proof",
        "info",
        [view["id"]],
    )
    e.settings.discovery = True
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["submitted"] == 0
