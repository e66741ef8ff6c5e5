"""The rail catalog (catalog.toml) as typed, immutable values.

`load_catalog()` reads the shipped TOML; `Catalog.resolve(rail_id, overrides)` applies a
deployment's network/asset/treasury configuration and returns the `Rail` an adapter works with.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Stage(StrEnum):
    live = "live"
    gated = "gated"
    review_only = "review_only"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FinalityPolicy(_Frozen):
    """How final a settlement must be before apply.

    commitment: Solana commitment level (processed < confirmed < finalized).
    depth: EVM/Tron confirmations = head - block + 1; with `finalized_tag` a block at or
    below the node's `finalized` block also counts as final.
    """

    mode: Literal["commitment", "depth"]
    level: Literal["processed", "confirmed", "finalized"] | None = None
    confirmations: int | None = Field(default=None, ge=1)
    finalized_tag: bool = False


class Eip712Domain(_Frozen):
    name: str
    version: str


class FamilyDef(_Frozen):
    """A registered rail family: where its adapter is, and which networks it settles on.

    `network_family` is the family of the [networks] tables its rails may use; it defaults to
    the family's own name. It repeats the adapter's declared `network_family` because this
    package cannot import rails; `rails.adapter_class` refuses an adapter that disagrees.
    In the TOML a family is either the adapter target alone or a table:
    `x402 = { adapter = "rails.x402:X402Adapter", network_family = "evm" }`."""

    adapter: str
    network_family: str | None = None


class NetworkDef(_Frozen):
    family: str
    chain_id: int | None = None


class RailDef(_Frozen):
    family: str
    stage: Stage
    production_enabled: bool
    network: str
    asset_symbol: str
    decimals: int
    proof_types: tuple[str, ...]
    finality: FinalityPolicy
    assets: dict[str, str]
    eip712: dict[str, Eip712Domain] = Field(default_factory=dict)


class Rail(_Frozen):
    """A rail as one deployment runs it: catalog facts plus configuration."""

    rail_id: str
    family: str
    stage: Stage
    network: str
    chain_id: int | None
    asset: str
    asset_symbol: str
    decimals: int
    proof_types: tuple[str, ...]
    finality: FinalityPolicy
    treasury: str | None
    eip712: Eip712Domain | None = None
    default_production_enabled: bool


class RailOverrides(_Frozen):
    network: str | None = None
    asset: str | None = None
    treasury: str | None = None


class CatalogError(ValueError):
    pass


class Catalog(_Frozen):
    families: dict[str, FamilyDef]
    networks: dict[str, NetworkDef]
    rails: dict[str, RailDef]

    @field_validator("families", mode="before")
    @classmethod
    def _family_shorthand(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: {"adapter": v} if isinstance(v, str) else v for k, v in value.items()}

    def rail_ids(self) -> list[str]:
        return list(self.rails)

    def network_family(self, family: str) -> str:
        """The family of the networks `family`'s rails settle on."""
        d = self.families[family]
        return d.network_family or family

    def resolve(self, rail_id: str, overrides: RailOverrides | None = None) -> Rail:
        d = self.rails[rail_id]
        o = overrides or RailOverrides()
        network = o.network or d.network
        net = self.networks.get(network)
        if net is None or net.family != self.network_family(d.family):
            raise CatalogError(f"rail {rail_id}: network {network!r} is not a {d.family} network")
        asset = o.asset or d.assets.get(network)
        if not asset:
            raise CatalogError(f"rail {rail_id}: no asset for network {network!r}")
        return Rail(
            rail_id=rail_id,
            family=d.family,
            stage=d.stage,
            network=network,
            chain_id=net.chain_id,
            asset=asset,
            asset_symbol=d.asset_symbol,
            decimals=d.decimals,
            proof_types=d.proof_types,
            finality=d.finality,
            treasury=o.treasury,
            eip712=d.eip712.get(network),
            default_production_enabled=d.production_enabled,
        )


def parse_catalog(text: str) -> Catalog:
    raw = tomllib.loads(text)
    cat = Catalog.model_validate(raw)
    for rail_id, d in cat.rails.items():
        if d.family not in cat.families:
            raise CatalogError(f"rail {rail_id}: family {d.family!r} is not registered")
        # SECURITY: a review_only rail can never default to production.
        if d.stage is Stage.review_only and d.production_enabled:
            raise CatalogError(f"rail {rail_id}: review_only rails cannot be production-enabled")
    return cat


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    return parse_catalog(resources.files("registry").joinpath("catalog.toml").read_text())
