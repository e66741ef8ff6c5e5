"""Proof contracts: what each rail accepts and what a verified proof may lead to, derived
from the catalog, the stage rules and the deployment (never written by hand per rail).

What each proof type requires is declared by the adapter that accepts it
(`Adapter.proof_fields`), not listed here: this package sits below rails (verifier → rails →
registry) and cannot import adapters, so the caller passes the declarations in
(`rails.proof_fields(catalog)` builds them). A new proof type then touches only its module
and the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from registry.catalog import Catalog, FinalityPolicy, Stage
from registry.readiness import DeploymentConfig, live_verifier_configured

RECEIPT_MAPPING = {
    Stage.live: "automatic",
    Stage.gated: "staff_gated",
    Stage.review_only: "blocked",
}
ACTIVATION = {Stage.live: "allowed", Stage.gated: "gated", Stage.review_only: "blocked"}


def finality_requirement(policy: FinalityPolicy) -> str:
    if policy.mode == "commitment":
        return f"commitment {policy.level}"
    tail = " or the finalized block tag" if policy.finalized_tag else ""
    return f"{policy.confirmations} confirmations{tail}"


def proof_contracts(
    catalog: Catalog,
    rail_id: str | None = None,
    *,
    proof_fields: Mapping[str, Sequence[str]] | None = None,
    cfg: DeploymentConfig | None = None,
) -> list[dict[str, Any]]:
    """One contract per rail (or the one `rail_id`).

    `proof_fields`: proof type → what a caller must submit, from the adapters; a proof type
    missing from it lists no fields. `cfg`: the deployment, for `live_verification` (the same
    fact as readiness' `live_verifier_configured`); without it nothing says a live chain is
    read, so it is False."""
    fields = proof_fields or {}
    out = []
    for rid, d in catalog.rails.items():
        if rail_id and rid != rail_id:
            continue
        network = cfg.networks.get(rid, d.network) if cfg is not None else d.network
        out.append(
            {
                "rail_id": rid,
                "stage": d.stage.value,
                "family": d.family,
                "network": network,  # the deployment's (RAILPROOF_NETWORK_<RAIL>)
                "asset_symbol": d.asset_symbol,
                "decimals": d.decimals,
                "accepted_proof_types": list(d.proof_types),
                "required_fields": {t: list(fields.get(t, ())) for t in d.proof_types},
                "finality_requirement": finality_requirement(d.finality),
                "live_verification": cfg is not None and live_verifier_configured(cfg, network),
                "receipt_mapping": RECEIPT_MAPPING[d.stage],
                "activation": ACTIVATION[d.stage],
            }
        )
    return out
