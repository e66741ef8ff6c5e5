"""Rail families and chain transports. `adapter_for(rail)` looks the family's adapter up in a
catalog's [families] table and builds it for one resolved rail."""

from __future__ import annotations

import importlib
from functools import lru_cache

from rails.base import Adapter
from registry.catalog import Catalog, Rail, load_catalog


@lru_cache(maxsize=None)
def _load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def adapter_class(family: str, catalog: Catalog | None = None) -> type:
    target = (catalog or load_catalog()).families.get(family)
    if target is None:
        raise KeyError(f"rail family {family!r} is not registered in the catalog")
    return _load(target)


def adapter_for(rail: Rail, catalog: Catalog | None = None) -> Adapter:
    return adapter_class(rail.family, catalog)(rail)
