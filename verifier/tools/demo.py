"""`railproof demo`: one Solana USDC payment from session to active entitlement, against a
running `make serve` (cassette chain, offline), through the public API only. It switches no
check off: the payment is a recorded, finalized transfer that satisfies every gate."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from verifier.core.config import DEFAULT_CASSETTE_DIR, default_api_base_url

DEMO_CASSETTE = "solana/generated/demo_payment.json"
DEMO_SERVICE_TOKEN = "demo-service-token"
DEMO_STAFF_TOKEN = "demo-staff-token"
console = Console()
errors = Console(stderr=True)


def demo_payment() -> dict[str, Any]:
    base = Path(os.environ.get("RAILPROOF_CASSETTE_DIR") or DEFAULT_CASSETTE_DIR)
    path = base / DEMO_CASSETTE
    if not path.is_file():  # a cassette directory of one's own: the demo payment is ours
        path = DEFAULT_CASSETTE_DIR / DEMO_CASSETTE
    return json.loads(path.read_text())["demo"]


class _Stop(Exception):
    """The walk-through cannot go on: `message` says why; `code` is the exit code (the CLI's
    convention: 1 the server refused, 2 usage or connection)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _token(var: str, default: str) -> str:
    # SECURITY: httpx refuses a header it cannot send by quoting it whole, the bearer token
    # included: the token is checked here and never printed.
    token = os.environ.get(var, default)
    if not (token and token.isascii() and token.isprintable() and token == token.strip()):
        raise _Stop(
            f"{var}: the token must be printable ASCII with no spaces or line breaks around it "
            "(a token read from a file keeps its newline)",
            2,
        )
    return token


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold]{n}. {text}[/bold]")


class _Api:
    """The API as the demo calls it: every answer's status is checked before its body is read."""

    def __init__(self, base: str):
        self.base = base
        try:
            self.http = httpx.Client(base_url=base, timeout=30.0)
        except httpx.InvalidURL as e:
            raise _Stop(f"--base-url: not a usable URL: {base!r} ({e})", 2) from None

    def call(
        self,
        method: str,
        path: str,
        token: tuple[str, str],
        expect: Collection[int],
        refused: Callable[[int, Any], str | None] | None = None,
        **kw: Any,
    ) -> Any:
        """The JSON answer of one request, shown; _Stop unless its status is in `expect`
        (`refused` may word a refusal it knows). `token`: (the variable it came from, it)."""
        var, value = token
        headers = {"Authorization": f"Bearer {value}", **kw.pop("headers", {})}
        try:
            r = self.http.request(method, path, headers=headers, **kw)
        except httpx.InvalidURL as e:
            raise _Stop(f"--base-url: not a usable URL: {self.base!r} ({e})", 2) from None
        except httpx.HTTPError as e:
            raise _Stop(
                f"{method} {path}: lost the API at {self.base} ({type(e).__name__})", 2
            ) from None
        try:
            body = r.json()
        except ValueError:
            raise _Stop(
                f"{method} {path}: HTTP {r.status_code}, and the answer is not JSON", 1
            ) from None
        console.print(f"   HTTP {r.status_code}: " + json.dumps(body)[:600])
        if r.status_code in expect:
            return body
        said = refused(r.status_code, body) if refused else None
        if said is None and r.status_code in (401, 403):
            said = f"the API refused the token from {var} (HTTP {r.status_code})"
        if said is None:
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            said = f"{method} {path}: HTTP {r.status_code}" + (f" {code}" if code else "")
        raise _Stop(said, 1)


