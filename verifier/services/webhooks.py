"""Webhook delivery: signing, the worker's delivery sweep, and staff operations.

Signing (Stripe-style). Each POST carries
    Railproof-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>
    Railproof-Event-Id: evt_...
A receiver recomputes the HMAC over the raw body, compares in constant time, rejects a
timestamp outside its tolerance (replays) and dedupes by event id (delivery is at least once).
`verify_signature` below is self-contained so receivers can copy it.

Delivery. `deliver_due` claims due deliveries (FOR UPDATE SKIP LOCKED on PostgreSQL) with a
lease, POSTs them with a timeout, and records the outcome: 2xx → delivered; anything else →
retry at a time from tenacity's exponential-with-jitter wait, persisted in next_attempt_at
(the retry spans worker sweeps, so it survives restarts); after the last try → dead_letter
with the last error. A worker that dies mid-delivery leaves a lease that expires, and another
worker takes the row again. Order per resource: a delivery is claimable only when no earlier
event of the same resource is still pending for the same endpoint.

Clocks. Leases and retry times run on the wall clock, not the engine's clock: the engine's
clock can be pinned to replay recorded chains, while receivers and their signature checks
live in real time. Tests pass `now` explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import tenacity
from sqlalchemy.orm import Session

from rails.base import canonical_json
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, NotFound
from verifier.core.metrics import SPEC
from verifier.core.timeutil import iso, utc
from verifier.services import audit
from verifier.services.events import envelope
from verifier.storage.repo import webhooks as delivery_repo
from verifier.storage.webhook_models import (
    DeliveryStatus,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
)

log = logging.getLogger("railproof.webhooks")

SIGNATURE_HEADER = "Railproof-Signature"
EVENT_ID_HEADER = "Railproof-Event-Id"
ALLOW_ANY_HOST_ENV = "RAILPROOF_WEBHOOK_ALLOW_ANY_HOST"
USER_AGENT = "railproof-webhooks/1"
_ERROR_CHARS = 300  # last_error keeps the start of a receiver's answer, not all of it
_ID = re.compile(r"^(evt|whd|whe)_[0-9a-f]{32}$")


def well_formed_id(value: str, prefix: str | None = None) -> bool:
    # Checked before any lookup: a malformed id is simply not found (and never reaches the
    # database driver, which may refuse strange text with an error instead of no row).
    return bool(_ID.match(value)) and (prefix is None or value.startswith(prefix + "_"))


# -- signing ---------------------------------------------------------------------------------
def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: bytes | str, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """Receiver side: True only for a signature made with `secret` over exactly `body`, at a
    time within `tolerance_s` of `now` (default: the current time). Needs only hashlib, hmac
    and time from the standard library."""
    raw = body.encode() if isinstance(body, str) else body
    ts, candidates = None, []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            ts = int(value)
        elif key == "v1":
            candidates.append(value)  # several v1 values appear while a secret is rotated
    if ts is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False  # stale or from the future: a replayed or forged request
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, c) for c in candidates)


# -- where we may send -------------------------------------------------------------------------
def allow_any_host() -> bool:
    return os.environ.get(ALLOW_ANY_HOST_ENV, "").strip().lower() in ("1", "true", "yes")


def url_problem(url: str) -> str | None:
    """Why a webhook URL is refused, or None when it is acceptable."""
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "must be ASCII without spaces or control characters (IDN hosts in punycode)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username or parts.password:
        # SECURITY: credentials in a URL end up in logs and staff views; use the secret.
        return "must not carry credentials (user:password@)"
    # SECURITY: unless a deployment allows other hosts, deliveries never leave this machine
    # (tests and local runs must not send payment events anywhere else).
    if not allow_any_host() and not _loopback(parts.hostname):
        return f"host {parts.hostname!r} is not a loopback address ({ALLOW_ANY_HOST_ENV} is off)"
    return None


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """scheme://host[:port]/path: what audit rows and logs keep (a query may carry a token)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: float = 10.0
    max_attempts: int = 10
    backoff_initial_s: float = 30.0
    backoff_max_s: float = 6 * 3600.0
    backoff_jitter_s: float = 30.0
    lease_s: float = 120.0
    concurrency: int = 8  # POSTs in flight per round (each round claims this many)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.concurrency < 1 or self.timeout_s <= 0:
            raise ValueError("webhook delivery: max_attempts, concurrency, timeout must be > 0")
        # A lease shorter than a POST could hand a row in flight to a second worker.
        if self.lease_s <= self.timeout_s:
            raise ValueError("webhook delivery: the lease must be longer than the timeout")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeliveryConfig:
        env = os.environ if env is None else env
        names = {
            "timeout_s": "TIMEOUT_SECONDS",
            "max_attempts": "MAX_ATTEMPTS",
            "backoff_initial_s": "BACKOFF_INITIAL_SECONDS",
            "backoff_max_s": "BACKOFF_MAX_SECONDS",
            "backoff_jitter_s": "BACKOFF_JITTER_SECONDS",
            "lease_s": "LEASE_SECONDS",
            "concurrency": "CONCURRENCY",
        }
        kw: dict[str, Any] = {}
        for field, suffix in names.items():
            raw = env.get(f"RAILPROOF_WEBHOOK_{suffix}")
            if raw:
                kw[field] = int(raw) if field in ("max_attempts", "concurrency") else float(raw)
        return cls(**kw)


