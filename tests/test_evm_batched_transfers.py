"""A transaction that carries another sender's transfer to the treasury besides the payer's
(a batch, an ERC-4337 bundle: whoever builds it can add one): an EVM session is paid by its
payer's transfers to the recipient only, and its proof holds only those (not another payer's
EIP-3009 authorization settled in the same transaction either).

Made on local py-evm chains: tests/test_reconciliation's `evm` fixture (chain id 1, the test
token as the rail's USDC), and tests/test_transfer_identity's Base Sepolia chain where the x402
spec's payload is settled. One transaction, the creation of a batching contract the senders
approved, moves each sender's amount to the treasury. Through the engine (and its HTTP API for
the x402 case), on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from rails.base import eip3009_key
from tests.conftest import SERVICE_TOKEN, auth
from tests.evm_chain import BASE_SEPOLIA_CHAIN_ID, BASE_SEPOLIA_USDC, LocalEvmChain
from tests.test_reconciliation import evm, evm_session  # noqa: F401  (the local EVM chain)
from tests.test_transfer_identity import (
    FACILITATOR,
    HEADER,
    NONCE,
    PAY_TO,
    PAYER,
    SETTLED_AT,
    SIGNATURE,
    VALID_AFTER,
    VALID_BEFORE,
    VALUE,
    _batching_initcode,
    served,
)
from verifier.services import proofs
from verifier.storage.models import TransferHold

PRICE = 5_000_000


def created_by(builder: str, nonce: int) -> str:
    """The address of the contract `builder` creates with its transaction of `nonce`."""
    import rlp
    from eth_utils import keccak, to_canonical_address, to_checksum_address

    return to_checksum_address(keccak(rlp.encode([to_canonical_address(builder), nonce]))[12:])


def batch(evm: dict[str, Any], *moves: tuple[str, int]) -> str:  # noqa: F811
    """One transaction moving each (sender, amount) to the treasury, in order: the creation of
    a contract that calls the token's transferFrom for each, which every sender approved."""
    chain, token, treasury = evm["chain"], evm["token"], evm["treasury"]
    builder = chain.accounts[0]  # neither sender: their approvals leave its nonce as it is
    batcher = created_by(builder, chain.w3.eth.get_transaction_count(builder))
    for sender, amount in moves:
        token.functions.approve(batcher, amount).transact({"from": sender})
    calls = [
        bytes.fromhex(
            token.functions.transferFrom(sender, treasury, amount)._encode_transaction_data()[2:]
        )
        for sender, amount in moves
    ]
    tx = chain.w3.eth.send_transaction(
        {"from": builder, "data": "0x" + _batching_initcode(token.address, calls).hex()}
    ).to_0x_hex()
    receipt = chain.w3.eth.get_transaction_receipt(tx)
    assert (receipt.status, receipt.contractAddress, len(receipt.logs)) == (1, batcher, len(moves))
    return tx


def held_keys(engine, proof_id: str) -> list[str]:
    with engine.db.tx() as s:
        return sorted(
            s.scalars(
                select(TransferHold.transfer_key).where(TransferHold.proof_id == proof_id)
            ).all()
        )


def test_the_payers_exact_payment_verifies_beside_another_senders_transfer(evm):  # noqa: F811
    # Both senders' transfers used to be summed: `failed amount_mismatch`, final — a
    # resubmission answered the failed proof, and the payer who paid exactly was never credited.
    e, payer, other = evm["engine"], evm["payer"], evm["other"]
    session = evm_session(e, payer, PRICE)
    tx = batch(evm, (payer, PRICE), (other, 1))
    view, _ = proofs.submit_proof(e, session["id"], tx, ["alice"])
    assert (view["status"], view["failure_code"]) == ("verified", None), view["detail"]
    [attempt] = proofs.list_attempts(e, view["id"])
    observed = attempt["observed"]
    assert (observed["amount"], observed["sender"]) == (str(PRICE), payer)
    assert observed["other_senders"] == [{"sender": other, "amount": "1"}]
    # The proof holds the payer's transfer, not the other sender's.
    token, treasury = evm["token"].address.lower(), evm["treasury"].lower()
    assert held_keys(e, view["id"]) == [
        f"eip155:1:{tx.lower()}:{token}:{treasury}:{payer.lower()}",
        f"proof:{view['fingerprint']}",
    ]


