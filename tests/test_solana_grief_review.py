"""Anyone who knows a session's reference (it is public in the payment request) can send the
treasury 1 base unit of USDC carrying it, from a token account whose owner they change in the
same transaction (SPL Token SetAuthority AccountOwner, signed by that account's owner).

The owner check sent any changed owner to review before the amount was looked at, although no
owner of that account can make 1 base unit the session's 25 USDC. Discovery submits what goes
to review, so the session got a proof held for review and was watched no more: the customer's
real payment, arriving next, was never discovered. Such a transfer now fails (amount_mismatch).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from solders.keypair import Keypair
from sqlalchemy import select

from rails import adapter_for
from rails.base import Status, Terms
from rails.codes import FailureCode
from rails.solana import token_account
from rails.transport.cassette import Call, CassetteTransport
from registry.catalog import load_catalog
from tests.helpers import SwitchableTransport, advance
from tests.test_binding import DEMO, DEMO_CASSETTE
from tests.test_discovery import make_engine
from tests.test_discovery_smart_wallet import _session
from verifier.storage.models import Proof
from verifier.worker import loop as worker

USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
TREASURY = DEMO["recipient"]
SPAM_SIG = str(Keypair.from_seed(bytes([42] * 32)).sign_message(b"grief"))
DEMO_NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
NEW_OWNER = str(Keypair.from_seed(bytes([43] * 32)).pubkey())


def _tx(calls):
    return next(c for c in calls if c["method"] == "getTransaction")


def payment_calls(reference: str) -> list[dict]:
    """The customer's real payment (the demo transfer of 25 USDC) carrying `reference`."""
    calls = copy.deepcopy(DEMO_CASSETTE["calls"])
    for k in _tx(calls)["result"]["transaction"]["message"]["accountKeys"]:
        if k["pubkey"] == DEMO["reference"]:
            k["pubkey"] = reference
    return calls


def grief_calls(reference: str) -> list[dict]:
    """1 base unit to the treasury carrying `reference`, the source account's owner changed."""
    calls = payment_calls(reference)
    tx = _tx(calls)
    tx["params"][0] = SPAM_SIG
    r = tx["result"]
    r["transaction"]["signatures"] = [SPAM_SIG]
    r["blockTime"] -= 30
    payer = r["meta"]["preTokenBalances"][0]["owner"]
    src = r["transaction"]["message"]["accountKeys"][1]["pubkey"]
    pre = {b["accountIndex"]: b for b in r["meta"]["preTokenBalances"]}
    for b in r["meta"]["postTokenBalances"]:
        ui = b["uiTokenAmount"]
        delta = -1 if b["accountIndex"] == 1 else 1
        ui["amount"] = str(int(pre[b["accountIndex"]]["uiTokenAmount"]["amount"]) + delta)
        ui["uiAmount"] = int(ui["amount"]) / 1e6
        ui["uiAmountString"] = str(ui["uiAmount"])
        if b["accountIndex"] == 1:
            b["owner"] = NEW_OWNER
    ins = r["transaction"]["message"]["instructions"]
    ins[0]["parsed"]["info"]["tokenAmount"] = {
        "amount": "1",
        "decimals": 6,
        "uiAmount": 1e-6,
        "uiAmountString": "0.000001",
    }
    ins.insert(
        1,
        {
            "parsed": {
                "type": "setAuthority",
                "info": {
                    "account": src,
                    "authorityType": "accountOwner",
                    "newAuthority": NEW_OWNER,
                    "authority": payer,
                },
            },
            "program": "spl-token",
            "programId": "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
            "stackHeight": None,
        },
    )
    status = next(c for c in calls if c["method"] == "getSignatureStatuses")
    status["params"][0] = [SPAM_SIG]
    return calls


def listing(*calls_lists: list[dict]) -> dict:
    return {
        "method": "getSignaturesForAddress",
        "params": [token_account(TREASURY, USDC)],
        "result": [
            {
                "signature": _tx(c)["params"][0],
                "slot": _tx(c)["result"]["slot"],
                "blockTime": _tx(c)["result"]["blockTime"],
                "err": None,
                "memo": None,
                "confirmationStatus": "finalized",
            }
            for c in calls_lists
        ],
    }


def test_one_base_unit_with_a_changed_owner_is_not_a_25_usdc_payment():
    """Pure adapter: whoever owns the account whose owner changed, the recipient's net is 0 or
    1 base unit, never 25 USDC: the chain data decides (amount_mismatch), no person needed."""
    adapter = adapter_for(load_catalog().resolve("solana_usdc"))
    ref = str(Keypair().pubkey())
    calls = grief_calls(ref)
    terms = Terms(
        recipient=TREASURY,
        amount=int(DEMO["amount"]),
        reference=ref,
        reference_generated=True,
        now=DEMO_NOW,
    )
    v = adapter.verify(SPAM_SIG, terms, CassetteTransport([Call(c) for c in calls]))
    assert (v.status, v.code) == (Status.failed, FailureCode.amount_mismatch), (v.status, v.code)


@pytest.mark.parametrize("griefed", [False, True], ids=["control", "griefed"])
def test_a_one_unit_grief_transfer_stops_discovery_of_the_real_payment(db_url, griefed):
    """control: nothing before the payment; the next cycle discovers and verifies it.
    griefed: the 1-unit transfer first; the real payment is never submitted."""
    e = make_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY})
    try:
        ps = _session(e)
        ref = ps["reference"]
        grief = grief_calls(ref) if griefed else []
        node = SwitchableTransport([listing(grief)] + grief if griefed else [listing()])
        e.chains.set_transport("solana-mainnet", node)
        worker.sweep(e, "w1")
        # The customer pays (next cycle): the treasury lists the real payment.
        real = payment_calls(ref)
        node.load([listing(real, grief), *real, *grief] if griefed else [listing(real), *real])
        advance(e, 120)
        worker.sweep(e, "w1")
        with e.db.tx() as s:
            mine = s.scalars(select(Proof).where(Proof.session_id == ps["id"])).all()
            by_ref = {p.ref: p.status for p in mine}
        assert by_ref.get(DEMO["signature"]) == "verified", by_ref
    finally:
        e.db.dispose()
