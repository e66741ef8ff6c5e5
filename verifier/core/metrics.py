"""The metric spec: one list in code that drives /metrics, GET /v1/admin/observability/spec,
the generated Prometheus alert rules (`railproof alerts generate`) and the Grafana dashboard
(`railproof alerts dashboard`).

Several API processes (`railproof serve --workers N`) share their counts through
prometheus_client's multiprocess mode: when PROMETHEUS_MULTIPROC_DIR is set before the first
metric is built, every process writes its values to files there and /metrics sums them
(`Metrics.render`). Gauges computed from stored state at scrape time keep the most recently
set value across processes (`multiprocess_mode="mostrecent"`): every process computes the
same figure from the database, and the one that answered the last scrape is the freshest.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from verifier.core.multiproc import MULTIPROC_ENV

PREFIX = "railproof_"
# Where `runbook_url` annotations point unless the operator gives their own copy's URL
# (`railproof alerts generate --runbook-base https://…/runbook.md`).
RUNBOOK = "docs/runbook.md"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str  # PromQL over this metric; `{m}` is replaced by the full metric name
    severity: str
    summary: str
    for_: str = "5m"

    @property
    def anchor(self) -> str:
        """The runbook section of this alert: a `## <name>` heading in docs/runbook.md."""
        return self.name.lower()


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    alerts: tuple[Alert, ...] = field(default_factory=tuple)
    area: str = "verification"  # the dashboard row it is drawn in
    # Gauges only: how values of several processes combine (prometheus_client's modes).
    multiprocess_mode: str = "mostrecent"
    buckets: tuple[float, ...] | None = None  # histograms only; None: the library's default

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


SPEC: tuple[MetricSpec, ...] = (
    # -- http ----------------------------------------------------------------------------------
    MetricSpec(
        "http_requests_total",
        "counter",
        "HTTP requests answered, by route template, method and status",
        ("route", "method", "status"),
        (
            Alert(
                "RailproofHttpServerErrors",
                'sum by (route) (rate({m}{{status=~"5.."}}[5m])) > 0.1',
                "warning",
                "A route keeps answering 5xx",
            ),
        ),
        area="http",
    ),
    MetricSpec(
        "http_request_duration_seconds",
        "histogram",
        "HTTP request duration, first byte in to last byte out, by route template, method "
        "and status",
        ("route", "method", "status"),
        (
            Alert(
                "RailproofEntitlementCheckLatency",
                "histogram_quantile(0.95, sum by (le) "
                '(rate({m}_bucket{{route="/v1/entitlements"}}[5m]))) > 0.25',
                "warning",
                "Entitlement checks are slow: p95 above 250 ms",
                "10m",
            ),
        ),
        area="http",
    ),
    MetricSpec(
        "rate_limit_backend_errors_total",
        "counter",
        "Rate-limit checks the shared store (Redis) could not answer; the process's own "
        "buckets decided them",
        (),
        (
            Alert(
                "RailproofRateLimitStoreDown",
                "increase({m}[5m]) > 0",
                "warning",
                "Redis does not answer: each API process limits on its own",
            ),
        ),
        area="http",
    ),
    MetricSpec(
        "readiness_failures_total",
        "counter",
        "Failed /readyz checks, by check (database, schema, rpc:<rail>)",
        ("check",),
        (
            Alert(
                "RailproofReadinessFailing",
                "sum by (check) (increase({m}[10m])) > 3",
                "critical",
                "A readiness check keeps failing: the load balancer takes this API out",
                "0m",
            ),
        ),
        area="http",
    ),
    # -- verification --------------------------------------------------------------------------
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
            Alert(
                "RailproofAmbiguousTransfers",
                'sum by (rail_id) (increase({m}{{code="ambiguous_transfer"}}[30m])) > 0',
                "warning",
                "A transfer could back several open sessions and waits for review",
                "0m",
            ),
            Alert(
                "RailproofWalletMismatch",
                "sum by (rail_id, code) "
                '(increase({m}{{code=~"wrong_recipient|sender_mismatch"}}[15m])) > 5',
                "critical",
                "Payments reach another recipient or come from another payer than the session "
                "names: check the treasury shown to payers",
                "0m",
            ),
        ),
    ),
    MetricSpec("verification_latency_seconds", "histogram", "Verification latency", ("rail_id",)),
    MetricSpec(
        "pending_review_age_seconds",
        "gauge",
        "Age of the oldest proof waiting for review (requires_review)",
        (),
        (
            Alert(
                "RailproofPendingReviewAge",
                "{m} > 3600",
                "warning",
                "A proof has waited over an hour for review: its payer has paid",
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
    # -- security ------------------------------------------------------------------------------
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
        area="security",
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
        area="security",
    ),
    # -- chain ---------------------------------------------------------------------------------
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
        area="chain",
    ),
    MetricSpec(
        "rpc_provider_errors_total",
        "counter",
        "RPC URLs that failed a call (after their retries), by network and provider "
        "(scheme://host: never a path or query, where API keys live) and kind "
        "(transient | unusable)",
        ("network", "provider", "kind"),
        (
            Alert(
                "RailproofRpcProviderDown",
                "sum by (network, provider) (rate({m}[10m])) > 0.2",
                "warning",
                "One RPC provider keeps failing; calls fail over to the next URL",
            ),
        ),
        area="chain",
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
        area="chain",
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
        area="chain",
    ),
    MetricSpec(
        "unsettled_payment_age_seconds",
        "gauge",
        "Per rail, age of the oldest verified proof without a final settlement (x402: the "
        "facilitator has not settled the authorization)",
        ("rail_id",),
        (
            Alert(
                "RailproofSettlementStalled",
                "max by (rail_id) ({m}) > 1800",
                "warning",
                "A verified payment has had no final settlement for 30 minutes",
            ),
        ),
        area="chain",
    ),
    # -- apply and entitlements ----------------------------------------------------------------
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
        area="apply",
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
        area="apply",
    ),
    MetricSpec("receipts_total", "counter", "Receipts created", ("rail_id",), area="apply"),
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
        area="apply",
    ),
    MetricSpec(
        "approval_queue_age_seconds",
        "gauge",
        "Age of the oldest two-person approval request still pending",
        (),
        (
            Alert(
                "RailproofApprovalQueueAge",
                "{m} > 14400",
                "warning",
                "A rail change has waited over four hours for its second person",
            ),
        ),
        area="apply",
    ),
    MetricSpec(
        "available_rails",
        "gauge",
        "Rails ready to take payments: enabled for production, not paused, no readiness blocker",
        (),
        (
            Alert(
                "RailproofNoAvailableRail",
                "{m} < 1",
                "critical",
                "No rail can take and apply payments",
            ),
        ),
        area="apply",
    ),
    MetricSpec(
        "rail_setup_blockers",
        "gauge",
        "Readiness blockers (pause aside) of each rail enabled for production: "
        "railproof rail-production-readiness names them",
        ("rail_id",),
        (
            Alert(
                "RailproofRailSetupBlocked",
                "max by (rail_id) ({m}) > 0",
                "critical",
                "A rail enabled for production has setup blockers: its payments cannot apply",
                "10m",
            ),
        ),
        area="apply",
    ),
    # -- webhooks ------------------------------------------------------------------------------
    MetricSpec(
        "webhook_delivery_latency_seconds",
        "histogram",
        "Webhook POST latency, request to answer (or timeout), every attempt",
        area="webhooks",
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
        area="webhooks",
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
        area="webhooks",
    ),
    # -- reconciliation ------------------------------------------------------------------------
    MetricSpec(
        "reconciliation_drift",
        "gauge",
        "Unresolved findings (not info, not applied) of the current reconciliation runs of "
        "each scope and rail (the latest complete whole-history run and the latest finished run "
        "after it), by kind",
        ("kind",),
        (
            Alert(
                "RailproofReconciliationDrift",
                "sum({m}) > 0",
                "warning",
                "Reconciliation runs left unresolved drift: inspect the runs",
                "30m",
            ),
        ),
        area="reconciliation",
    ),
)


class Metrics:
    """Prometheus collectors built from SPEC, in a registry of their own (one per app).

    In multiprocess mode (PROMETHEUS_MULTIPROC_DIR set before prometheus_client was first
    imported: `railproof serve` sets it) values live in that directory's files, shared by
    every process of one server, and `render` reads all of them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The library chose its value class when first imported; what it chose is what the
        # values do, so it decides how to render.
        self.multiprocess_dir = (
            os.environ.get(MULTIPROC_ENV)
            if getattr(prometheus_values.ValueClass, "_multiprocess", False)
            else None
        )
        self._m: dict[str, Any] = {s.name: _collector(s, self.registry) for s in SPEC}

    def inc(self, name: str, amount: float = 1, /, **labels: str) -> None:
        m = self._m[name]
        (m.labels(**labels) if labels else m).inc(amount)

    def set(self, name: str, value: float, /, **labels: str) -> None:
        m = self._m[name]
        (m.labels(**labels) if labels else m).set(value)

    def observe(self, name: str, value: float, /, **labels: str) -> None:
        m = self._m[name]
        (m.labels(**labels) if labels else m).observe(value)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # Every process's values: a fresh registry per scrape, as prometheus_client asks.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)


