"""Engine errors: a refusal the caller can act on, with a stable code and the HTTP status the
API gives it. Rejected proofs are not errors (they are stored with their verdict).

EngineError
 ├── BadInput        422: a field is missing or malformed (names the field)
 ├── NotFound        404: no such thing, or not yours (owner isolation answers the same)
 ├── Conflict        409: proof_owner_conflict, duplicate_payment, idempotency_*, session state
 ├── Forbidden       403: the caller's role may not do this (e.g. approving one's own request)
 └── Refused         409/423: a gate or the kill switch says no (rail_paused, blockers)

Most refusals are decided before anything is written. One that is raised after the request
ran side effects (a refused claim of a held transfer is audited and counted) is marked
`executed`: its answer is stored under an Idempotency-Key like a success
(services.idempotency), so a retry replays it instead of running again.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
        executed: bool = False,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra or {}
        self.executed = executed  # raised after side effects: replayed, not run again

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        err.update(self.extra)
        return {"error": err}


class BadInput(EngineError):
    status = 422


class NotFound(EngineError):
    status = 404


class Conflict(EngineError):
    status = 409


class Forbidden(EngineError):
    status = 403


class Refused(EngineError):
    status = 409
