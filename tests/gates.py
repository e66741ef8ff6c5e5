"""Passing release-gate evidence for a rail, for tests that enable production through the
two-person approval (which refuses without it)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import STAFF_TOKEN, auth
from verifier.core.metrics import alert_rules
from verifier.services.release_gates import REHEARSAL_STEPS

OPS = {"incident_id": "INC-GATE", "operator_reason": "release gates before enablement"}


def rehearsal_text(ok: bool, finished_at: datetime | None = None) -> str:
    """A `railproof rehearse` evidence file (the fields release gates read)."""
    steps = [
        {"name": name, "ok": ok or name != "apply", "detail": "ok" if ok else "409 apply_blocked"}
        for name in REHEARSAL_STEPS
    ]
    # Wall-clock times, as `railproof rehearse` writes them: a rehearsal counts for the
    # evidence's validity from when it finished.
    finished = datetime.now(UTC) if finished_at is None else finished_at
    doc = {
        "railproof_rehearsal": 1,
        "ok": ok,
        "started_at": (finished - timedelta(seconds=5)).isoformat(),
        "finished_at": finished.isoformat(),
        "steps": steps,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _hashed(text: str) -> dict[str, str]:
    return {"evidence": text, "evidence_sha256": hashlib.sha256(text.encode()).hexdigest()}


def gate_bodies() -> dict[str, dict[str, Any]]:
    return {
        "kill_switch_drill": {"confirm": True},
        "e2e_rehearsal": _hashed(rehearsal_text(ok=True)),
        "alert_rule_integrity": _hashed(json.dumps(alert_rules(), indent=2)),
        "rate_limit_review": {"note": "reviewed"},
        "provider_alerting_review": {"note": "reviewed"},
    }


def pass_release_gates(client: Any, rail_id: str, token: str = STAFF_TOKEN) -> None:
    """Record passing evidence for every gate of `rail_id` through the staff API (a
    TestClient, or an httpx.Client with a base_url)."""
    for gate, body in gate_bodies().items():
        r = client.post(
            f"/v1/admin/rails/{rail_id}/release-gates/{gate}/evidence",
            headers=auth(token),
            json={**OPS, **body},
        )
        assert r.status_code == 201 and r.json()["outcome"] == "passed", (gate, r.text)


def pass_release_gates_in(engine: Any, rail_id: str, actor: str = "ops1") -> None:
    """The same through the service, for tests without an HTTP client."""
    from verifier.services import audit, release_gates

    op = audit.Operator(actor, OPS["incident_id"], OPS["operator_reason"])
    for gate, body in gate_bodies().items():
        given = release_gates.EvidenceIn(
            body.get("evidence"), body.get("evidence_sha256"), body.get("note")
        )
        rec = release_gates.record(engine, rail_id, gate, op, given, confirm=True)
        assert rec["outcome"] == "passed", (gate, rec)