def _collector(s: MetricSpec, registry: CollectorRegistry) -> Any:
    if s.kind == "counter":
        return Counter(s.full_name, s.help, s.labels, registry=registry)
    if s.kind == "gauge":
        return Gauge(
            s.full_name,
            s.help,
            s.labels,
            registry=registry,
            multiprocess_mode=s.multiprocess_mode,  # type: ignore[arg-type]
        )
    if s.kind == "histogram":
        if s.buckets is not None:
            return Histogram(s.full_name, s.help, s.labels, registry=registry, buckets=s.buckets)
        return Histogram(s.full_name, s.help, s.labels, registry=registry)
    raise ValueError(f"{s.name}: unknown metric kind {s.kind!r}")


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


def runbook_url(alert: Alert, base: str = RUNBOOK) -> str:
    return f"{base}#{alert.anchor}"


def alert_rules(runbook_base: str = RUNBOOK) -> dict[str, Any]:
    """Prometheus rule groups, one per dashboard area. Nothing loads them until an operator
    adds the file to Prometheus' `rule_files` (README, Observability)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in SPEC:
        for a in s.alerts:
            groups.setdefault(s.area, []).append(
                {
                    "alert": a.name,
                    "expr": a.expr.format(m=s.full_name),
                    "for": a.for_,
                    "labels": {"severity": a.severity},
                    "annotations": {
                        "summary": a.summary,
                        "description": f"{s.full_name}: {s.help}",
                        "runbook_url": runbook_url(a, runbook_base),
                    },
                }
            )
    return {
        "groups": [{"name": f"railproof-{area}", "rules": rules} for area, rules in groups.items()]
    }
