"""Errors of the rails package. A rejected proof is never an exception (it is a Verdict);
these are for malformed input, transports and cassettes.

RailError
 ├── ProofMalformed            the proof or an address does not have the expected shape (has .field)
 ├── TransportError            the chain could not be asked or answered unusably
 │    ├── RpcUnavailable       transient: timeout, connection refused, 429, 5xx, every URL down
 │    ├── RpcErrorResponse     the node answered a JSON-RPC error object (has .error)
 │    └── MalformedResponse    the answer is not JSON, not the shape asked for, or not about
 │         │                   the transaction asked for (a lying or broken node)
 │         └── AnswerTooLarge  larger than any answer railproof asks for (8 MiB decoded)
 └── CassetteError
      ├── CassetteUnreadable   the cassette file is missing, not JSON or not a cassette
      └── UnmatchedRequest     no recorded call matches (names method and params)
"""

from typing import Any


class RailError(Exception):
    pass


class ProofMalformed(RailError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TransportError(RailError):
    pass


class RpcUnavailable(TransportError):
    pass


class RpcErrorResponse(TransportError):
    def __init__(self, method: str, error: Any):
        super().__init__(f"{method}: JSON-RPC error {error}")
        self.method = method
        self.error = error


class MalformedResponse(TransportError):
    pass


class AnswerTooLarge(MalformedResponse):
    """A range query (eth_getLogs) answers this for too wide a range: ask for less."""


class CassetteError(RailError):
    pass


class CassetteUnreadable(CassetteError):
    pass


class UnmatchedRequest(CassetteError):
    def __init__(self, method: str, params: list[Any]):
        super().__init__(f"no recorded call matches {method} {params!r}")
        self.method = method
        self.params = params
