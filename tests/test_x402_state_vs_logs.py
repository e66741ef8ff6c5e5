"""x402: an unused `authorizationState` past validBefore fails only when the logs agree.

Past validBefore (+ a margin), an authorization whose nonce reads unused on a node whose
latest block is stamped after validBefore is `failed authorization_expired`. Behind one RPC
URL (a provider's load balancer, several pool members) the `eth_call` and the log reads are
not one node's consistent view: a member whose state lags answers "unused" while the token's
AuthorizationUsed log and its receipt show the payment settled. Before failing, the rail
looks for the settlement: one that made exactly this transfer is the settled payment; one
that moved other funds contradicts the state read, and the proof waits (`rpc_unavailable`).
"""

from __future__ import annotations

from rails.base import Status
from rails.codes import FailureCode
from tests.test_x402_adapter import (  # noqa: F401  (fixture)
    LATE,
    OTHER,
    V1_JSON,
    live_chain,
    resubmitted,
    sepolia,
    settlement_logs,
)


def test_a_settlement_the_logs_show_is_not_failed_expired_on_a_lagging_state_read(sepolia):  # noqa: F811
    # The settlement (AuthorizationUsed + the Transfer paying the session's recipient and
    # amount, mined in the window) is served by the node's logs and receipts; only its
    # authorizationState read lags.
    lagging = sepolia.verify(
        V1_JSON, resubmitted(LATE), live_chain(used=False, logs=settlement_logs())
    )
    consistent = sepolia.verify(
        V1_JSON, resubmitted(LATE), live_chain(used=True, logs=settlement_logs())
    )
    assert consistent.status is Status.verified and consistent.settlement is not None
    assert lagging.status is Status.verified, (lagging.code, lagging.detail)
    assert lagging.settlement == consistent.settlement


def test_logs_showing_the_nonce_spent_elsewhere_against_an_unused_state_wait(sepolia):  # noqa: F811
    chain = live_chain(used=False, logs=settlement_logs(to=OTHER))
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), chain)
    assert (verdict.status, verdict.code) == (Status.pending, FailureCode.rpc_unavailable), (
        verdict.detail
    )


def test_an_unused_nonce_the_logs_agree_with_is_expired(sepolia):  # noqa: F811
    chain = live_chain(used=False)
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), chain)
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.authorization_expired)
    assert "eth_getLogs" in chain.methods()  # looked for the settlement before failing
