"""A facilitator's settlement that carries several payers' authorizations.

Another payer's transfer sent back in the same EVM transaction is not this proof's money, so
it must not block the payer's own payment (tests/test_sent_back_cases.py). That held for a
payer-bound session only: the gate matched an inflow resolution's `sender` against the
session's payer, and an x402 session names none (it is optional there). Once staff refunded
another payer's log of a batched x402 settlement, every payer-less x402 payment settled in the
same transaction could never be applied. The proof's own payer (the authorization's `from`)
is used now.
"""

from __future__ import annotations

import pytest

from tests.helpers import advance
from tests.test_x402_adapter import (
    TX,
    live_chain,
    settlement_logs,
)
from tests.test_x402_engine import FIX, SIGNER, open_x402
from tests.test_x402_inflow_matched import (  # noqa: F401  (one treasury, two rails)
    authorization_logs,
    x402_engine,
)
from verifier.core.engine import Engine
from verifier.services import gate, proofs
from verifier.storage.reconciliation_models import (
    ReconciliationFinding,
    ReconciliationResolution,
    ReconciliationRun,
)
from verifier.worker import loop as worker

OTHER_PAYER = "0x00000000000000000000000000000000000a11CE"
OTHER_NONCE = "0x" + "77" * 32


def _batched_settlement() -> list[dict]:
    """One facilitator transaction settling two authorizations: the fixture payer's (logs 0,
    1) and another payer's (logs 2, 3), both to the shared treasury."""
    return settlement_logs() + authorization_logs(OTHER_PAYER, OTHER_NONCE, 10000, 2)


def _refund_other_payers_log(engine: Engine, sender: str = OTHER_PAYER, log_index: int = 3) -> None:
    """What a base_usdc chain_inflows run leaves once staff refunded a payer's inflow (its own
    log of the batched transaction: the other payer's by default), as reconciliation writes
    it."""
    now = engine.now()
    tx = TX.lower()
    key = f"rail_id=base_usdc;transfer={tx};log_index={log_index}"
    with engine.db.tx() as s:
        run = ReconciliationRun(
            scope="chain_inflows",
            rail_id="base_usdc",
            dry_run=True,
            incident_id="INC-9",
            operator_reason="unclaimed inflow",
            staff="ops1",
            started_at=now,
            finished_at=now,
            status="complete",
        )
        s.add(run)
        s.flush()
        finding = ReconciliationFinding(
            run_id=run.id,
            kind="orphan_unbound",
            severity="warning",
            subjects={
                "transfer": tx,
                "log_index": log_index,
                "amount": "10000",
                "sender": sender,
                "block_number": 100,
            },
            subject_key=key,
        )
        s.add(finding)
        s.flush()
        s.add(
            ReconciliationResolution(
                kind="orphan_unbound",
                subject_key=key,
                resolution="refunded",
                finding_id=finding.id,
                staff="ops1",
                incident_id="INC-9",
                operator_reason="refunded the other payer",
                resolved_at=now,
            )
        )


@pytest.mark.parametrize("payer", [SIGNER, None], ids=["payer_bound", "payer_less"])
def test_another_payers_refund_in_a_batched_x402_settlement_blocks_no_other_payment(
    x402_engine,  # noqa: F811
    payer,
):
    e = x402_engine
    e.chains.set_transport("base-sepolia", live_chain(used=False))
    ps = open_x402(e, payer=payer)
    header = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
    view, _ = proofs.submit_proof(e, ps["id"], header, ["alice"])
    assert (view["status"], view["settlement"]) == ("verified", None), view

    # The facilitator settles it together with another payer's authorization.
    e.chains.set_transport(
        "base-sepolia",
        live_chain(used=True, logs=_batched_settlement(), head=200, finalized=150),
    )
    advance(e, 20)
    assert worker.refresh_finality(e, "w1", 10) == 1
    assert proofs.get_proof(e, view["id"], ["alice"])["settlement"]["is_final"]

    before = gate.dry_run_apply(e, view["id"])
    assert "transfer_not_sent_back" not in {b["code"] for b in before["blockers"]}

    _refund_other_payers_log(e)
    report = gate.dry_run_apply(e, view["id"])
    [check] = [c for c in report["checks"] if c["name"] == "transfer_not_sent_back"]
    # The other payer's refunded log is not this payer's money (as for payer-bound sessions).
    assert check["passed"], check["detail"]
    assert gate.sent_back_of(e, [view["id"]]) == set()
    # This payer's own log sent back blocks it, the session naming its payer or not.
    _refund_other_payers_log(e, sender=SIGNER, log_index=1)
    report = gate.dry_run_apply(e, view["id"])
    [check] = [c for c in report["checks"] if c["name"] == "transfer_not_sent_back"]
    assert not check["passed"]
    assert gate.sent_back_of(e, [view["id"]]) == {view["id"]}
