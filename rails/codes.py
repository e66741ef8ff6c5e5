"""Failure codes: the one list of stable strings a rejected proof can carry.

Listed in order of precedence: when several checks would fail, a rail reports the first one
it reaches in its fixed check order (shape, rail/network, asset, recipient, amount,
reference/memo, time window), and the engine's own codes come before any chain code.
"""

from enum import StrEnum


class FailureCode(StrEnum):
    # -- engine: input and registry --------------------------------------------------------
    proof_malformed = "proof_malformed"
    rail_not_registered = "rail_not_registered"
    rail_paused = "rail_paused"
    session_not_found = "session_not_found"
    session_not_open = "session_not_open"
    session_expired = "session_expired"
    proof_owner_conflict = "proof_owner_conflict"
    duplicate_payment = "duplicate_payment"
    # -- chain: definitive answers ---------------------------------------------------------
    tx_failed_onchain = "tx_failed_onchain"
    chain_mismatch = "chain_mismatch"
    wrong_asset = "wrong_asset"
    decimals_mismatch = "decimals_mismatch"
    wrong_recipient = "wrong_recipient"
    amount_mismatch = "amount_mismatch"
    sender_mismatch = "sender_mismatch"
    reference_missing = "reference_missing"
    memo_mismatch = "memo_mismatch"
    signature_invalid = "signature_invalid"
    authorization_expired = "authorization_expired"
    authorization_not_yet_valid = "authorization_not_yet_valid"
    nonce_reused = "nonce_reused"
    ambiguous_transfer = "ambiguous_transfer"
    review_only_rail = "review_only_rail"
    # -- chain: transient (always `pending`, never `failed`) --------------------------------
    tx_not_found = "tx_not_found"
    rpc_unavailable = "rpc_unavailable"
    not_final = "not_final"
    reorged = "reorged"


# Codes that describe a state the chain may still leave; a proof carrying one stays pending.
TRANSIENT_CODES = frozenset(
    {FailureCode.tx_not_found, FailureCode.rpc_unavailable, FailureCode.not_final}
)

DESCRIPTIONS: dict[FailureCode, str] = {
    FailureCode.proof_malformed: "the proof does not have the shape of its proof type",
    FailureCode.rail_not_registered: "no rail with this id in the catalog",
    FailureCode.rail_paused: "the rail's kill switch is on: no new sessions or proofs",
    FailureCode.session_not_found: "no payment session with this id for this owner",
    FailureCode.session_not_open: "the session is paid or cancelled, or the transfer predates it",
    FailureCode.session_expired: "the transfer happened after the session expired",
    FailureCode.proof_owner_conflict: "this proof was already submitted by another owner",
    FailureCode.duplicate_payment: "this on-chain transfer already backs another session",
    FailureCode.tx_failed_onchain: "the transaction exists but failed on chain",
    FailureCode.chain_mismatch: "the transaction is on another chain or network",
    FailureCode.wrong_asset: "no transfer of the rail's token (mint/contract)",
    FailureCode.decimals_mismatch: "the token's decimals differ from the rail's",
    FailureCode.wrong_recipient: "the session's recipient received nothing",
    FailureCode.amount_mismatch: "the received amount differs from the session's",
    FailureCode.sender_mismatch: "the payer is not the one the payment names",
    FailureCode.reference_missing: "the session's reference key is not in the transaction",
    FailureCode.memo_mismatch: "the session's memo is not in the transaction",
    FailureCode.signature_invalid: "the authorization's signature does not recover to its payer",
    FailureCode.authorization_expired: "submitted past validBefore, or never settled by then",
    FailureCode.authorization_not_yet_valid: "now is before the authorization's validAfter",
    FailureCode.nonce_reused: "the authorization's nonce was already used",
    FailureCode.ambiguous_transfer: "the chain data cannot be read unambiguously; needs review",
    FailureCode.review_only_rail: "the rail is review-only: evidence recorded, never applied",
    FailureCode.tx_not_found: "the chain does not know the transaction (yet)",
    FailureCode.rpc_unavailable: "the chain could not be asked (timeouts, 429, 5xx)",
    FailureCode.not_final: "the transfer is not final yet",
    FailureCode.reorged: "the block holding the transfer left the canonical chain",
}
