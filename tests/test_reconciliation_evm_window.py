"""EVM chain_inflows binds a treasury transfer to the one open session naming its sender and
amount only when the transfer's block time is inside that session's window: a payer and an
amount can be read off the chain, so a session opened after the transfer (by anyone) used to
be proposed to take it; apply then submitted it there, the proof failed (`session_not_open`)
and the finding still said `applied`, so the payment left the drift. A repair whose proof
failed now stays a finding to resolve. And EVM discovery skips a transfer a proof already
holds, so a repeat payer's new payment is found."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from tests.helpers import advance
from tests.test_reconciliation import by_kind, evm, evm_session, proofs_of, req  # noqa: F401
from tests.test_reconciliation_resolve import OP
from verifier.services import discovery, proofs, reconciliation
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Entitlement


def _setup(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    # The payer's transfer, with no session waiting for it (paid before one was opened, or a
    # second payment): a person must refund it or attach it.
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(2)
    # Later, another tenant opens a session naming that payer and amount (both public).
    advance(e, 600)
    x = open_session(
        e,
        NewSession(
            owner_id="mallory",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            payer=evm["payer"],
            reference=None,
        ),
        actor="svc",
    )
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [f for f in dry["findings"] if f["subjects"]["transfer"] == tx]
    bound_to_x = f["kind"] == "orphan_bound" and f["subjects"].get("session_id") == x["id"]

    return e, tx, x, f, bound_to_x


def test_transfer_mined_before_a_session_is_not_bound_to_it(evm):  # noqa: F811
    e, tx, x, f, bound_to_x = _setup(evm)
    assert not bound_to_x, f"dry run binds the earlier transfer to mallory's later session: {f}"


def test_apply_whose_proof_failed_leaves_the_transfer_as_drift(evm):  # noqa: F811
    e, tx, x, f, bound_to_x = _setup(evm)
    run = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    [g] = [g for g in run["findings"] if g["subjects"]["transfer"] == tx]
    statuses = [p.status for p in proofs_of(e, x["id"])]
    # Expected: never reported as mallory's session's transfer (it was mined before that
    # session existed), and, nothing having credited it, still drift after apply.
    assert reconciliation.is_drift(g), (
        f"apply reports {g['repair_status']} (proof {statuses}); drift {run['summary']['unresolved']}"
    )


def test_apply_hides_it_on_every_later_run_too(evm):  # noqa: F811
    e, tx, x, f, bound_to_x = _setup(evm)
    reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    again = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    [g] = [g for g in again["findings"] if g["subjects"]["transfer"] == tx]
    assert reconciliation.is_drift(g), (g["repair_status"], g["repair_result"])


# -- discovery: a repeat payer's earlier transfer is not the new session's match -------------


def test_evm_discovery_finds_a_repeat_payers_new_payment(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    v0 = evm_session(e, evm["payer"], 5_000_000)
    t0 = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(1)
    assert proofs.submit_proof(e, v0["id"], t0, ["alice"])[0]["status"] == "verified"
    # The same payer's next purchase at the same price (allowed: the first session is paid).
    advance(e, 60)
    v1 = evm_session(e, evm["payer"], 5_000_000)
    advance(e, 60)
    chain.mine(10)
    t1 = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(1)
    discovery.watch_evm(e, e.rail("evm_usdc"))  # the first watch: the lookback covers both
    discovery.watch_evm(e, e.rail("evm_usdc"))
    got = [(p.ref, p.status) for p in proofs_of(e, v1["id"])]
    # (control: the transfer does pay v1 when submitted)
    direct = None if got else proofs.submit_proof(e, v1["id"], t1, ["alice"])[0]["status"]
    assert (t1, "verified") in got, f"v1's payment not discovered: {got}; submitted: {direct}"


# -- a refunded payment in a transaction of several logs ---------------------------------------


def _wallet_session(e, wallet: str) -> dict:
    """Alice's 5 USDC session paid by the contract wallet `wallet`."""
    return open_session(
        e,
        NewSession(
            owner_id="alice",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            payer=wallet,
            reference=None,
        ),
        actor="svc",
    )


