"""A Solana transfer verified while "confirmed" in one slot, dropped with its fork and
executed again in another slot of the canonical fork, where it moved less money.

README ("A settlement whose block changed (a reorg, or the transaction re-mined elsewhere) sends
the proof back to pending (`reorged`) ... and it is verified afresh") and docs/finality.md ("the
engine should compare it with the stored evidence and re-verify the transfer, since the
re-executed transaction may have moved different amounts"). The worker's `_moved` compares only
`block_hash`, which a Solana settlement never carries: a new slot goes unnoticed, the settlement
is recorded final, and the automatic apply credits the session for the amount observed on the
abandoned fork.
"""

from __future__ import annotations

import copy

from sqlalchemy import select

from tests.helpers import (
    FIXTURES,
    SwitchableTransport,
    advance,
    cassette_engine,
    cassette_expect,
    recorded_calls,
)
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Receipt
from verifier.worker import loop as worker

CONFIRMED = FIXTURES / "solana" / "generated" / "confirmed_not_final.json"
TREASURY = "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg"
NEW_SLOT = 435888300


def _reexecuted(calls: list[dict]) -> list[dict]:
    """The same signature, now in NEW_SLOT of the canonical fork: it moved 1 USDC, not 5,
    and that slot is finalized."""
    tx, status = copy.deepcopy(calls[0]), copy.deepcopy(calls[1])
    tx["result"]["slot"] = NEW_SLOT
    for bal in tx["result"]["meta"]["postTokenBalances"]:
        ui = bal["uiTokenAmount"]
        ui["amount"] = "989500000" if bal["owner"] != TREASURY else "10500000"
        ui["uiAmount"] = int(ui["amount"]) / 1e6
        ui["uiAmountString"] = str(ui["uiAmount"])
    status["result"]["context"]["slot"] = NEW_SLOT + 40
    status["result"]["value"][0].update(
        slot=NEW_SLOT, confirmations=None, confirmationStatus="finalized"
    )
    return [tx, status]


def test_solana_settlement_in_another_slot_is_verified_again_not_credited(db_url):
    e = cassette_engine(db_url, auto_apply=True)
    try:
        calls = recorded_calls(CONFIRMED)
        sig = calls[0]["params"][0]
        chain = SwitchableTransport(calls)
        e.chains.set_transport("solana-mainnet", chain)
        sess = open_session(
            e,
            NewSession(
                owner_id="alice",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=5_000_000,
                recipient=TREASURY,
                reference=cassette_expect(CONFIRMED)["reference"],
            ),
            actor="svc",
        )
        view, _ = proofs.submit_proof(e, sess["id"], sig, ["alice"])
        assert view["status"] == "verified", view
        assert view["settlement"]["finality"] == "confirmed"
        assert view["settlement"]["slot"] == calls[1]["result"]["value"][0]["slot"]

        # The fork holding that slot is abandoned; the transaction lands again elsewhere.
        chain.load(_reexecuted(calls))
        for _ in range(3):
            advance(e, 120)
            worker.sweep(e, "w1")

        with e.db.tx() as s:
            receipts = s.scalars(select(Receipt).where(Receipt.session_id == sess["id"])).all()
        # On the canonical chain the transfer paid 1 USDC of the 5 asked: nothing is credited.
        assert receipts == [], "credited on evidence from an abandoned fork's slot"
    finally:
        e.db.dispose()
