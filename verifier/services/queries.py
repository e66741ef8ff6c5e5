"""Reads the HTTP layer needs that no other service owns: an owner's entitlements, the staff
reads of entitlements, receipts and approvals, the audit trail by subject or incident and its
chain check, whether a rail is paused (shown on session and proof reads), the record of a
staff read made under an incident, and, before serving, whether the database schema is
migrated (and, for /readyz, whether the deployment could serve now).

Routes never open a transaction or name a table (tests/test_architecture.py forbids
verifier.http from importing storage or SQLAlchemy); they call these. The database error
class is re-exported for the same reason: the app maps a busy database to 503 without
importing SQLAlchemy itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from sqlalchemy.exc import DBAPIError as DatabaseError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from registry.catalog import Stage
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, EngineError, NotFound
from verifier.core.timeutil import iso
from verifier.services import audit
from verifier.services.rails_admin import approval_view
from verifier.services.views import entitlement_view, receipt_view
from verifier.storage.db import (
    UPGRADE_HINT,
    current_revision,
    head_revision,
    is_busy,
    is_unavailable,
    require_migrated,
)
from verifier.storage.models import ApprovalStatus, AuditEvent
from verifier.storage.repo import rail_state as rail_state_repo
from verifier.storage.repo import staff_reads

__all__ = [
    "DatabaseError",
    "PoolTimeout",
    "audit_chain",
    "audit_events",
    "database_busy",
    "database_unavailable",
    "entitlements_of",
    "get_entitlement",
    "list_approvals",
    "list_entitlements",
    "list_receipts",
    "paused_rails",
    "rail_paused",
    "readiness_checks",
    "record_staff_read",
    "schema_is_current",
]


def entitlements_of(
    engine: Engine, owner_id: str, limit: int, after: str | None = None
) -> list[dict[str, Any]]:
    """The owner's entitlements, oldest first, a page of at most `limit` after the entitlement
    `after` (the previous page's last), in the order they were committed: one committed after
    a page was read comes after its last (staff_reads.entitlements_of_owner). The caller has
    checked the owner is theirs."""
    with engine.db.tx() as s:
        last = None
        if after is not None:
            last = staff_reads.entitlement(s, after)
            # SECURITY: another owner's entitlement is no page mark: the same 404 as none.
            if last is None or last.owner_id != owner_id:
                raise NotFound(
                    "entitlement_not_found",
                    f"after: no entitlement {after!r} of this owner",
                    field="after",
                )
        got = staff_reads.entitlements_of_owner(s, owner_id, limit, last)
        return [entitlement_view(e) for e in got]


def list_entitlements(engine: Engine, owner_id: str, limit: int) -> list[dict[str, Any]]:
    """Staff read: one owner's entitlements, oldest first."""
    with engine.db.tx() as s:
        return [entitlement_view(e) for e in staff_reads.entitlements_of_owner(s, owner_id, limit)]


def get_entitlement(engine: Engine, entitlement_id: str) -> dict[str, Any]:
    """Staff read: one entitlement with when it was made and the receipt that activated it."""
    with engine.db.tx() as s:
        e = staff_reads.entitlement(s, entitlement_id)
        if e is None:
            raise NotFound("entitlement_not_found", f"no entitlement {entitlement_id!r}")
        r = staff_reads.receipt(s, e.receipt_id) if e.receipt_id else None
        return {
            **entitlement_view(e),
            "created_at": iso(e.created_at),
            "receipt": receipt_view(r) if r is not None else None,
        }


def list_receipts(
    engine: Engine, owner_id: str | None, rail_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Staff read: receipts, newest first, of one owner and/or one rail."""
    if rail_id is not None and not engine.has_rail(rail_id):
        raise NotFound("rail_not_registered", f"rail_id: no rail {rail_id!r}", field="rail_id")
    with engine.db.tx() as s:
        return [receipt_view(r) for r in staff_reads.receipts(s, owner_id, rail_id, limit)]


def approval_statuses() -> list[str]:
    return [st.value for st in ApprovalStatus]


def list_approvals(engine: Engine, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Staff read: two-person approvals, newest first, optionally in one status."""
    if status is not None and status not in approval_statuses():
        raise BadInput(
            "invalid_status",
            f"status: one of {', '.join(approval_statuses())}",
            field="status",
        )
    with engine.db.tx() as s:
        return [approval_view(a) for a in staff_reads.approvals(s, status, limit)]


def rail_paused(s: Session, rail_id: str) -> bool:
    """Whether the rail's kill switch is on, for reads that show it (a plain read: no lock,
    since nothing is written on its strength). `s` is the caller's session."""
    st = rail_state_repo.get(s, rail_id)
    return bool(st is not None and st.paused)


def paused_rails(s: Session) -> frozenset[str]:
    """The rails whose kill switch is on (one read for a list of rows)."""
    return frozenset(st.rail_id for st in rail_state_repo.all_states(s) if st.paused)


def audit_event_view(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "subject_type": e.subject_type,
        "subject_id": e.subject_id,
        "data": e.data,
        "incident_id": e.incident_id,
        "reason": e.reason,
        "hash": e.hash,
    }


def audit_events(
    engine: Engine, limit: int, subject_id: str | None = None, incident_id: str | None = None
) -> list[dict[str, Any]]:
    """The newest `limit` audit events, optionally of one subject and/or one incident, newest
    first."""
    with engine.db.tx() as s:
        return [
            audit_event_view(e) for e in staff_reads.audit_events(s, limit, subject_id, incident_id)
        ]


def audit_key_refusal(engine: Engine) -> str | None:
    """SECURITY: why the configured audit key may not append to the chain (None: it may). A
    process with another key than the chain was written with (a typo in one host's secret, a
    rotation on one process only) would break the chain with every event it appended; one
    written without a key (railproof 0.1.0) is anchored under the key first, by
    `railproof audit adopt-key`. Checked by everything that starts to write."""
    from verifier.core.config import AUDIT_CHAIN_UNKEYED, AUDIT_KEY_MISMATCH

    with engine.db.read() as s:
        state = audit.key_state(s)
    if state is audit.KeyState.fits:
        return None
    return AUDIT_CHAIN_UNKEYED if state is audit.KeyState.unkeyed else AUDIT_KEY_MISMATCH


def adopt_audit_key(
    engine: Engine, op: audit.Operator, checkpoint: Mapping[str, Any] | None = None
) -> audit.Adoption:
    """Anchor a chain written without a key (railproof 0.1.0) under the configured key, once,
    a `checkpoint` given holding (services.audit.adopt_key; audit.KeyAdoptionRefused when it
    may not)."""
    with engine.db.tx() as s:
        return audit.adopt_key(s, engine.now(), op, checkpoint)


def audit_chain(engine: Engine) -> dict[str, Any]:
    """Every link and hash of the audit chain, checked from the genesis."""
    with engine.db.read() as s:
        return audit.verify_chain(s).as_dict()


def record_staff_read(
    engine: Engine, staff: str, incident_id: str | None, reason: str | None, path: str
) -> None:
    # The one write here: operator context travels with reads too, so an inspection during
    # an incident is on the record next to the actions it led to.
    with engine.db.tx() as s:
        audit.append(
            s,
            engine.now(),
            audit.Operator(staff, incident_id, reason),
            "staff.read",
            "path",
            path[:128],
        )


def database_busy(error: BaseException) -> bool:
    """A lock or statement timeout, or no pooled connection free in time: the transaction
    rolled back or never began, so a retry is safe."""
    return isinstance(error, (DatabaseError, PoolTimeout)) and is_busy(error)


def database_unavailable(error: BaseException) -> bool:
    """The database could not be reached or dropped the connection (a restart, a failover):
    a retry is safe once it answers, but the work may have committed in part."""
    return isinstance(error, DatabaseError) and is_unavailable(error)


def schema_is_current(engine: Engine) -> None:
    """Raise, naming the command that migrates it, unless the schema is at the head revision:
    the service refuses to start on an unmigrated database."""
    require_migrated(engine.db.engine)


@cache
def _head(url: str) -> str:
    # The head revision is a fact of the installed package's migrations, not of the database.
    return head_revision(url)


def readiness_checks(engine: Engine) -> list[dict[str, Any]]:
    """What /readyz reports, each check `{"name", "ok", "detail"}`: the database answers, its
    schema is at the head revision, and with RAILPROOF_CHAIN=live every live-stage rail has
    an RPC URL configured. Nothing is sent to the chain; no URL or driver message is shown
    (the route is public), only what failed and what to do about it."""
    checks: list[dict[str, Any]] = []
    try:
        current = current_revision(engine.db.engine)
    except Exception as e:  # any failure to connect or read is "not reachable"
        checks.append(
            {"name": "database", "ok": False, "detail": f"unreachable ({type(e).__name__})"}
        )
        checks.append(
            {"name": "schema", "ok": False, "detail": "unknown: the database is unreachable"}
        )
    else:
        checks.append({"name": "database", "ok": True, "detail": "reachable"})
        head = _head(engine.db.url)
        if current == head:
            checks.append({"name": "schema", "ok": True, "detail": f"at head {head}"})
        else:
            state = "empty (never migrated)" if current is None else f"at {current}"
            checks.append(
                {
                    "name": "schema",
                    "ok": False,
                    "detail": f"{state}, head is {head}; run `{UPGRADE_HINT}`",
                }
            )
    if engine.settings.chain == "live":
        for rail_id, d in engine.catalog.rails.items():
            if d.stage is not Stage.live:
                continue
            name = f"rpc:{rail_id}"
            try:
                network = engine.rail(rail_id).network
            except EngineError as e:  # an override the catalog refuses
                checks.append({"name": name, "ok": False, "detail": e.message})
                continue
            if engine.settings.rpc_urls(network):
                checks.append(
                    {"name": name, "ok": True, "detail": f"RPC URL configured for {network}"}
                )
            else:
                var = "RAILPROOF_RPC_" + network.upper().replace("-", "_")
                checks.append(
                    {"name": name, "ok": False, "detail": f"no RPC URL for {network}: set {var}"}
                )
    return checks
