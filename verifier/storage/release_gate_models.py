"""Release-gate evidence: what a rail must show before production enablement is applied.

Append-only: a gate's standing is its newest record. On the same `Base` as the engine's
models (migration 0009).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from verifier.storage.models import Base, new_id


class GateOutcome(StrEnum):
    passed = "passed"
    failed = "failed"


class ReleaseGateEvidence(Base):
    __tablename__ = "release_gate_evidence"
    __table_args__ = (
        CheckConstraint("outcome IN ('passed', 'failed')", name="outcome"),
        # Who recorded it and why is part of the evidence.
        CheckConstraint("incident_id <> '' AND reason <> ''", name="operator_context"),
        Index("ix_release_gate_evidence_rail_gate", "rail_id", "gate", "seq"),
    )
    # The order records were made in (two can share a timestamp under a pinned clock).
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True, default=new_id)
    rail_id: Mapped[str] = mapped_column(String(64))
    gate: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    recorded_by: Mapped[str] = mapped_column(String(128))
    incident_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime]