# The retry manager a RetryCallState names; the wait strategy reads only the attempt number.
_NO_RETRYING = tenacity.Retrying()


def backoff(attempt: int, cfg: DeliveryConfig) -> timedelta:
    """Wait before the try after `attempt` failed tries: tenacity's exponential backoff with
    jitter (initial × 2^(attempt-1) + uniform(0, jitter), never above the maximum). Called as
    a function of the attempt number because the retry loop spans worker sweeps."""
    wait = tenacity.wait_exponential_jitter(
        multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s, jitter=cfg.backoff_jitter_s
    )
    state = tenacity.RetryCallState(_NO_RETRYING, None, (), {})
    state.attempt_number = max(1, attempt)
    return timedelta(seconds=wait(state))


def wall_now() -> datetime:
    return datetime.now(UTC)


# -- the delivery sweep ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What one POST needs, read at claim time so the POST runs outside any transaction."""

    delivery_id: str
    event_id: str
    url: str
    secret: str
    body: bytes

    def __repr__(self) -> str:  # SECURITY: never print the secret
        return f"Job({self.delivery_id}, event={self.event_id})"


@dataclass(frozen=True)
class Result:
    ok: bool
    status_code: int | None
    error: str | None
    reason: str  # metric label: delivered, http_4xx, http_5xx, timeout, connect, ...
    latency_s: float


def deliver_due(
    engine: Engine,
    worker_name: str,
    batch: int = 100,
    *,
    now: datetime | None = None,
    config: DeliveryConfig | None = None,
) -> dict[str, int]:
    """Deliver what is due, at most `batch` attempts. Rounds repeat so that event n+1 of a
    resource goes out in the same sweep once event n is delivered."""
    cfg = config or DeliveryConfig.from_env()
    out = {"claimed": 0, "delivered": 0, "retrying": 0, "dead_lettered": 0, "stale": 0}
    with httpx.Client(
        timeout=cfg.timeout_s, follow_redirects=False, headers={"User-Agent": USER_AGENT}
    ) as http:
        while out["claimed"] < batch:
            jobs = claim(
                engine,
                worker_name,
                min(cfg.concurrency, batch - out["claimed"]),
                now or wall_now(),
                cfg,
            )
            if not jobs:
                break
            out["claimed"] += len(jobs)
            with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                results = list(pool.map(lambda j: post(http, j), jobs))
            for job, res in zip(jobs, results, strict=False):
                out[_record(engine, job, res, worker_name, cfg, now)] += 1
    refresh_webhook_gauges(engine)
    return out


def claim(
    engine: Engine, worker_name: str, limit: int, now: datetime, cfg: DeliveryConfig
) -> list[Job]:
    """Lease up to `limit` due deliveries, each the earliest pending event of its resource
    for its endpoint. Attempts are counted here, before the POST, so a delivery that kills
    its worker every time still runs out of tries."""
    jobs: list[Job] = []
    with engine.db.tx() as s:
        for d, ev, ep in delivery_repo.due(s, now, limit):
            d.updated_at = now
            if d.attempts >= cfg.max_attempts:
                # The previous holder died during the final try: out of tries, not lost.
                d.status, d.next_attempt_at = DeliveryStatus.dead_letter, None
                d.claimed_by = d.claimed_until = None
                d.last_error = "worker lost during the final attempt (lease expired)"
                continue
            d.attempts += 1
            d.claimed_by, d.claimed_until = worker_name, now + timedelta(seconds=cfg.lease_s)
            jobs.append(Job(d.id, ev.id, ep.url, ep.secret, canonical_json(envelope(ev))))
    return jobs


