"""A transfer on a review-only rail goes to review (`requires_review review_only_rail`, which
reads "this paid; the rail is review-only") only once its block is final: before that it waits
`pending not_final`, and the worker asks the node again. Nothing re-checks a proof in review,
so one put there one block deep would read as paid after its block was dropped.

Recorded data: the real TRC-20 transfer answer (fixtures/tron/usdt_transfer.json); the rail
needs 19 confirmations (README "Finality")."""

from __future__ import annotations

from tests.helpers import advance
from tests.test_tron_adapter import BLOCK, ok_info
from tests.test_tron_failed_unsolidified import _calls, engine, submitted_one_block_deep  # noqa: F401
from verifier.services import proofs
from verifier.worker import loop as worker


def _says_not_final(engine, proof_id: str) -> bool:  # noqa: F811
    """The proof is still waiting for finality, or what a reviewer reads says it is not final."""
    view = proofs.get_proof(engine, proof_id, None)
    if (view["status"], view["failure_code"]) == ("pending", "not_final"):
        return True
    observed = proofs.list_attempts(engine, proof_id)[-1]["observed"]
    evidence = proofs.list_evidence(engine, proof_id)
    return observed.get("is_final") is False or any(not e.get("is_final") for e in evidence)


def test_an_unsolidified_transfer_is_not_put_to_review_as_paid(engine):  # noqa: F811
    node, _, view = submitted_one_block_deep(engine, ok_info())  # 1 of 19 confirmations
    assert _says_not_final(engine, view["id"]), (view["status"], view["failure_code"])


def test_a_transfer_dropped_after_review_does_not_stay_paid(engine):  # noqa: F811
    node, _, view = submitted_one_block_deep(engine, ok_info())
    # The block was on a fork that was dropped: the node no longer knows the transaction.
    node.load(_calls({}, head=BLOCK + 40))
    for _ in range(6):
        advance(engine, 600)
        worker.sweep(engine, "w1")
    stored = proofs.get_proof(engine, view["id"], None)
    # The node was asked again, and the proof does not read as paid.
    assert (stored["status"], stored["failure_code"]) != ("requires_review", "review_only_rail")
    assert node.by_method.get("gettransactioninfobyid", 0) > 1
