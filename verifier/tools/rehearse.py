"""`railproof rehearse`: the live rail end to end on a disposable database, with evidence.

It migrates the database it is given, then drives the real HTTP API in-process (no socket,
no network) over the recorded Solana cassettes, with the clock pinned to when they were
recorded, exactly as `make serve` does:

    session → proof → verify → finality → dry-run → apply (and apply again) → revoke →
    a forced rollback (apply fails after the receipt insert: nothing may remain) → the
    same apply succeeding afterwards → audit chain and assurance clean

Every step is checked; the evidence JSON holds each step's request, status, verdict and the
sha256 of the canonical JSON of its response, plus the sha256 of every cassette replayed.
Exit 0 only when every step behaved; 1 when one did not; 2 when the database is refused.

Which databases are disposable (the rule, kept deliberately narrow):

- SQLite: a file inside the system temporary directory (`tempfile.gettempdir()`);
- PostgreSQL: on 127.0.0.1, ::1 or localhost, and the database name contains one of
  "rehearsal", "test", "tmp", "scratch".

Anything else — another host, another driver, an in-memory or relative SQLite path, a
PostgreSQL name without one of those words — is treated as production-like and refused
unless `--i-understand-this-is-not-production` is given. A database that already holds
payment sessions is refused in every case: a rehearsal never writes next to real data.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from rails.base import canonical_json
from rails.cassette import CassetteTransport
from verifier.core.config import REPO_FIXTURES

DISPOSABLE_WORDS = ("rehearsal", "test", "tmp", "scratch")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEMO_CASSETTE = Path("solana") / "generated" / "demo_payment.json"
ROLLBACK_CASSETTE = Path("solana") / "generated" / "usdc_reference_memo.json"
SERVICE_TOKEN = "rehearsal-service-" + uuid.uuid4().hex
STAFF_TOKENS = {
    "rehearsal-staff-" + uuid.uuid4().hex: "rehearsal-operator",
    "rehearsal-staff-" + uuid.uuid4().hex: "rehearsal-approver",
}
OWNER = "rehearsal-owner"
OPERATOR = {"incident_id": "REHEARSAL", "operator_reason": "pre-production rehearsal"}


class Refusal(Exception):
    """The database is not one a rehearsal may write to (exit 2)."""


def disposable_reason(url: str) -> str | None:
    """None when `url` is disposable by the rule above, else why it is production-like."""
    try:
        u = make_url(url)
    except Exception:
        return "not a database URL"
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            return "an in-memory SQLite database cannot be migrated and then reopened"
        path = Path(u.database)
        if not path.is_absolute():
            return "a relative SQLite path (use a file inside the temporary directory)"
        tmp = Path(tempfile.gettempdir()).resolve()
        if not path.resolve().is_relative_to(tmp):
            return f"a SQLite file outside the temporary directory {tmp}"
        return None
    if backend == "postgresql":
        if (u.host or "") not in LOCAL_HOSTS:
            return f"PostgreSQL on {u.host or 'a socket'}, not on 127.0.0.1/localhost"
        name = (u.database or "").lower()
        if not any(w in name for w in DISPOSABLE_WORDS):
            return (
                f"PostgreSQL database {u.database!r} has none of "
                f"{', '.join(DISPOSABLE_WORDS)} in its name"
            )
        return None
    return f"a {backend} database"


def check_target(url: str, confirmed: bool) -> None:
    reason = disposable_reason(url)
    if reason is not None and not confirmed:
        raise Refusal(
            f"{_safe(url)} looks production-like ({reason}); rehearse on a "
            "disposable database, or pass --i-understand-this-is-not-production"
        )


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    request: dict[str, Any] | None = None
    status: int | None = None
    response: Any = None
    response_sha256: str | None = None


@dataclass
class Rehearsal:
    url: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def add(
        self,
        name: str,
        ok: bool,
        detail: str,
        resp: Any = None,
        request: dict[str, Any] | None = None,
    ) -> bool:
        step = Step(name, bool(ok), detail, request)
        if resp is not None:
            step.status = resp.status_code
            try:
                step.response = resp.json()
            except ValueError:
                step.response = resp.text
            step.response_sha256 = _sha256_json(step.response)
        self.steps.append(step)
        return step.ok


def run_rehearsal(
    database_url: str, out: Path, confirmed: bool = False, echo: Callable[[str], None] = print
) -> int:
    """Run the rehearsal; returns the exit code (0 all steps behaved, 1 not, 2 refused)."""
    try:
        check_target(database_url, confirmed)
        _refuse_non_empty(database_url)
    except Refusal as e:
        echo(f"error: {e}")
        return 2
    reh = Rehearsal(database_url)
    started = datetime.now(UTC)
    cassettes = [REPO_FIXTURES / DEMO_CASSETTE, REPO_FIXTURES / ROLLBACK_CASSETTE]
    try:
        _run(reh, database_url, cassettes)
    except Exception as e:  # a crash is a failed rehearsal, on the record, not a traceback
        reh.add("unexpected_error", False, f"{type(e).__name__}: {e}")
    evidence = {
        "railproof_rehearsal": 1,
        "database": _safe(database_url),
        "confirmed_not_production": confirmed,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "ok": reh.ok,
        "cassettes": [
            {
                "path": str(p.relative_to(REPO_FIXTURES)),
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
            for p in cassettes
            if p.is_file()
        ],
        "steps": [s.__dict__ for s in reh.steps],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(evidence, indent=2, sort_keys=True) + "\n")
    for s in reh.steps:
        echo(f"{'ok  ' if s.ok else 'FAIL'} {s.name}: {s.detail}")
    echo(f"rehearsal {'passed' if reh.ok else 'FAILED'}; evidence in {out}")
    return 0 if reh.ok else 1


def _refuse_non_empty(url: str) -> None:
    from verifier.storage.db import make_engine
    from verifier.storage.models import PaymentSession

    eng = make_engine(url)
    try:
        if not inspect(eng).has_table(PaymentSession.__tablename__):
            return
        with eng.connect() as c:
            n = c.execute(select(func.count()).select_from(PaymentSession)).scalar_one()
    except Exception as e:
        raise Refusal(f"cannot open {_safe(url)}: {type(e).__name__}") from None
    finally:
        eng.dispose()
    if n:
        raise Refusal(
            f"{_safe(url)} already holds {n} payment sessions; a rehearsal runs "
            "on an empty disposable database only"
        )


def _run(reh: Rehearsal, url: str, cassettes: list[Path]) -> None:
    from fastapi.testclient import TestClient

    from verifier.core.config import Settings
    from verifier.core.engine import Engine
    from verifier.http.api import create_app
    from verifier.http.ratelimit import RateLimiter
    from verifier.storage.db import current_revision, head_revision, upgrade

    upgrade(url)
    demo_doc = json.loads(cassettes[0].read_text())
    demo = demo_doc["demo"]
    second = json.loads(cassettes[1].read_text())
    settings = Settings(
        database_url=url,
        chain="cassette",
        cassette_dir=REPO_FIXTURES,
        clock=datetime.fromisoformat(demo["clock"].replace("Z", "+00:00")),
        service_tokens={SERVICE_TOKEN: [OWNER]},
        staff_tokens=STAFF_TOKENS,
        apply_rail_allowlist=["solana_usdc"],
        live_apply=False,
        auto_apply=False,
        env={},
    )
    engine = Engine(settings)
    try:
        rev, head = current_revision(engine.db.engine), head_revision(url)
        if not reh.add("migrate", rev == head, f"schema at {rev} (head {head})"):
            return
        engine.ensure_rail_states()
        # Exactly the recorded calls listed in the evidence answer for the network.
        engine.chains.set_transport(
            "solana-mainnet", CassetteTransport.from_files(cassettes, "solana-mainnet")
        )
        app = create_app(engine)
        app.state.rate_limiter = RateLimiter(rate=0)
        with TestClient(app, raise_server_exceptions=False) as client:
            _steps(reh, client, engine, demo, second)
    finally:
        engine.db.dispose()


def _steps(
    reh: Rehearsal, client: Any, engine: Any, demo: dict[str, Any], second: dict[str, Any]
) -> None:
    svc = {"Authorization": "Bearer " + SERVICE_TOKEN}
    staff = {"Authorization": "Bearer " + next(iter(STAFF_TOKENS))}

    def call(
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        params: dict[str, str] | None = None,
    ):
        kw: dict[str, Any] = {"headers": headers}
        if body is not None:
            kw["json"] = body
        if params:
            kw["params"] = params
        return client.request(method, path, **kw), {"method": method, "path": path}

    # 1. session, for the recorded demo payment
    r, req = call(
        "POST",
        "/v1/payment-sessions",
        {**svc, "Idempotency-Key": "rehearsal-s1"},
        {
            "owner_id": OWNER,
            "rail_id": "solana_usdc",
            "access_product_id": "rehearsal-pro",
            "amount": demo["amount"],
            "recipient": demo["recipient"],
            "reference": demo["reference"],
            "memo": demo["memo"],
        },
    )
    sess = r.json()
    if not reh.add(
        "session",
        r.status_code == 201 and sess.get("status") == "open",
        f"HTTP {r.status_code}, session {sess.get('id')}",
        r,
        req,
    ):
        return

    # 2. proof: the payer's signature
    r, req = call(
        "POST",
        "/v1/proofs",
        {**svc, "Idempotency-Key": "rehearsal-p1"},
        {"session_id": sess["id"], "proof": demo["signature"]},
    )
    proof = r.json()
    if not reh.add(
        "proof",
        r.status_code == 201 and proof.get("status") == "verified",
        f"HTTP {r.status_code}, status {proof.get('status')} "
        f"{proof.get('failure_code') or ''}".strip(),
        r,
        req,
    ):
        return
    pid = proof["id"]

    # 3. verify: the attempt says what the chain said
    r, req = call("GET", f"/v1/admin/proofs/{pid}/attempts", staff)
    atts = r.json() if r.status_code == 200 else []
    last = atts[-1] if atts else {}
    obs = last.get("observed") or {}
    reh.add(
        "verify",
        last.get("status") == "verified"
        and last.get("source") == "cassette"
        and str(obs.get("amount")) == str(demo["amount"])
        and obs.get("recipient") == demo["recipient"],
        f"{len(atts)} attempt(s); observed amount {obs.get('amount')} to {obs.get('recipient')}",
        r,
        req,
    )

    # 4. finality: finalized settlement evidence
    r, req = call("GET", f"/v1/admin/proofs/{pid}/settlement-evidence", staff)
    evs = r.json() if r.status_code == 200 else []
    ev = evs[-1] if evs else {}
    reh.add(
        "finality",
        ev.get("finality") == "finalized" and ev.get("is_final") is True and not ev.get("reorged"),
        f"{ev.get('finality')} at slot {ev.get('slot')}",
        r,
        req,
    )

    # 5. dry-run: every check passes, nothing changes
    r, req = call("POST", f"/v1/admin/proofs/{pid}/dry-run-apply", staff, OPERATOR)
    rep = r.json()
    failed = [c["name"] for c in rep.get("checks", []) if not c["passed"]]
    reh.add(
        "dry_run",
        r.status_code == 200 and rep.get("would_apply") is True and not failed,
        "would apply" if not failed else "blocked by " + ", ".join(failed),
        r,
        req,
    )

    # 6. apply, then the entitlement is active; apply again changes nothing
    r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **OPERATOR})
    applied = r.json()
    if not reh.add(
        "apply",
        r.status_code == 200
        and applied.get("applied") is True
        and applied.get("already_applied") is False,
        f"receipt {applied.get('receipt_id')}, entitlement {applied.get('entitlement_id')}",
        r,
        req,
    ):
        return
    r, req = call("GET", "/v1/entitlements", svc, params={"owner_id": OWNER})
    ents = {e["id"]: e for e in (r.json() if r.status_code == 200 else [])}
    ent = ents.get(applied["entitlement_id"], {})
    reh.add(
        "entitlement_active",
        ent.get("status") == "active" and ent.get("receipt_id") == applied["receipt_id"],
        f"status {ent.get('status')}",
        r,
        req,
    )
    r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **OPERATOR})
    again = r.json()
    reh.add(
        "apply_idempotent",
        r.status_code == 200
        and again.get("already_applied") is True
        and again.get("receipt_id") == applied["receipt_id"],
        "second apply changed nothing",
        r,
        req,
    )

    # 7. revoke
    r, req = call(
        "POST",
        f"/v1/admin/entitlements/{applied['entitlement_id']}/revoke",
        staff,
        {"confirm": True, **OPERATOR},
    )
    reh.add(
        "revoke",
        r.status_code == 200 and r.json().get("status") == "revoked",
        f"HTTP {r.status_code}, status {r.json().get('status')}",
        r,
        req,
    )

    # 8. forced rollback: a second payment whose apply fails after the receipt insert
    _forced_rollback(reh, call, engine, svc, staff, second)

    # 9. the stored record holds together
    r, req = call("GET", "/v1/admin/audit/verify", staff)
    chain = r.json()
    reh.add(
        "audit_chain",
        r.status_code == 200 and chain.get("ok") is True,
        f"{chain.get('events')} events, {chain.get('message')}",
        r,
        req,
    )
    r, req = call("GET", "/v1/admin/assurance", staff)
    summary = r.json().get("summary", {})
    reh.add(
        "assurance",
        r.status_code == 200 and summary.get("status") == "ok",
        f"{summary.get('status')} score {summary.get('score')}",
        r,
        req,
    )


def _forced_rollback(
    reh: Rehearsal,
    call: Callable,
    engine: Any,
    svc: dict[str, str],
    staff: dict[str, str],
    second: dict[str, Any],
) -> None:
    from verifier.storage.models import (
        AuditEvent,
        Entitlement,
        PaymentSession,
        Receipt,
    )

    exp = second["expect"]
    sig = second["calls"][0]["params"][0]
    r, req = call(
        "POST",
        "/v1/payment-sessions",
        {**svc, "Idempotency-Key": "rehearsal-s2"},
        {
            "owner_id": OWNER,
            "rail_id": "solana_usdc",
            "access_product_id": "rehearsal-rollback",
            "amount": exp["amount"],
            "recipient": exp["recipient"],
            "reference": exp["reference"],
            "memo": exp["memo"],
        },
    )
    sess = r.json()
    if not reh.add("rollback_session", r.status_code == 201, f"session {sess.get('id')}", r, req):
        return
    r, req = call(
        "POST",
        "/v1/proofs",
        {**svc, "Idempotency-Key": "rehearsal-p2"},
        {"session_id": sess["id"], "proof": sig},
    )
    proof = r.json()
    if not reh.add(
        "rollback_proof",
        r.status_code == 201 and proof.get("status") == "verified",
        f"status {proof.get('status')}",
        r,
        req,
    ):
        return
    pid = proof["id"]
    with engine.db.tx() as s:
        audit_before = s.scalar(select(func.count()).select_from(AuditEvent))
    engine.fail_after_receipt_insert = True
    try:
        r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **OPERATOR})
    finally:
        engine.fail_after_receipt_insert = False
    with engine.db.tx() as s:
        receipt = s.scalar(select(Receipt.id).where(Receipt.proof_id == pid))
        ent = s.scalar(select(Entitlement).where(Entitlement.session_id == sess["id"]))
        ps = s.get(PaymentSession, sess["id"])
        audit_after = s.scalar(select(func.count()).select_from(AuditEvent))
        state = {
            "receipt": receipt,
            "entitlement": ent.status if ent else None,
            "session": ps.status,
            "audit_rows_added": audit_after - audit_before,
        }
    body_ok = r.status_code == 500 and "Traceback" not in r.text
    reh.add(
        "forced_rollback",
        body_ok
        and receipt is None
        and state["entitlement"] == "pending"
        and state["session"] == "open"
        and state["audit_rows_added"] == 0,
        "apply failed after the receipt insert and left " + json.dumps(state),
        r,
        req,
    )
    r, req = call("POST", f"/v1/admin/proofs/{pid}/apply", staff, {"confirm": True, **OPERATOR})
    reh.add(
        "apply_after_rollback",
        r.status_code == 200
        and r.json().get("applied") is True
        and r.json().get("already_applied") is False,
        "the same apply succeeds once the fault is gone",
        r,
        req,
    )