def test_a_second_payers_transfer_in_a_held_transaction_is_reported_not_matched(evm):  # noqa: F811
    # Two customers pay in one transaction: the first proof holds the transaction, and the
    # second customer's proof of it is refused (one transaction, one proof). Reconciliation
    # counted the whole transaction as matched, so the second payment left no trace; it is
    # now a finding bound to the session waiting for it, for staff to credit.
    from tests.test_reconciliation import by_kind, req
    from verifier.services import reconciliation

    e, payer, other = evm["engine"], evm["payer"], evm["other"]
    first = evm_session(e, payer, PRICE)
    second = evm_session(e, other, PRICE)
    tx = batch(evm, (payer, PRICE), (other, PRICE))
    view, _ = proofs.submit_proof(e, first["id"], tx, ["alice"])
    assert view["status"] == "verified", view["detail"]
    run = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    found = [f for f in run["findings"] if f["subjects"].get("transfer") == tx.lower()]
    assert [(f["kind"], f["subjects"]["sender"]) for f in found] == [("orphan_bound", other)]
    assert found[0]["subjects"]["session_id"] == second["id"]
    assert not [
        f for f in by_kind(run).get("orphan_unbound", []) if f["subjects"].get("sender") == payer
    ]


def test_another_sender_never_makes_up_the_payers_short_payment(evm):  # noqa: F811
    # Counting the payer's transfers only opens no hole: their short payment stays short.
    e, payer, other = evm["engine"], evm["payer"], evm["other"]
    session = evm_session(e, payer, PRICE)
    tx = batch(evm, (payer, PRICE - 1), (other, 1))
    view, _ = proofs.submit_proof(e, session["id"], tx, ["alice"])
    assert (view["status"], view["failure_code"]) == ("failed", "amount_mismatch")
    assert held_keys(e, view["id"]) == []


# -- another payer's EIP-3009 authorization in the same transaction ----------------------


def _settling_bobs_authorization_and_a_transfer_from(sender: str) -> tuple[Any, str]:
    """A Base Sepolia chain and a transaction (creation code, to send) that settles the x402
    payload's authorization (its payer's VALUE to PAY_TO) and moves VALUE from `sender`, who
    approved the batching contract, to PAY_TO as well."""
    batcher = created_by(FACILITATOR, 0)
    chain = LocalEvmChain.base_sepolia(
        balances={PAYER: VALUE, sender: VALUE}, allowances={(sender, batcher): VALUE}
    )
    token = chain.eip3009_token()
    sig = bytes.fromhex(SIGNATURE.removeprefix("0x"))
    settle = token.get_function_by_signature(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
    )(PAYER, PAY_TO, VALUE, VALID_AFTER, VALID_BEFORE, NONCE, sig[64], sig[:32], sig[32:64])
    more = token.functions.transferFrom(sender, PAY_TO, VALUE)
    calls = [bytes.fromhex(f._encode_transaction_data()[2:]) for f in (settle, more)]
    return chain, "0x" + _batching_initcode(BASE_SEPOLIA_USDC, calls).hex()


@pytest.mark.parametrize("first", ["alices_payer", "bobs_x402"])
def test_another_payers_authorization_in_the_transaction_is_not_held_by_this_payment(db_url, first):
    """A facilitator's batch settles Bob's customer's x402 authorization to the treasury and
    carries Alice's payer's transfer of the same amount to it. Two payments: Alice's Base USDC
    proof counts and holds only its payer's transfer (it used to count both and fail
    amount_mismatch), and Bob's x402 payload, whichever comes first, verifies for Bob."""
    from eth_tester.backends.pyevm.main import get_default_account_keys

    alices_payer = get_default_account_keys(3)[2].public_key.to_checksum_address()
    chain, batch_code = _settling_bobs_authorization_and_a_transfer_from(alices_payer)
    with served(db_url, chain) as api:
        bob = api.open("x402", "bob")
        r = api.client.post(
            "/v1/payment-sessions",
            headers=auth(SERVICE_TOKEN),
            json={
                "owner_id": "alice",
                "rail_id": "base_usdc",
                "access_product_id": "api",
                "amount": VALUE,
                "recipient": PAY_TO,
                "payer": alices_payer,
            },
        )
        assert r.status_code == 201, r.text
        alice = r.json()["id"]
        chain.set_next_block_timestamp(SETTLED_AT)
        tx = chain.w3.eth.send_transaction(
            {"from": FACILITATOR, "data": batch_code, "gas": 600_000}
        ).to_0x_hex()
        submissions = [(alice, tx, "alice"), (bob, HEADER, "bob")]
        views = {
            owner: api.verified(session_id, proof, owner)
            for session_id, proof, owner in (
                submissions if first == "alices_payer" else submissions[::-1]
            )
        }
        bobs_authorization = eip3009_key(BASE_SEPOLIA_CHAIN_ID, BASE_SEPOLIA_USDC, PAYER, NONCE)
        assert bobs_authorization not in held_keys(api.engine, views["alice"]["id"])
        assert bobs_authorization in held_keys(api.engine, views["bob"]["id"])
