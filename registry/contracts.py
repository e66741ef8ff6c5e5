"""Proof contracts: what each rail accepts and what a verified proof may lead to, derived
from the catalog and the stage rules (never written by hand per rail)."""

from __future__ import annotations

from typing import Any

from registry.catalog import Catalog, Stage

REQUIRED_FIELDS = {
    "solana_tx_signature": ["signature (base58, 64 bytes)"],
    "evm_tx_hash": ["transaction hash (0x + 64 hex)"],
    "x402_payment_payload": ["payload JSON or base64 X-PAYMENT header (exact scheme, EIP-3009)"],
    "tron_tx_id": ["transaction id (64 hex)"],
}

RECEIPT_MAPPING = {Stage.live: "automatic", Stage.gated: "staff_gated", Stage.review_only: "blocked"}
ACTIVATION = {Stage.live: "allowed", Stage.gated: "gated", Stage.review_only: "blocked"}


def finality_requirement(policy: Any) -> str:
    if policy.mode == "commitment":
        return f"commitment {policy.level}"
    tail = " or the finalized block tag" if policy.finalized_tag else ""
    return f"{policy.confirmations} confirmations{tail}"


def proof_contracts(catalog: Catalog, rail_id: str | None = None) -> list[dict[str, Any]]:
    out = []
    for rid, d in catalog.rails.items():
        if rail_id and rid != rail_id:
            continue
        out.append({
            "rail_id": rid, "stage": d.stage.value, "family": d.family,
            "network": d.network, "asset_symbol": d.asset_symbol, "decimals": d.decimals,
            "accepted_proof_types": list(d.proof_types),
            "required_fields": {t: REQUIRED_FIELDS.get(t, []) for t in d.proof_types},
            "finality_requirement": finality_requirement(d.finality),
            "live_verification": True,
            "receipt_mapping": RECEIPT_MAPPING[d.stage],
            "activation": ACTIVATION[d.stage],
        })
    return out
