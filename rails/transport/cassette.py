"""Cassette replay: recorded JSON-RPC answers served through the same `Transport` seam as a
live node, so everything above the transport runs the same code on recorded data.

A cassette: {"cassette": 1, "network": …, "source": …, "calls": [{"method", "params",
"result" | "error"}]}. A request matches a recorded call by method and positional params; a
trailing options object in the request is ignored when the recorded call has none, and
otherwise compared only on the keys the recorded call has. Across a directory, the first file
in sorted path order wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from rails.errors import CassetteUnreadable, RpcErrorResponse, UnmatchedRequest
from rails.files import read_regular


class Call:
    __slots__ = ("method", "params", "result", "error", "has_error")

    def __init__(self, raw: dict[str, Any]):
        self.method = raw["method"]
        self.params = list(raw.get("params") or [])
        self.has_error = "error" in raw and raw["error"] is not None
        self.error = raw.get("error")
        self.result = raw.get("result")

    def matches(self, method: str, params: list[Any]) -> bool:
        if method != self.method:
            return False
        rec = self.params
        if len(params) == len(rec) + 1 and isinstance(params[-1], dict):
            params = params[:-1]  # trailing options the recording did not keep
        if len(params) != len(rec):
            return False
        return all(_param_matches(p, r) for p, r in zip(params, rec, strict=True))


def _param_matches(asked: Any, recorded: Any) -> bool:
    if isinstance(recorded, dict) and isinstance(asked, dict):
        return all(k in asked and asked[k] == v for k, v in recorded.items())
    return bool(asked == recorded)


def read_cassette(path: Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(read_regular(path))
    except FileNotFoundError as e:
        raise CassetteUnreadable(f"{path}: no such file") from e
    except OSError as e:
        raise CassetteUnreadable(f"{path}: cannot read it ({e.strerror})") from e
    except orjson.JSONDecodeError as e:
        raise CassetteUnreadable(f"{path}: not readable JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("cassette") != 1:
        raise CassetteUnreadable(f'{path}: not a cassette (needs "cassette": 1)')
    calls = doc.get("calls")
    if not isinstance(calls, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("method"), str)
        and isinstance(c.get("params", []), list)
        and ("result" in c or "error" in c)
        for c in calls
    ):
        raise CassetteUnreadable(
            f"{path}: calls must be a list of {{method, params, result|error}}"
        )
    if not isinstance(doc.get("network"), str):
        raise CassetteUnreadable(f"{path}: network must be a string")
    return doc


def discover(directory: Path) -> list[Path]:
    """Every *.json below `directory` (sorted) that is a cassette; other files are skipped."""
    found = []
    for p in sorted(directory.rglob("*.json")):
        try:
            head = orjson.loads(read_regular(p))  # a pipe named *.json is skipped, not awaited
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(head, dict) and head.get("cassette") == 1:
            found.append(p)
    return found


class CassetteTransport:
    source = "cassette"

    def __init__(self, calls: Iterable[Call], network: str | None = None):
        self.network = network
        # A recorded call can only match a request whose first positional param equals its
        # own (see Call.matches), so calls are indexed by (method, first param) when that is
        # a plain string or list of strings (a signature, a tx hash, [signatures]). A lookup
        # then costs the same for a cassette of five calls or of a million; the rest (no
        # params, an object first) stay in a per-method list searched in order.
        self._by_key: dict[tuple[str, Any], list[tuple[int, Call]]] = {}
        self._other: dict[str, list[tuple[int, Call]]] = {}
        for pos, c in enumerate(calls):
            key = _first_param_key(c.params)
            if key is None:
                self._other.setdefault(c.method, []).append((pos, c))
            else:
                self._by_key.setdefault((c.method, key), []).append((pos, c))

    @classmethod
    def from_files(cls, paths: Iterable[Path], network: str | None = None) -> CassetteTransport:
        calls: list[Call] = []
        for p in paths:
            doc = read_cassette(Path(p))
            if network is None or doc["network"] == network:
                calls.extend(Call(c) for c in doc["calls"])
        return cls(calls, network)

    @classmethod
    def from_dir(cls, directory: Path, network: str) -> CassetteTransport:
        return cls.from_files(discover(Path(directory)), network)

    def call(self, method: str, params: list[Any]) -> Any:
        found: tuple[int, Call] | None = None
        key = _first_param_key(params)
        if key is not None:
            found = _first_match(self._by_key.get((method, key), ()), method, params)
        # The first recorded match wins across both tables (sorted path order, then file order).
        other = _first_match(self._other.get(method, ()), method, params)
        if other is not None and (found is None or other[0] < found[0]):
            found = other
        if found is None:
            raise UnmatchedRequest(method, params)
        c = found[1]
        if c.has_error:
            raise RpcErrorResponse(method, c.error)
        return c.result


def _first_param_key(params: list[Any]) -> Any:
    if not params:
        return None
    first = params[0]
    if isinstance(first, str):
        return first
    if isinstance(first, list) and all(isinstance(x, str) for x in first):
        return tuple(first)
    return None


def _first_match(
    calls: Iterable[tuple[int, Call]], method: str, params: list[Any]
) -> tuple[int, Call] | None:
    for pos, c in calls:
        if c.matches(method, params):
            return pos, c
    return None


class CountingTransport:
    """Wraps a transport and counts the calls made through it (rpc_calls in attempts)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.source = inner.source
        self.calls = 0

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        return self.inner.call(method, params)
