"""JSON text read one way only.

A JSON object that gives one name twice ({"amount": 1500000, "amount": 1}) is read as its
last value by Python's parser, as its first by others, and refused by some (serde): a
proxy, a log reader, an operator's tool or a facilitator could see another request or
payment than the one acted on. `loads_unique` refuses such text, naming where.
"""

from __future__ import annotations

import json
from typing import Any

NAME_SHOWN = 64  # characters of a repeated name kept in its path


class RepeatedName(ValueError):
    """An object of the document gives a name twice. `path`: that name's dotted path (list
    items by index), e.g. `amount` or `items.0.to`."""

    def __init__(self, path: str):
        super().__init__(f"{path}: the name is given twice")
        self.path = path


class _Repeated(dict[str, Any]):
    """An object that gave `name` twice, left in the document to be found with its path."""

    name = ""


def loads_unique(text: bytes | str) -> Any:
    """`json.loads(text)`, raising RepeatedName when an object gives a name twice. Other
    errors are json.loads's own (ValueError, RecursionError)."""
    repeated: list[_Repeated] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        doc = dict(items)
        if len(doc) == len(items):  # the common case, at C speed
            return doc
        seen: set[str] = set()
        marked = _Repeated(doc)
        for key, _ in items:
            if key in seen:
                marked.name = key[:NAME_SHOWN]
                break
            seen.add(key)
        repeated.append(marked)
        return marked

    doc = json.loads(text, object_pairs_hook=pairs)
    if repeated:
        raise RepeatedName(_repeated_path(doc) or repeated[0].name)
    return doc


def _repeated_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first repeated name, in document order."""
    if isinstance(value, _Repeated):
        return f"{path}.{value.name}" if path else value.name
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for k, v in items:
        found = _repeated_path(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None