def post(http: httpx.Client, job: Job) -> Result:
    """One signed POST; never raises (a failure is a result to record)."""
    problem = url_problem(job.url)
    if problem is not None:
        # SECURITY: re-checked at send time, so a URL stored before a setting changed (or
        # written to the table directly) still cannot make this machine send elsewhere.
        return Result(False, None, f"not sent: url {problem}", "host_not_allowed", 0.0)
    headers = {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: job.event_id,
        SIGNATURE_HEADER: sign(job.secret, job.body, int(time.time())),
    }
    start = time.perf_counter()
    try:
        with http.stream("POST", job.url, content=job.body, headers=headers) as r:
            snippet = _read_some(r)
            code = r.status_code
    except httpx.TimeoutException as e:
        return Result(
            False, None, f"timeout: {type(e).__name__}", "timeout", time.perf_counter() - start
        )
    except httpx.HTTPError as e:
        return Result(
            False,
            None,
            f"{type(e).__name__}: {str(e)[:_ERROR_CHARS]}",
            "connect",
            time.perf_counter() - start,
        )
    except Exception as e:  # noqa: BLE001 - one broken receiver must not stop the sweep
        return Result(False, None, f"{type(e).__name__}", "error", time.perf_counter() - start)
    latency = time.perf_counter() - start
    if 200 <= code < 300:
        return Result(True, code, None, "delivered", latency)
    return Result(
        False, code, f"HTTP {code}: {snippet}".rstrip(": "), f"http_{code // 100}xx", latency
    )


def _read_some(r: httpx.Response) -> str:
    # Only the start of the answer: a receiver cannot make us buffer a large body.
    got = b""
    for chunk in r.iter_raw():
        got += chunk
        if len(got) >= _ERROR_CHARS:
            break
    return got[:_ERROR_CHARS].decode("utf-8", "replace").strip()


def _record(
    engine: Engine,
    job: Job,
    res: Result,
    worker_name: str,
    cfg: DeliveryConfig,
    now: datetime | None,
) -> str:
    """Write one attempt's outcome; returns the counter it belongs to."""
    _metric(engine, "observe", "webhook_delivery_latency_seconds", res.latency_s)
    if not res.ok:
        _metric(engine, "inc", "webhook_delivery_failures_total", reason=res.reason)
        log.warning(
            "webhook delivery failed: %s",
            res.reason,
            extra={"delivery_id": job.delivery_id, "event_id": job.event_id},
        )
    t = now or wall_now()
    with engine.db.tx() as s:
        d = delivery_repo.delivery_locked(s, job.delivery_id)
        if d is None or d.status != DeliveryStatus.pending:
            return "stale"  # decided meanwhile (another worker after our lease, or staff)
        d.updated_at = t
        if res.ok:
            # A 2xx is a fact whoever holds the lease now: the receiver has the event.
            d.status, d.delivered_at = DeliveryStatus.delivered, t
            d.last_status_code = res.status_code
            d.next_attempt_at = None
            d.claimed_by = d.claimed_until = None
            return "delivered"
        if d.claimed_by != worker_name:
            return "stale"  # our lease ran out and another worker owns the row now
        d.last_error, d.last_status_code = res.error, res.status_code
        d.claimed_by = d.claimed_until = None
        if d.attempts >= cfg.max_attempts:
            d.status, d.next_attempt_at = DeliveryStatus.dead_letter, None
            return "dead_lettered"
        d.next_attempt_at = t + backoff(d.attempts, cfg)
        return "retrying"


_SPEC_NAMES = {m.name for m in SPEC}


def _metric(engine: Engine, kind: str, name: str, value: float = 1, **labels: str) -> None:
    # The metric spec is one list owned elsewhere; until it names these metrics there is
    # nothing to record them into, and delivery must not fail over a metric.
    if name in _SPEC_NAMES:
        getattr(engine.metrics, kind)(name, value, **labels)


