"""Small helpers shared by the gate, worker, CLI and HTTP end-to-end tests."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from rails.transport.cassette import Call, CassetteTransport
from tests.conftest import CLOCK, make_settings
from tests.fake_rail import catalog_with_fake
from verifier.core.engine import Engine
from verifier.storage.db import Database
from verifier.storage.models import (
    Approval,
    AuditEvent,
    Entitlement,
    IdempotencyClaim,
    PaymentSession,
    Proof,
    RailState,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
    new_id,
)
from verifier.storage.repo.prepared import Prepared
from verifier.storage.webhook_models import WebhookEndpoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GATE_CHECKS = [
    "proof_verified",
    "settlement_final",
    "rail_registered",
    "rail_network_current",
    "rail_not_paused",
    "rail_production_enabled",
    "rail_allowlisted",
    "live_apply_enabled",
    "receipt_creation_allowed",
    "tuple_bound",
    "transfer_not_sent_back",
    "settlement_not_another_proof",
]
TABLES = (
    RailState,
    Approval,
    PaymentSession,
    Proof,
    VerificationAttempt,
    SettlementEvidence,
    Receipt,
    Entitlement,
    AuditEvent,
    IdempotencyClaim,
)


# The session the HTTP tests open for alice on the fake live rail (copy it before changing it).
FAKE_SESSION: dict[str, Any] = {
    "owner_id": "alice",
    "rail_id": "fake_live",
    "access_product_id": "pro",
    "amount": 1500000,
    "recipient": "fatreasury",
}


def cassette_engine(db_url: str, clock=CLOCK, **kw: Any) -> Engine:
    """An engine replaying the repository's recorded chains (plus the fake rails)."""
    e = Engine(
        make_settings(db_url, chain="cassette", cassette_dir=FIXTURES, clock=clock, **kw),
        catalog=catalog_with_fake(),
    )
    e.ensure_rail_states()
    return e


def cassette_expect(path: Path) -> dict[str, Any]:
    """What a generated cassette's payment is (recipient, amount, its reference key...)."""
    doc = json.loads(Path(path).read_text())
    return doc.get("expect") or doc.get("demo") or {}


def advance(engine: Engine, seconds: float) -> None:
    """Move the engine's pinned clock forward (recorded chains need a fixed clock)."""
    engine.settings.clock = engine.settings.now() + timedelta(seconds=seconds)


def recorded_calls(path: Path) -> list[dict[str, Any]]:
    return copy.deepcopy(json.loads(Path(path).read_text())["calls"])


class SwitchableTransport:
    """A cassette transport whose recorded calls the test replaces mid-test (the chain moves
    on: confirmed → finalized, or a block is reorged), counting every call by method."""

    source = "cassette"

    def __init__(self, calls: Iterable[dict[str, Any]]):
        self._lock = threading.Lock()
        self.by_method: dict[str, int] = {}
        self.load(calls)

    def load(self, calls: Iterable[dict[str, Any]]) -> None:
        self._inner = CassetteTransport([Call(c) for c in calls])

    def call(self, method: str, params: list[Any]) -> Any:
        with self._lock:
            self.by_method[method] = self.by_method.get(method, 0) + 1
        return self._inner.call(method, params)


def counts(engine: Engine) -> dict[str, int]:
    with engine.db.tx() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


def audit_actions(engine: Engine, subject_id: str | None = None) -> list[AuditEvent]:
    with engine.db.tx() as s:
        q = select(AuditEvent).order_by(AuditEvent.id)
        if subject_id is not None:
            q = q.where(AuditEvent.subject_id == subject_id)
        return list(s.scalars(q).all())


# Webhook endpoint rows: a table with no foreign keys, for tests of the repo's write paths.
ENDPOINTS = WebhookEndpoint.__table__
ENDPOINT_INSERT = Prepared(insert(ENDPOINTS))


def endpoint_row(i: int) -> dict[str, Any]:
    return {
        "id": f"whe_{i}",
        "principal": "svc:alice",
        "owners": ["alice"],
        "url": f"http://127.0.0.1:9/{i}",
        "event_types": ["proof.verified"],
        "secret": "s" * 32,
        "active": True,
        "created_at": CLOCK,
        "deactivated_at": None,
    }


def endpoint_ids(db: Database) -> list[str]:
    with db.engine.connect() as c:
        return sorted(c.scalars(select(ENDPOINTS.c.id)).all())


def session_row(reference: str | None) -> dict[str, Any]:
    """A payment session row as the repo writes it: open, alice's, one USDC on Solana."""
    return {
        "id": new_id(),
        "owner_id": "alice",
        "rail_id": "solana_usdc",
        "access_product_id": "pro",
        "amount": 1_000_000,
        "network": "solana-mainnet",
        "asset": "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
        "recipient": "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        "reference": reference,
        "payer": None,
        "memo": None,
        "status": "open",
        "created_at": CLOCK,
        "expires_at": CLOCK + timedelta(hours=1),
        "paid_at": None,
    }


def fake_payment(chain: Any, sess: dict[str, Any], tx: str, finality: str = "finalized") -> None:
    """The fake rail's transfer `tx` paying `sess` (its amount, treasury and reference) in
    full, at `finality`, put on the scripted chain."""
    chain.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": int(sess["amount"]),
        "asset": "fusd",
        "refs": [sess["reference"]],
        "finality": finality,
    }
