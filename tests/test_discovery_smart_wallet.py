"""A treasury payment whose generated reference rides in a smart wallet's execute.

A reference railproof generated binds wherever the transaction carries it (verification
verifies such a payment: tests/test_binding.py), but the treasury watch and reconciliation
looked a transfer's sessions up only by the keys a chosen reference may be: the payment was
never discovered, and reconciliation called it `orphan_unbound`. A chosen reference still
binds only where no shared account can be.
"""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import select

from rails.solana import token_account
from rails.solana_inflows import fetch_inflow
from rails.transport.cassette import Call, CassetteTransport
from tests.helpers import SwitchableTransport
from tests.test_binding import DEMO, DEMO_CASSETTE, SMART_WALLET
from tests.test_discovery import make_engine
from verifier.services import proofs, reconciliation
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Proof
from verifier.worker import loop as worker

USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
TREASURY = DEMO["recipient"]


def smart_wallet_calls(reference: str, through_wallet: bool = True) -> list[dict]:
    """The recorded demo payment, its reference replaced by `reference` and passed to a smart
    wallet's execute (tests/test_binding.demo_through_a_smart_wallet), listed for the
    treasury's token account."""
    calls = copy.deepcopy(DEMO_CASSETTE["calls"])
    tx = next(c for c in calls if c["method"] == "getTransaction")["result"]
    message = tx["transaction"]["message"]
    for k in message["accountKeys"]:
        if k["pubkey"] == DEMO["reference"]:
            k["pubkey"] = reference
    if through_wallet:
        message["accountKeys"].append(
            {"pubkey": SMART_WALLET, "signer": False, "source": "transaction", "writable": False}
        )
        for lamports in ("preBalances", "postBalances"):
            tx["meta"][lamports].append(0)
        message["instructions"].insert(
            0,
            {"programId": SMART_WALLET, "accounts": [reference], "data": "", "stackHeight": None},
        )
    listing = {
        "method": "getSignaturesForAddress",
        "params": [token_account(TREASURY, USDC)],
        "result": [
            {
                "signature": DEMO["signature"],
                "slot": tx["slot"],
                "blockTime": tx["blockTime"],
                "err": None,
                "memo": None,
                "confirmationStatus": "finalized",
            }
        ],
    }
    return [listing, *calls]


def _session(e, reference: str | None = None) -> dict:
    extra = {"reference": reference} if reference else {}
    return open_session(
        e,
        NewSession(
            owner_id="alice",
            rail_id="solana_usdc",
            access_product_id="pro",
            amount=int(DEMO["amount"]),
            **extra,
        ),
        actor="svc",
    )


def test_fetch_inflow_names_a_generated_reference_carried_through_a_smart_wallet():
    ref = "9Zvs9LUPtNiQUeqafPNffSt9xJvKJq2fFVMeus1Ae8C7"  # any fresh key
    chain = CassetteTransport([Call(c) for c in smart_wallet_calls(ref)], "solana-mainnet")
    inflow = fetch_inflow(chain, DEMO["signature"], USDC, TREASURY)
    assert inflow is not None and inflow.amount == int(DEMO["amount"])
    # The transaction carries the key, though not where a chosen reference could be.
    assert ref in inflow.keys and ref not in inflow.account_keys, inflow.keys


@pytest.mark.parametrize("through_wallet", [False, True], ids=["plain", "smart_wallet"])
def test_discovery_pays_a_treasury_session_paid_from_a_smart_wallet(db_url, through_wallet):
    """plain (the reference on the transfer) and smart_wallet (the same payment, the
    reference also passed to the wallet's execute): discovered, verified."""
    e = make_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY})
    try:
        ps = _session(e)
        node = SwitchableTransport(smart_wallet_calls(ps["reference"], through_wallet))
        e.chains.set_transport("solana-mainnet", node)
        out = worker.sweep(e, "w1")
        assert node.by_method.get("getSignaturesForAddress") and node.by_method.get(
            "getTransaction"
        ), node.by_method
        assert out.get("discovered") == 1, out
        with e.db.tx() as s:
            [p] = s.scalars(select(Proof).where(Proof.session_id == ps["id"])).all()
            assert p.status == "verified"
    finally:
        e.db.dispose()


def test_the_smart_wallet_payment_is_verified_when_submitted_by_hand(db_url):
    """The premise: the same transaction is this session's payment."""
    e = make_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY})
    try:
        ps = _session(e)
        e.chains.set_transport(
            "solana-mainnet", SwitchableTransport(smart_wallet_calls(ps["reference"]))
        )
        view, _ = proofs.submit_proof(e, ps["id"], DEMO["signature"], ["alice"], actor="svc")
        assert view["status"] == "verified", view
    finally:
        e.db.dispose()


def _reconcile(e) -> dict[str, list[dict]]:
    run = reconciliation.run(
        e,
        reconciliation.RunRequest(
            scope="chain_inflows",
            rail_id="solana_usdc",
            incident_id="INC-7",
            operator_reason="treasury check",
        ),
        "ops1",
    )
    assert run["status"] == "complete", run
    kinds: dict[str, list[dict]] = {}
    for f in run["findings"]:
        kinds.setdefault(f["kind"], []).append(f)
    return kinds


def test_reconciliation_binds_the_smart_wallet_payment_to_its_session(db_url):
    e = make_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY})
    try:
        ps = _session(e)
        e.chains.set_transport(
            "solana-mainnet", SwitchableTransport(smart_wallet_calls(ps["reference"]))
        )
        kinds = _reconcile(e)
        assert [f["subjects"]["session_id"] for f in kinds["orphan_bound"]] == [ps["id"]]
        assert "orphan_unbound" not in kinds
    finally:
        e.db.dispose()


CHOSEN = "9Zvs9LUPtNiQUeqafPNffSt9xJvKJq2fFVMeus1Ae8C7"


def test_a_chosen_reference_in_a_smart_wallets_execute_binds_nothing(db_url):
    # A key the client chose may be a shared one (a wallet's, a program's state): taken
    # only where no shared account can be, as verification takes it.
    e = make_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDC": TREASURY})
    try:
        ps = _session(e, CHOSEN)
        node = SwitchableTransport(smart_wallet_calls(CHOSEN))
        e.chains.set_transport("solana-mainnet", node)
        out = worker.sweep(e, "w1")
        assert node.by_method.get("getTransaction") and not out.get("discovered"), out
        with e.db.tx() as s:
            assert s.scalars(select(Proof).where(Proof.session_id == ps["id"])).all() == []
        kinds = _reconcile(e)
        assert "orphan_bound" not in kinds
        assert [f["subjects"]["transfer"] for f in kinds["orphan_unbound"]] == [DEMO["signature"]]
    finally:
        e.db.dispose()