def _batcher(chain, token: str, treasury: str, amounts: list[int]) -> str:
    """Deploy a contract that, when called, transfers each amount of `token` to `treasury`: a
    smart wallet paying in one transaction with several Transfer logs."""
    code = b""
    for amt in amounts:
        code += (
            bytes([0x63]) + bytes.fromhex("a9059cbb") + bytes([0x60, 0xE0, 0x1B, 0x60, 0x00, 0x52])
        )
        code += bytes([0x73]) + bytes.fromhex(treasury[2:]) + bytes([0x60, 0x04, 0x52])
        code += bytes([0x7F]) + amt.to_bytes(32, "big") + bytes([0x60, 0x24, 0x52])
        code += bytes([0x60, 0x20, 0x60, 0x00, 0x60, 0x44, 0x60, 0x00, 0x60, 0x00])
        code += bytes([0x73]) + bytes.fromhex(token[2:]) + bytes([0x5A, 0xF1, 0x50])
    code += b"\x00"
    n = len(code)
    init = bytes([0x61]) + n.to_bytes(2, "big") + bytes([0x60, 14, 0x60, 0x00, 0x39])
    init += bytes([0x61]) + n.to_bytes(2, "big") + bytes([0x60, 0x00, 0xF3])
    assert len(init) == 14
    w3 = chain.w3
    h = w3.eth.send_transaction(
        {"from": chain.accounts[0], "data": (init + code).hex(), "gas": 1_000_000}
    )
    return w3.eth.wait_for_transaction_receipt(h).contractAddress


def test_refunded_smart_wallet_payment_is_not_credited_by_discovery(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    wallet = _batcher(chain, token.address, evm["treasury"], [5_000_000, 0])
    token.functions.mint(wallet, 1_000 * 10**6).transact({"from": chain.accounts[0]})
    v = _wallet_session(e, wallet)
    advance(e, 60)
    chain.mine(5)
    tx = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": wallet, "gas": 300_000})
    rcpt = chain.w3.eth.wait_for_transaction_receipt(tx)
    assert rcpt.status == 1 and len(rcpt.logs) == 2
    tx = tx.to_0x_hex().lower()
    chain.mine(2)

    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [x for x in by_kind(dry).get("orphan_bound", []) if x["subjects"]["transfer"] == tx]
    assert f["subjects"]["session_id"] == v["id"]
    # Staff refund the wallet and record it.
    reconciliation.resolve_finding(e, f["id"], "refunded", OP)

    discovery.watch_evm(e, e.rail("evm_usdc"))
    got = [(p.ref, p.status) for p in proofs_of(e, v["id"])]
    with e.db.tx() as s:
        ents = [
            x.status
            for x in s.scalars(select(Entitlement).where(Entitlement.session_id == v["id"]))
        ]
    assert got == [], f"discovery submitted the refunded transfer: {got}; entitlements {ents}"


# -- discovery: only a transfer made while the session was open is its payment -----------------


def test_evm_discovery_finds_the_payment_behind_the_payers_older_same_amount_transfer(evm):  # noqa: F811
    # The payer's earlier 5 USDC (a late payment to an expired session, or one made outside
    # railproof: no proof holds it) used to be matched by payer and amount alone: it took the
    # new session's turn, was submitted (failed session_not_open), and the session's real
    # payment in the same scan was skipped for good as the cursor moved past both.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    old = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    mined = chain.w3.eth.get_block(chain.w3.eth.get_transaction_receipt(old).blockNumber)
    e.settings.clock = datetime.fromtimestamp(mined.timestamp + 1, tz=UTC)
    v = evm_session(e, evm["payer"], 5_000_000)  # opened just after that transfer's block
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(1)
    advance(e, 60)

    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 1 and out["inflows"] == 2
    assert [(p.ref, p.status) for p in proofs_of(e, v["id"])] == [(paid, "verified")]
    # The older transfer is nobody's proof: it stays for reconciliation to report.
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [f for f in dry["findings"] if f["subjects"]["transfer"] == old]
    assert f["kind"] == "orphan_unbound"


def test_evm_discovery_tries_the_next_transfer_when_one_fails_the_session(evm):  # noqa: F811
    # A smart wallet's first payment carries its 5 USDC and 1 unit more in one transaction
    # (amount_mismatch); its next one pays exactly. The failed candidate used to mark the
    # session taken, so the exact payment, in the same scan, was never submitted.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    wallet = _batcher(chain, token.address, evm["treasury"], [5_000_000, 1])
    v = _wallet_session(e, wallet)
    advance(e, 60)
    chain.mine(5)
    calls = []
    for balance in (5_000_001, 5_000_000):  # the second time, the extra unit's call reverts
        token.functions.mint(wallet, balance).transact({"from": chain.accounts[0]})
        h = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": wallet, "gas": 300_000})
        calls.append(chain.w3.eth.wait_for_transaction_receipt(h))
    assert [len(r.logs) for r in calls] == [2, 1]
    wrong, exact = (r.transactionHash.to_0x_hex().lower() for r in calls)
    chain.mine(2)

    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 2
    got = {p.ref: (p.status, p.failure_code) for p in proofs_of(e, v["id"])}
    assert got == {wrong: ("failed", "amount_mismatch"), exact: ("verified", None)}
