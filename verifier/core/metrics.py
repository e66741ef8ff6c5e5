"""The metric spec: one list in code that drives /metrics, GET /v1/admin/observability/spec
and the generated Prometheus alert rules (`railproof alerts generate`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "railproof_"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str  # PromQL over this metric; `{m}` is replaced by the full metric name
    severity: str
    summary: str
    for_: str = "5m"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    alerts: tuple[Alert, ...] = field(default_factory=tuple)

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


SPEC: tuple[MetricSpec, ...] = (
    MetricSpec(
        "verification_attempts_total",
        "counter",
        "Verification attempts by rail, status and failure code",
        ("rail_id", "status", "code"),
        (
            Alert(
                "RailproofVerificationFailures",
                'sum by (rail_id, code) (rate({m}{{status="failed"}}[15m])) > 0.5',
                "warning",
                "Verification failures by code are elevated",
            ),
        ),
    ),
    MetricSpec(
        "rpc_errors_total",
        "counter",
        "Chain transport errors by network and kind",
        ("network", "kind"),
        (
            Alert(
                "RailproofRpcErrors",
                "sum by (network) (rate({m}[5m])) > 1",
                "warning",
                "RPC errors on a network",
            ),
        ),
    ),
    MetricSpec(
        "owner_isolation_denials_total",
        "counter",
        "Requests refused because the caller may not act for that owner",
        ("reason",),
        (
            Alert(
                "RailproofOwnerIsolationDenials",
                "increase({m}[10m]) > 0",
                "critical",
                "A caller tried to reach another owner's data",
                "0m",
            ),
        ),
    ),
    MetricSpec(
        "idempotency_conflicts_total",
        "counter",
        "Idempotency-Key reuse with another body, or while in progress",
        ("kind",),
        (
            Alert(
                "RailproofIdempotencyConflicts",
                "increase({m}[15m]) > 5",
                "warning",
                "Clients reuse idempotency keys",
            ),
        ),
    ),
    MetricSpec(
        "replay_refusals_total",
        "counter",
        "Proofs refused because their transfer already backs another session "
        "(duplicate_payment, nonce_reused, proof_owner_conflict)",
        ("rail_id", "code"),
        (
            Alert(
                "RailproofReplayRefusals",
                "sum by (rail_id, code) (increase({m}[15m])) > 0",
                "warning",
                "A transfer was claimed for a second session",
            ),
        ),
    ),
    MetricSpec(
        "rail_paused_attempts_total",
        "counter",
        "Sessions/proofs refused because the rail is paused or disabled",
        ("rail_id",),
        (
            Alert(
                "RailproofPausedRailAttempts",
                "increase({m}[10m]) > 0",
                "warning",
                "Traffic keeps arriving for a paused rail",
            ),
        ),
    ),
    MetricSpec(
        "apply_gate_blocks_total",
        "counter",
        "Apply attempts blocked, by blocker",
        ("rail_id", "blocker"),
        (
            Alert(
                "RailproofApplyGateBlocks",
                "increase({m}[15m]) > 10",
                "warning",
                "Apply gate keeps blocking",
            ),
        ),
    ),
    MetricSpec(
        "reorgs_total",
        "counter",
        "Settlements found reorged",
        ("rail_id",),
        (
            Alert(
                "RailproofReorg",
                "increase({m}[30m]) > 0",
                "critical",
                "A settlement left the canonical chain",
                "0m",
            ),
        ),
    ),
    MetricSpec(
        "reorged_active_entitlements",
        "gauge",
        "Active entitlements whose settlement was found reorged",
        (),
        (
            Alert(
                "RailproofReorgedActiveEntitlement",
                "{m} > 0",
                "critical",
                "An active entitlement is backed by a reorged settlement",
                "0m",
            ),
        ),
    ),
    MetricSpec(
        "pending_entitlement_age_seconds",
        "gauge",
        "Age of the oldest entitlement still pending",
        (),
        (
            Alert(
                "RailproofPendingEntitlementAge",
                "{m} > 3600",
                "warning",
                "Entitlements wait over an hour for activation",
            ),
        ),
    ),
    MetricSpec("receipts_total", "counter", "Receipts created", ("rail_id",)),
    MetricSpec("verification_latency_seconds", "histogram", "Verification latency", ("rail_id",)),
    MetricSpec(
        "webhook_delivery_latency_seconds",
        "histogram",
        "Webhook POST latency, request to answer (or timeout), every attempt",
    ),
    MetricSpec(
        "webhook_delivery_failures_total",
        "counter",
        "Failed webhook delivery attempts by reason (http_4xx, http_5xx, timeout, "
        "connect, host_not_allowed, error)",
        ("reason",),
        (
            Alert(
                "RailproofWebhookFailures",
                "sum(rate({m}[15m])) > 0.2",
                "warning",
                "Webhook deliveries keep failing",
            ),
        ),
    ),
    MetricSpec(
        "webhook_dead_letter_depth",
        "gauge",
        "Webhook deliveries in the dead-letter queue (replay after fixing the receiver)",
        (),
        (
            Alert(
                "RailproofWebhookDeadLetters",
                "{m} > 10",
                "warning",
                "Webhook dead-letter queue above 10: inspect and replay",
            ),
        ),
    ),
    MetricSpec(
        "reconciliation_drift",
        "gauge",
        "Unresolved findings of the latest reconciliation run, by kind",
        ("kind",),
        (
            Alert(
                "RailproofReconciliationDrift",
                "sum({m}) > 0",
                "warning",
                "The latest reconciliation run left unresolved drift: inspect the run",
                "30m",
            ),
        ),
    ),
)


class Metrics:
    """Prometheus collectors built from SPEC, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
        self._m: dict[str, Any] = {
            s.name: kinds[s.kind](s.full_name, s.help, s.labels, registry=self.registry)
            for s in SPEC
        }

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        m = self._m[name]
        (m.labels(**labels) if labels else m).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        m = self._m[name]
        (m.labels(**labels) if labels else m).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        m = self._m[name]
        (m.labels(**labels) if labels else m).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def spec_document() -> dict[str, Any]:
    return {
        "metrics": [
            {
                "name": s.full_name,
                "kind": s.kind,
                "help": s.help,
                "labels": list(s.labels),
                "alerts": [dict(asdict(a), expr=a.expr.format(m=s.full_name)) for a in s.alerts],
            }
            for s in SPEC
        ]
    }


def alert_rules() -> dict[str, Any]:
    rules = []
    for s in SPEC:
        for a in s.alerts:
            rules.append(
                {
                    "alert": a.name,
                    "expr": a.expr.format(m=s.full_name),
                    "for": a.for_,
                    "labels": {"severity": a.severity},
                    "annotations": {"summary": a.summary},
                }
            )
    return {"groups": [{"name": "railproof", "rules": rules}]}
