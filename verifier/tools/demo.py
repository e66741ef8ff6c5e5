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

from verifier.cli.ops import shown_url, unusable_url
from verifier.core.config import (
    BEARER_TOKEN_RULE,
    DEFAULT_CASSETTE_DIR,
    bearer_token_ok,
    default_api_base_url,
)

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
    # SECURITY: checked before it is sent, never printed (bearer_token_ok says why).
    token = os.environ.get(var, default)
    if not bearer_token_ok(token):
        raise _Stop(f"{var}: {BEARER_TOKEN_RULE}", 2)
    return token


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold]{n}. {text}[/bold]")


class _Api:
    """The API as the demo calls it: every answer's status is checked before its body is read.
    `source` names where the base URL came from; messages show it as the operator commands do
    (shown_url: never its user information or query)."""

    def __init__(self, base: str, source: str):
        self.base, self.source, self.shown = base, source, shown_url(base)
        try:
            self.http = httpx.Client(base_url=base, timeout=30.0)
        except httpx.InvalidURL as e:
            raise _Stop(unusable_url(source, base, e), 2) from None

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
            raise _Stop(unusable_url(self.source, self.base, e), 2) from None
        except httpx.HTTPError as e:
            raise _Stop(
                f"{method} {path}: lost the API at {self.shown} ({type(e).__name__}); is "
                "`make serve` still running?",
                2,
            ) from None
        try:
            body = r.json()
        except ValueError:
            raise _Stop(
                f"{method} {path}: HTTP {r.status_code}, and the answer is not JSON: is "
                f"{self.shown} the railproof API (`make serve`)?",
                1,
            ) from None
        console.print(f"   HTTP {r.status_code}: " + json.dumps(body)[:600])
        if r.status_code in expect:
            return body
        said = refused(r.status_code, body) if refused else None
        if said is None and r.status_code in (401, 403):
            said = (
                f"the API refused the token from {var} (HTTP {r.status_code}): set it to a "
                "token of this deployment (`make serve` prints them)"
            )
        if said is None:
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            said = (
                f"{method} {path}: HTTP {r.status_code}"
                + (f" {code}" if code else "")
                + (f": {message}" if message else "")
                + "; the demo needs the deployment `make serve` starts"
            )
        raise _Stop(said, 1)


# What a second run on the same database is told, whichever step notices it (README: run the
# demo again on a fresh database).
ALREADY_RUN = (
    "the recorded demo transfer already backs a session: one transfer pays one session. "
    "Run the demo again on a fresh database: `make clean serve`."
)


def _reference_in_use(status: int, body: Any) -> str | None:
    # Known by its code, whatever the status (the API answers it 422).
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "reference_in_use":
        return ALREADY_RUN
    return None


def _would_not_apply(report: dict[str, Any]) -> str:
    """Why the dry run says apply would not apply the proof, and what to do."""
    if report.get("already_applied"):
        # The same Idempotency-Keys replayed the first run's session and proof.
        return ALREADY_RUN
    failed = [c.get("name") for c in report.get("checks", []) if not c.get("passed")]
    return (
        f"the dry run says apply would refuse the proof (failed: {', '.join(failed) or 'none'}; "
        "see the report above): the demo needs the deployment `make serve` starts (recorded "
        "chains, its clock, treasury and allowlist)"
    )


def run_demo(base_url: str | None = None) -> int:
    """The walk-through; its exit code: 0 an active entitlement, 1 the API refused a step or
    the demo did not reach one, 2 bad tokens or base URL, or the API is unreachable."""
    if base_url:
        source = "--base-url"
    elif os.environ.get("RAILPROOF_API_BASE_URL"):
        source = "RAILPROOF_API_BASE_URL"
    else:
        source = "PORT"  # the loopback port `make serve` listens on
    try:
        return _walk((base_url or default_api_base_url()).rstrip("/"), source)
    except _Stop as stop:
        errors.print(f"error: {stop}", markup=False, highlight=False, soft_wrap=True)
        return stop.code


def _walk(base: str, source: str) -> int:
    svc = (
        "RAILPROOF_DEMO_SERVICE_TOKEN",
        _token("RAILPROOF_DEMO_SERVICE_TOKEN", DEMO_SERVICE_TOKEN),
    )
    staff = ("RAILPROOF_STAFF_TOKEN", _token("RAILPROOF_STAFF_TOKEN", DEMO_STAFF_TOKEN))
    pay = demo_payment()
    api = _Api(base, source)
    try:
        api.http.get("/healthz").raise_for_status()
    except httpx.InvalidURL as e:
        raise _Stop(unusable_url(source, base, e), 2) from None
    except httpx.HTTPError as e:
        raise _Stop(
            f"cannot reach {api.shown} ({type(e).__name__}), from {source}: start the service "
            "with `make serve` first",
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
        raise _Stop(
            f"the proof is {proof.get('status')} ({proof.get('failure_code')}), not verified: "
            "the demo replays the recorded chain `make serve` starts (RAILPROOF_CHAIN=cassette)",
            1,
        )

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
        raise _Stop(_would_not_apply(rep), 1)

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
    if not ok:
        raise _Stop(
            "the demo did not reach an active entitlement (apply "
            f"{'applied' if applied.get('applied') else 'did not apply'}, the second apply "
            f"{'was' if again.get('already_applied') else 'was not'} idempotent; see the "
            "answers above): the demo needs the deployment `make serve` starts",
            1,
        )
    console.print("\n[green]demo complete: entitlement active[/green]")
    return 0
