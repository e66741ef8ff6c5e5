"""`railproof demo`: one Solana USDC payment from session to active entitlement, against a
running `make serve` (cassette chain, offline), through the public API only. It switches no
check off: the payment is a recorded, finalized transfer that satisfies every gate."""

from __future__ import annotations

import json
import os
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


def demo_payment() -> dict[str, Any]:
    base = Path(os.environ.get("RAILPROOF_CASSETTE_DIR") or DEFAULT_CASSETTE_DIR)
    path = base / DEMO_CASSETTE
    if not path.is_file():  # a cassette directory of one's own: the demo payment is ours
        path = DEFAULT_CASSETTE_DIR / DEMO_CASSETTE
    return json.loads(path.read_text())["demo"]


def _step(n: int, text: str) -> None:
    console.print(f"\n[bold]{n}. {text}[/bold]")


def _show(r: httpx.Response) -> Any:
    body = r.json()
    console.print(f"   HTTP {r.status_code}: " + json.dumps(body)[:600])
    return body


def run_demo(base_url: str | None = None) -> int:
    base = (base_url or default_api_base_url()).rstrip("/")
    svc = {
        "Authorization": "Bearer "
        + os.environ.get("RAILPROOF_DEMO_SERVICE_TOKEN", DEMO_SERVICE_TOKEN)
    }
    staff = {"Authorization": "Bearer " + os.environ.get("RAILPROOF_STAFF_TOKEN", DEMO_STAFF_TOKEN)}
    pay = demo_payment()
    c = httpx.Client(base_url=base, timeout=30.0)
    try:
        c.get("/healthz").raise_for_status()
    except httpx.HTTPError as e:
        console.print(
            f"[red]cannot reach {base} ({type(e).__name__}): start the service with "
            "`make serve` first[/red]"
        )
        return 2

    _step(
        1, "open a payment session: 25 USDC on solana_usdc, owner demo-owner, product pro-monthly"
    )
    r = c.post(
        "/v1/payment-sessions",
        headers={**svc, "Idempotency-Key": "demo-session-1"},
        json={
            "owner_id": "demo-owner",
            "rail_id": "solana_usdc",
            "access_product_id": "pro-monthly",
            "amount": pay["amount"],
            "reference": pay["reference"],
            "memo": pay["memo"],
        },
    )
    sess = _show(r)
    if r.status_code == 409 and sess["error"]["code"] == "reference_in_use":
        console.print(
            "   the recorded demo transfer already backs a session: one transfer pays one "
            "session. Start again with a fresh database: `make clean serve`."
        )
        return 1
    if r.status_code != 201:
        return 1
    console.print(f"   pay with: {sess['payment_requirements']['url']}")

    _step(2, "submit the payer's transaction signature as proof")
    r = c.post(
        "/v1/proofs",
        headers={**svc, "Idempotency-Key": "demo-proof-1"},
        json={"session_id": sess["id"], "proof": pay["signature"]},
    )
    proof = _show(r)
    if proof.get("status") != "verified":
        return 1

    _step(3, "the same proof again: idempotent, the same proof comes back (200)")
    _show(
        c.post(
            "/v1/proofs", headers=svc, json={"session_id": sess["id"], "proof": pay["signature"]}
        )
    )

    _step(4, "staff: dry-run apply (what would apply do?)")
    rep = c.post(
        f"/v1/admin/proofs/{proof['id']}/dry-run-apply",
        headers=staff,
        json={"incident_id": "DEMO-1", "operator_reason": "demo walk-through"},
    ).json()
    t = Table(title=f"would_apply={rep['would_apply']}")
    for col in ("check", "passed", "detail"):
        t.add_column(col)
    for ch in rep["checks"]:
        t.add_row(ch["name"], "yes" if ch["passed"] else "NO", ch["detail"])
    console.print(t)
    if not rep["would_apply"]:
        return 1

    _step(5, "staff: apply (receipt + entitlement in one transaction)")
    applied = _show(
        c.post(
            f"/v1/admin/proofs/{proof['id']}/apply",
            headers=staff,
            json={"confirm": True, "incident_id": "DEMO-1", "operator_reason": "demo walk-through"},
        )
    )

    _step(6, "the owner's entitlements")
    ents = _show(c.get("/v1/entitlements", headers=svc, params={"owner_id": "demo-owner"}))

    _step(7, "apply again: idempotent, nothing changes")
    again = _show(
        c.post(
            f"/v1/admin/proofs/{proof['id']}/apply",
            headers=staff,
            json={"confirm": True, "incident_id": "DEMO-1", "operator_reason": "demo walk-through"},
        )
    )
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
