"""Staff release an x402 proof held for review and commit while the worker re-checks the Base
USDC proof of the same payment that waits for that decision (PostgreSQL, READ COMMITTED).

The worker's transaction inserts the transfer's holds (INSERT ... ON CONFLICT DO NOTHING): the
EIP-3009 key is still held by the proof in review, so nothing is written; the holders of the
keys not written are then read by a second statement. When the release committed between the
two, the key was neither written nor reported held, and the proof was recorded `verified`
without holding it: the same payload submitted for a third tenant's session took the key, was
credited by staff, and two sessions got a receipt for one payment. Such a key is taken now.

The release runs, deterministically, from inside the worker's transaction right before the
holders are read (another Engine, another connection, its own transaction)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from tests.helpers import advance
from tests.test_review_release_cross_rail import _both
from tests.test_x402_adapter import live_chain, settlement_logs
from tests.test_x402_engine import FIX, open_x402
from tests.test_x402_inflow_matched import two_rail_engine
from verifier.core.engine import Engine
from verifier.core.errors import Conflict
from verifier.services import gate, proofs, reviews
from verifier.services.audit import Operator
from verifier.storage.models import RailState, Receipt
from verifier.storage.repo import holds
from verifier.worker import loop as worker

pytestmark = pytest.mark.postgres
HEADER = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
OPS = Operator("ops1", incident_id="INC-5", reason="payer says which session it paid")


def _engine(url: str) -> Engine:
    e = two_rail_engine(url)
    e.chains.set_transport(
        "base-sepolia", live_chain(used=True, logs=settlement_logs(), head=200, finalized=150)
    )
    return e


@pytest.fixture
def two(request, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("a race between two connections under READ COMMITTED: PostgreSQL")
    e1, e2 = _engine(db_url), _engine(db_url)
    yield e1, e2
    e1.db.dispose()
    e2.db.dispose()


def test_release_committed_during_the_workers_hold_read_leaves_the_payment_unheld(two, monkeypatch):
    worker_engine, staff_engine = two
    e = worker_engine
    held, waiting = _both(e)  # Alice's x402 proof in review; Bob's Base USDC proof waiting

    original = holds.holders
    fired: list[bool] = []

    def holders_after_release(s, keys):
        if not fired and any(k.startswith("eip3009:") for k in keys):
            fired.append(True)
            # Staff release Alice's proof ("not made for this session") and commit, on their
            # own connection, while the worker's transaction is between its two statements.
            t = threading.Thread(
                target=reviews.resolve_review,
                args=(staff_engine, held["id"], reviews.Decision.release, OPS),
            )
            t.start()
            t.join(20)
            assert not t.is_alive()
        return original(s, keys)

    monkeypatch.setattr(holds, "holders", holders_after_release)
    advance(e, 10)
    worker.sweep(e, "w1")
    monkeypatch.setattr(holds, "holders", original)
    assert fired, "the worker never met the review's hold"
    assert proofs.get_proof(e, held["id"], ["alice"])["status"] == "failed"

    # A third tenant's payer-less x402 session submits the same payload.
    carol = open_x402(e, owner="alice-2")
    try:
        third, _ = proofs.submit_proof(e, carol["id"], HEADER, ["alice-2"])
    except Conflict:
        third = None  # refused: the payment is Bob's (the behaviour without the race)
    if third is not None and third["status"] == "requires_review":
        reviews.resolve_review(e, third["id"], reviews.Decision.credit, OPS)

    # Every staff flag for receipts on both gated rails.
    e.settings.live_apply = True
    e.settings.apply_rail_allowlist = ["x402", "base_usdc"]
    e.settings.receipt_creation_rails = ["x402", "base_usdc"]
    with e.db.tx() as s:
        s.get(RailState, "x402").production_enabled = True
        s.get(RailState, "base_usdc").production_enabled = True
    for pid in [waiting["id"]] + ([third["id"]] if third is not None else []):
        try:
            gate.apply(e, pid, OPS, gate.Via.staff_receipt)
        except Exception:  # noqa: BLE001 - a blocked apply is the expected outcome for one
            pass
    with e.db.tx() as s:
        receipts = s.scalar(select(func.count()).select_from(Receipt))
    # One payment (10000 base units, one EIP-3009 authorization): one receipt at most, and
    # the third tenant's submission is refused (the payment is Bob's).
    assert third is None
    assert receipts <= 1, (
        f"one x402 payment credited {receipts} times: Bob's base_usdc proof "
        f"({proofs.get_proof(e, waiting['id'], ['bob'])['status']}) and the x402 proof "
        f"{third and third['id']} of another tenant's session"
    )
