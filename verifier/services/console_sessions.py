"""A staff member's console session begins and ends in the audit log: `console.login` when a
staff token is exchanged for a session cookie, `console.logout` when it is ended, each with
the session's id as subject. The logout event is what refuses the cookie before it expires
(services.console_reads.logged_out)."""

from __future__ import annotations

from verifier.core.engine import Engine
from verifier.services import audit

SUBJECT_TYPE = "console_session"


def record_login(engine: Engine, staff: str, session_id: str) -> None:
    _record(engine, staff, session_id, "console.login")


def record_logout(engine: Engine, staff: str, session_id: str) -> None:
    _record(engine, staff, session_id, "console.logout")


def end_crossed(engine: Engine, sessions: list[tuple[str, str]]) -> None:
    """End every one of these live sessions of different staff members carried by one browser
    (staff, session id): one was planted by another page on the host, and which is not known.
    Each is logged out on the record, with the reason, so neither can be used again."""
    why = {"ended": "sessions of several staff members in one browser"}
    for staff, session_id in sessions:
        _record(engine, staff, session_id, "console.logout", why)


def _record(
    engine: Engine, staff: str, session_id: str, action: str, data: dict[str, str] | None = None
) -> None:
    with engine.db.tx() as s:
        audit.append(
            s, engine.now(), audit.Operator(staff), action, SUBJECT_TYPE, session_id, data or {}
        )