def _reference_in_use(status: int, body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    if status == 409 and isinstance(error, dict) and error.get("code") == "reference_in_use":
        return (
            "the recorded demo transfer already backs a session: one transfer pays one "
            "session. Start again with a fresh database: `make clean serve`."
        )
    return None


def run_demo(base_url: str | None = None) -> int:
    """The walk-through; its exit code: 0 an active entitlement, 1 the API refused a step or
    the demo did not reach one, 2 bad tokens or base URL, or the API is unreachable."""
    try:
        return _walk((base_url or default_api_base_url()).rstrip("/"))
    except _Stop as stop:
        errors.print(f"error: {stop}", markup=False, highlight=False, soft_wrap=True)
        return stop.code


def _walk(base: str) -> int:
    svc = (
        "RAILPROOF_DEMO_SERVICE_TOKEN",
        _token("RAILPROOF_DEMO_SERVICE_TOKEN", DEMO_SERVICE_TOKEN),
    )
    staff = ("RAILPROOF_STAFF_TOKEN", _token("RAILPROOF_STAFF_TOKEN", DEMO_STAFF_TOKEN))
    pay = demo_payment()
    api = _Api(base)
    try:
        api.http.get("/healthz").raise_for_status()
    except httpx.InvalidURL as e:
        raise _Stop(f"--base-url: not a usable URL: {base!r} ({e})", 2) from None
    except httpx.HTTPError as e:
        raise _Stop(
            f"cannot reach {base} ({type(e).__name__}): start the service with `make serve` first",
            2,
        ) from None

    _step(
        1, "open a payment session: 25 USDC on solana_usdc, owner demo-owner, product pro-monthly"
    )
    sess = api.call(
        "POST",
        "/v1/payment-sessions",
        svc,
        {201},
        _reference_in_use,
        headers={"Idempotency-Key": "demo-session-1"},
        json={
            "owner_id": "demo-owner",
            "rail_id": "solana_usdc",
            "access_product_id": "pro-monthly",
            "amount": pay["amount"],
            "reference": pay["reference"],
            "memo": pay["memo"],
        },
    )
    console.print(f"   pay with: {sess['payment_requirements']['url']}")

    _step(2, "submit the payer's transaction signature as proof")
    proof = api.call(
        "POST",
        "/v1/proofs",
        svc,
        {200, 201},
        headers={"Idempotency-Key": "demo-proof-1"},
        json={"session_id": sess["id"], "proof": pay["signature"]},
    )
    if proof.get("status") != "verified":
        raise _Stop(f"the proof is {proof.get('status')} ({proof.get('failure_code')})", 1)

    _step(3, "the same proof again: idempotent, the same proof comes back (200)")
    proof_again = {"session_id": sess["id"], "proof": pay["signature"]}
    api.call("POST", "/v1/proofs", svc, {200}, json=proof_again)

    context = {"incident_id": "DEMO-1", "operator_reason": "demo walk-through"}
    _step(4, "staff: dry-run apply (what would apply do?)")
    rep = api.call(
        "POST", f"/v1/admin/proofs/{proof['id']}/dry-run-apply", staff, {200}, json=context
    )
    t = Table(title=f"would_apply={rep['would_apply']}")
    for col in ("check", "passed", "detail"):
        t.add_column(col)
    for ch in rep["checks"]:
        t.add_row(ch["name"], "yes" if ch["passed"] else "NO", ch["detail"])
    console.print(t)
    if not rep["would_apply"]:
        return 1

    apply = {"confirm": True, **context}
    _step(5, "staff: apply (receipt + entitlement in one transaction)")
    applied = api.call("POST", f"/v1/admin/proofs/{proof['id']}/apply", staff, {200}, json=apply)

    _step(6, "the owner's entitlements")
    ents = api.call("GET", "/v1/entitlements", svc, {200}, params={"owner_id": "demo-owner"})

    _step(7, "apply again: idempotent, nothing changes")
    again = api.call("POST", f"/v1/admin/proofs/{proof['id']}/apply", staff, {200}, json=apply)
    ok = (
        applied.get("applied")
        and again.get("already_applied")
        and any(e["status"] == "active" and e["receipt_id"] == applied["receipt_id"] for e in ents)
    )
    console.print(
        "\n[green]demo complete: entitlement active[/green]"
        if ok
        else "\n[red]demo did not reach an active entitlement[/red]"
    )
    return 0 if ok else 1
