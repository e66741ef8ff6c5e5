"""Rail families and chain transports. `adapter_for(rail)` looks a family's adapter up in the
catalog's [families] table and builds it for one resolved rail."""

from __future__ import annotations

import importlib
from functools import lru_cache

from rails.base import Adapter
from registry.catalog import Rail, load_catalog


@lru_cache(maxsize=None)
def adapter_class(family: str) -> type:
    target = load_catalog().families.get(family)
    if target is None:
        raise KeyError(f"rail family {family!r} is not registered in the catalog")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def adapter_for(rail: Rail) -> Adapter:
    return adapter_class(rail.family)(rail)
