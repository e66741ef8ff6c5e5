"""Rail families and chain transports. `adapter_for(rail)` looks the family's adapter up in a
catalog's [families] table and builds it for one resolved rail.

Everything the core needs to know about a family it reads from the adapter class's declared
attributes (`rails.base.Adapter`), through the helpers here, never from the family's name.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import cast

from rails.base import Adapter
from registry.catalog import Catalog, CatalogError, Rail, load_catalog


@cache
def _load(target: str) -> type[Adapter]:
    module, _, name = target.partition(":")
    return cast(type[Adapter], getattr(importlib.import_module(module), name))


def adapter_class(family: str, catalog: Catalog | None = None) -> type[Adapter]:
    cat = catalog or load_catalog()
    entry = cat.families.get(family)
    if entry is None:
        raise KeyError(f"rail family {family!r} is not registered in the catalog")
    cls = _load(entry.adapter)
    # The catalog repeats what the adapter declares (registry cannot import rails): a
    # disagreement is a configuration mistake, caught before any rail of the family runs.
    declared = getattr(cls, "network_family", None)
    if declared != cat.network_family(family):
        raise CatalogError(
            f"family {family!r}: the catalog settles it on {cat.network_family(family)!r} "
            f"networks, its adapter {entry.adapter} declares {declared!r}"
        )
    return cls


def adapter_for(rail: Rail, catalog: Catalog | None = None) -> Adapter:
    return adapter_class(rail.family, catalog)(rail)


def proof_fields(catalog: Catalog | None = None) -> dict[str, tuple[str, ...]]:
    """Proof type → what a caller must submit, as the registered adapters declare it (for
    `registry.contracts.proof_contracts`)."""
    cat = catalog or load_catalog()
    out: dict[str, tuple[str, ...]] = {}
    for family in cat.families:
        out.update(adapter_class(family, cat).proof_fields)
    return out


def reads_chain(rail_id: str, catalog: Catalog | None = None) -> bool:
    """Whether verifying the rail's proofs reads the chain (offline: from a cassette). An
    unknown rail answers False so that the caller's own check names the rail."""
    cat = catalog or load_catalog()
    d = cat.rails.get(rail_id)
    return d is not None and adapter_class(d.family, cat).reads_chain
