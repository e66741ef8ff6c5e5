"""Tables of reconciliation and discovery: persisted runs with their findings, the
resolutions people made of findings repaired outside railproof, and the position the worker's
treasury watch has reached per rail.

On the same `Base` (and naming convention) as the engine's models, so Alembic sees one schema
(migrations 0007 and 0011).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from verifier.storage.models import Base, new_id


class RunStatus(StrEnum):
    running = "running"
    complete = "complete"
    incomplete = "incomplete"
    failed = "failed"


class Scope(StrEnum):
    rail_proofs = "rail_proofs"
    chain_inflows = "chain_inflows"


class RepairStatus(StrEnum):
    none = "none"  # nothing to repair (matched) or nothing railproof may do (a person acts)
    proposed = "proposed"  # dry run: what apply would do
    applied = "applied"  # apply submitted the transfer as its session's proof
    failed = "failed"  # apply tried and was refused
    resolved = "resolved"  # a person repaired it outside railproof (a ReconciliationResolution)


class Resolution(StrEnum):
    """How a person settled a finding outside railproof (`railproof resolve-finding`)."""

    refunded = "refunded"  # the sender was paid back
    credited_by_hand = "credited_by_hand"  # the buyer got what they paid for another way
    attached_by_hand = "attached_by_hand"  # a person attached the transfer to its session
    not_ours = "not_ours"  # not a payment for railproof (a top-up, an internal transfer)
    accepted = "accepted"  # reviewed: the state stands as it is (the note says why)


def _in(col: str, enum: type[StrEnum]) -> str:
    return f"{col} IN ({', '.join(repr(e.value) for e in enum)})"


class ReconciliationRun(Base):
    __tablename__ = "reconciliation_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RunStatus), name="status"),
        CheckConstraint(_in("scope", Scope), name="scope"),
        # Every run carries its operator context, dry runs too.
        CheckConstraint("incident_id <> '' AND operator_reason <> ''", name="operator_context"),
        Index("ix_reconciliation_runs_started", "started_at", "id"),
        Index("ix_reconciliation_runs_scope", "scope", "started_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(32))
    rail_id: Mapped[str | None] = mapped_column(String(64))
    since: Mapped[datetime | None]
    until: Mapped[datetime | None]
    row_limit: Mapped[int | None] = mapped_column(Integer)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    incident_id: Mapped[str] = mapped_column(String(128))
    operator_reason: Mapped[str] = mapped_column(Text)
    staff: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.running)
    # What could not be checked (an unreadable chain), or why the run failed.
    detail: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ReconciliationFinding(Base):
    __tablename__ = "reconciliation_findings"
    __table_args__ = (
        CheckConstraint("severity IN ('critical', 'warning', 'info')", name="severity"),
        CheckConstraint(_in("repair_status", RepairStatus), name="repair_status"),
        Index("ix_reconciliation_findings_run", "run_id", "id"),
        Index("ix_reconciliation_findings_subject", "kind", "subject_key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("reconciliation_runs.id"))
    kind: Mapped[str] = mapped_column(String(48))
    severity: Mapped[str] = mapped_column(String(16))
    # proof / session / receipt / entitlement / transfer ids, whichever the finding is about
    subjects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    detail: Mapped[str] = mapped_column(Text, default="")
    proposed_repair: Mapped[str] = mapped_column(Text, default="")
    repair_status: Mapped[str] = mapped_column(String(16), default=RepairStatus.none)
    repair_result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What the finding is about, stable across runs (services.reconciliation.subject_key);
    # NULL on findings stored before migration 0011.
    subject_key: Mapped[str | None] = mapped_column(String(256))


class ReconciliationResolution(Base):
    """A person's settlement of what a finding is about: every later run that finds the same
    (kind, subject key) reports it resolved, not drift (migration 0011)."""

    __tablename__ = "reconciliation_resolutions"
    __table_args__ = (
        CheckConstraint(_in("resolution", Resolution), name="resolution"),
        CheckConstraint("incident_id <> '' AND operator_reason <> ''", name="operator_context"),
    )
    kind: Mapped[str] = mapped_column(String(48), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    resolution: Mapped[str] = mapped_column(String(32))
    # The finding it was made on.
    finding_id: Mapped[int] = mapped_column(ForeignKey("reconciliation_findings.id"))
    staff: Mapped[str] = mapped_column(String(128))
    incident_id: Mapped[str] = mapped_column(String(128))
    operator_reason: Mapped[str] = mapped_column(Text)
    resolved_at: Mapped[datetime]


class DiscoveryCursor(Base):
    """How far the worker's watch of one address (a treasury token account, a treasury on an
    EVM chain, or one session's reference) has read, and when to look again.

    A Solana watch reads signatures newest first down to `last_signature` (every one older
    is done with). A walk longer than one cycle goes on in the next from `walk_before` (the
    oldest signature it has done with), and once it reaches `last_signature`, `walk_newest`
    (the newest signature when it started) takes its place. A walk that stopped at a listed
    transaction the node did not return names it in `stuck_signature`, with the number of
    cycles in a row it stopped there (`stuck_failures`): `services.discovery.STUCK_LIMIT`. An
    EVM watch keeps in `stuck_signature` the block it stopped before (`block:N`) and the
    highest block it passed over that it still reads again (`passed:M`)."""

    __tablename__ = "discovery_cursors"
    watch_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    rail_id: Mapped[str] = mapped_column(String(64))
    last_signature: Mapped[str | None] = mapped_column(String(128))
    walk_before: Mapped[str | None] = mapped_column(String(128))
    walk_newest: Mapped[str | None] = mapped_column(String(128))
    stuck_signature: Mapped[str | None] = mapped_column(String(128))
    stuck_failures: Mapped[int | None] = mapped_column(Integer)
    last_block: Mapped[int | None] = mapped_column(BigInteger)
    idle_polls: Mapped[int] = mapped_column(Integer, default=0)
    next_poll_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