def dead_letter_depth(engine: Engine) -> int:
    with engine.db.tx() as s:
        return delivery_repo.count_dead_letters(s)


def refresh_webhook_gauges(engine: Engine) -> None:
    if "webhook_dead_letter_depth" in _SPEC_NAMES:
        engine.metrics.set("webhook_dead_letter_depth", dead_letter_depth(engine))


# -- staff operations ----------------------------------------------------------------------------
def _delivery_view(d: WebhookDelivery, ev: OutboxEvent, ep: WebhookEndpoint) -> dict[str, Any]:
    return {
        "delivery_id": d.id,
        "event_id": ev.id,
        "type": ev.type,
        "owner_id": ev.owner_id,
        "resource_type": ev.resource_type,
        "resource_id": ev.resource_id,
        "sequence": ev.sequence,
        "endpoint_id": ep.id,
        "url": redact_url(ep.url),
        "endpoint_active": ep.active,
        "status": d.status,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_status_code": d.last_status_code,
        "next_attempt_at": iso(d.next_attempt_at),
        "delivered_at": iso(d.delivered_at),
        "claimed_by": d.claimed_by,
        "claimed_until": iso(d.claimed_until),
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
    }


def list_events(
    engine: Engine, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Deliveries (event × endpoint), newest first, optionally by status."""
    if status is not None and status not in {s.value for s in DeliveryStatus}:
        raise BadInput(
            "invalid_status", f"status: one of {', '.join(DeliveryStatus)}", field="status"
        )
    with engine.db.tx() as s:
        return [_delivery_view(*row) for row in delivery_repo.newest(s, status, limit)]


def inspect_event(engine: Engine, any_id: str) -> dict[str, Any]:
    """An event (by event id, or by the id of one of its deliveries) with all deliveries."""
    with engine.db.tx() as s:
        ev = _event_of(s, any_id)
        rows = delivery_repo.of_event(s, ev.id)
        return {
            "event": envelope(ev),
            "resource_type": ev.resource_type,
            "resource_id": ev.resource_id,
            "sequence": ev.sequence,
            "deliveries": [_delivery_view(*row) for row in rows],
        }


def _event_of(s: Session, any_id: str) -> OutboxEvent:
    if not well_formed_id(any_id):
        raise NotFound("webhook_event_not_found", f"no webhook event or delivery {any_id!r}")
    ev = delivery_repo.event(s, any_id)
    if ev is None:
        d = delivery_repo.delivery(s, any_id)
        ev = delivery_repo.event(s, d.event_id) if d is not None else None
    if ev is None:
        raise NotFound("webhook_event_not_found", f"no webhook event or delivery {any_id!r}")
    return ev


def replay(
    engine: Engine, any_id: str, op: audit.Operator, now: datetime | None = None
) -> dict[str, Any]:
    """Put dead letters back in the queue (a delivery id: that one; an event id: all of its
    dead letters) for a fresh set of tries, audited with the operator's reason."""
    if not op.reason:
        raise BadInput("operator_context_required", "reason: required to replay", field="reason")
    t = now or wall_now()
    with engine.db.tx() as s:
        ev = _event_of(s, any_id)
        rows = delivery_repo.dead_letters_locked(s, ev.id, any_id if any_id != ev.id else None)
        if not rows:
            raise Conflict("not_dead_letter", f"{any_id}: nothing in the dead-letter queue")
        replayed = []
        for d, _, ep in rows:
            if not ep.active:
                raise Conflict(
                    "endpoint_inactive",
                    f"endpoint {ep.id} was deleted; its deliveries cannot be replayed",
                )
            prev = {
                "attempts": d.attempts,
                "last_error": d.last_error,
                "last_status_code": d.last_status_code,
            }
            d.status, d.attempts, d.next_attempt_at = DeliveryStatus.pending, 0, t
            d.claimed_by = d.claimed_until = None
            d.updated_at = t
            audit.append(
                s,
                engine.now(),
                op,
                "webhook.replayed",
                "webhook_delivery",
                d.id,
                {"event_id": ev.id, "endpoint_id": ep.id, "previous": prev},
            )
            replayed.append(d.id)
    refresh_webhook_gauges(engine)
    return {
        "event_id": ev.id,
        "replayed": replayed,
        "status": DeliveryStatus.pending.value,
        "next_attempt_at": iso(utc(t)),
    }
