"""Readiness: can a rail apply payments in this deployment, and if not, why not. A pure
function of (catalog, stored rail state, configuration)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.catalog import Catalog, Stage


@dataclass(frozen=True)
class StoredState:
    production_enabled: bool
    paused: bool


@dataclass(frozen=True)
class DeploymentConfig:
    chain_mode: str  # cassette | live
    rpc_networks: frozenset[str]  # networks with live RPC URLs configured
    apply_allowlist: frozenset[str]
    receipt_creation_rails: frozenset[str]
    live_apply: bool
    networks: Mapping[str, str]  # rail_id -> network in use
    # network -> its live RPC bounds (timeout_s, attempts, total_s, submit_budget_s), shown
    # as they are: informative, never a blocker.
    rpc_policies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def live_verifier_configured(cfg: DeploymentConfig, network: str) -> bool:
    """The one fact behind readiness' `live_verifier_configured` and the proof contracts'
    `live_verification`: the deployment reads a live chain and has RPC URLs for `network`."""
    return cfg.chain_mode == "live" and network in cfg.rpc_networks


def _live_verifier_blocker(cfg: DeploymentConfig, network: str) -> str:
    """The `live_verifier_configured` blocker, saying why and what to set for live."""
    rpc_var = "RAILPROOF_RPC_" + network.upper().replace("-", "_")
    if cfg.chain_mode != "live":
        need = "" if network in cfg.rpc_networks else f" and {rpc_var}"
        return (
            f"live_verifier_configured: recorded cassettes (RAILPROOF_CHAIN={cfg.chain_mode}): "
            f"set RAILPROOF_CHAIN=live{need}"
        )
    return f"live_verifier_configured: no RPC URL for {network}: set {rpc_var}"


def readiness(
    catalog: Catalog, states: Mapping[str, StoredState], cfg: DeploymentConfig
) -> list[dict[str, Any]]:
    out = []
    for rail_id, d in catalog.rails.items():
        st = states.get(rail_id, StoredState(d.production_enabled, False))
        network = cfg.networks.get(rail_id, d.network)
        live_verifier = live_verifier_configured(cfg, network)
        allowlisted = rail_id in cfg.apply_allowlist
        receipts = d.stage is Stage.live or (
            d.stage is Stage.gated and rail_id in cfg.receipt_creation_rails
        )
        blockers = []
        if st.paused:
            blockers.append("rail_paused")
        if not st.production_enabled:
            blockers.append("rail_production_enabled")
        if d.stage is not Stage.live and st.production_enabled:
            # SECURITY: a non-live rail in production is a finding whatever else holds.
            blockers.append("non_live_rail_production_enabled")
        if not allowlisted:
            blockers.append("rail_allowlisted")
        if d.stage is not Stage.live and not cfg.live_apply:
            blockers.append("live_apply_enabled")
        if not receipts:
            blockers.append("receipt_creation_allowed")
        if not live_verifier:
            blockers.append(_live_verifier_blocker(cfg, network))
        out.append(
            {
                "rail_id": rail_id,
                "stage": d.stage.value,
                "network": network,
                "production_enabled": st.production_enabled and d.stage is not Stage.review_only,
                "paused": st.paused,
                "live_verifier_configured": live_verifier,
                "apply_allowlisted": allowlisted,
                "receipt_creation_allowed": receipts,
                "ready": not blockers,
                "blockers": blockers,
                "rpc_policy": dict(cfg.rpc_policies.get(network, {})),
            }
        )
    return out
