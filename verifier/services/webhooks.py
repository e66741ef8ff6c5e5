"""Webhook delivery: signing, the worker's delivery sweep, and staff operations.

Signing follows Standard Webhooks (https://www.standardwebhooks.com), through its reference
package `standardwebhooks`. Each POST carries
    webhook-id: evt_...            the event id: the same on every retry and replay
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>
where the key is the base64 part of the endpoint's secret `whsec_<base64>`. Any Standard
Webhooks verifier checks a delivery (signature, and a timestamp within five minutes) and the
receiver dedupes by webhook-id (delivery is at least once).

Secrets stored before Standard Webhooks (`whsec_` + URL-safe text, not base64) cannot sign a
delivery any spec verifier accepts. They are never used to sign: such a delivery is not sent
and retries with backoff (then dead-letters, replayable) until the endpoint's owner rotates
the secret (POST /v1/webhook-endpoints/{id}/rotate-secret) and updates its receiver.

Delivery. `deliver_due` claims due deliveries (FOR UPDATE SKIP LOCKED on PostgreSQL) with a
lease, POSTs them with a timeout on the whole POST, and records the outcome: 2xx → delivered;
anything else → retry at a time from tenacity's exponential-with-jitter wait, persisted in
next_attempt_at (the retry spans worker sweeps, so it survives restarts); after the last try
→ dead_letter with the last error. A worker that dies mid-delivery leaves a lease that
expires, and another worker takes the row again. `railproof worker` delivers from a thread of
its own, so receivers (the tenants') never hold up proofs' checks or apply. Order per
resource: a delivery is claimable only when no earlier event of the same resource is still
pending for the same endpoint. Fairness: `concurrency` POSTs at a time, a freed slot claiming
at once and newly due deliveries claimed while POSTs are in flight, and at most `per_token` of
them to the endpoints of one token (leases count), so a tenant's hanging receivers hold its own
slots and not the other tenants' deliveries. With any host allowed, names are resolved on the
sweep's own threads (`Lookups`), never where claims and outcomes are written; a lookup that
outlives its POST's timeout (a DNS server that never answers) holds its slot and its token's
until the resolver gives up.

Errors. A receiver's answer other than 2xx is recorded as its status and a fingerprint of the
answer's start (`answer_error`), never its text: a receiver may echo the payload back.

Clocks. Leases and retry times run on the wall clock, not the engine's clock: the engine's
clock can be pinned to replay recorded chains, while receivers and their signature checks
live in real time. Tests pass `now` explicitly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import logging
import re
import secrets
import socket
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import httpx
import standardwebhooks
import tenacity
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import EmptyWebhookSecretError

from rails.base import canonical_json
from verifier.core.config import Settings
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, NotFound
from verifier.core.metrics import SPEC
from verifier.core.timeutil import iso, utc
from verifier.services import audit
from verifier.services.events import envelope
from verifier.services.principals import still_held
from verifier.storage.repo import webhooks as delivery_repo
from verifier.storage.webhook_models import (
    DeliveryStatus,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
)

log = logging.getLogger("railproof.webhooks")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes
MIN_SECRET_BYTES = 24
ALLOW_ANY_HOST_ENV = "RAILPROOF_WEBHOOK_ALLOW_ANY_HOST"
PRIVATE_NETWORKS_ENV = "RAILPROOF_WEBHOOK_PRIVATE_NETWORKS"
USER_AGENT = "railproof-webhooks/1"
_ERROR_CHARS = 300  # of an error's text, what last_error keeps
_ANSWER_BYTES = 300  # of a failing receiver's answer, what is read (and fingerprinted)
_FINGERPRINT_HEX = 16  # last_error's fingerprint of that answer: this much of its sha256
_STORED_ERROR_CHARS = 1024  # last_error as stored: what we say, bounded
_ID = re.compile(r"^(evt|whd|whe)_[0-9a-f]{32}$")


def well_formed_id(value: str, prefix: str | None = None) -> bool:
    # Checked before any lookup: a malformed id is simply not found (and never reaches the
    # database driver, which may refuse strange text with an error instead of no row).
    return bool(_ID.match(value)) and (prefix is None or value.startswith(prefix + "_"))


# -- signing ---------------------------------------------------------------------------------
def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_problem(secret: str) -> str | None:
    """Why `secret` cannot sign Standard Webhooks deliveries, or None. The reference package
    decodes leniently (it drops characters that are not base64), so the check is strict here:
    a secret it would silently mangle must never sign."""
    if not secret.startswith(SECRET_PREFIX):
        return f"does not start with {SECRET_PREFIX}"
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"is not base64 after {SECRET_PREFIX} (made before Standard Webhooks)"
    if len(key) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery. ValueError for a secret that
    `secret_problem` refuses."""
    problem = secret_problem(secret)
    if problem is not None:
        raise ValueError(f"webhook secret {problem}")
    when = datetime.fromtimestamp(timestamp, UTC)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode()),
    }


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes | str) -> bool:
    """Receiver side, by the reference verifier: True only when `headers` carry a signature
    made with `secret` over exactly `body` and the webhook-id, at a timestamp within five
    minutes of now."""
    try:
        standardwebhooks.Webhook(secret).verify(body, dict(headers), json_parse=False)
    except (
        standardwebhooks.WebhookVerificationError,
        EmptyWebhookSecretError,
        ValueError,  # malformed base64, signature lists or UTF-8: not a valid signature
    ):
        return False
    return True


# -- where we may send -------------------------------------------------------------------------
def url_problem(url: str, allow_any_host: bool, private_networks: Sequence[str] = ()) -> str | None:
    """Why a webhook URL is refused, or None when it is acceptable (`allow_any_host`:
    RAILPROOF_WEBHOOK_ALLOW_ANY_HOST; `private_networks`: RAILPROOF_WEBHOOK_PRIVATE_NETWORKS).
    A host given by name is checked again once resolved, at send time (`resolved_problem`)."""
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "must be ASCII without spaces or control characters (IDN hosts in punycode)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
        # The delivering client's own parser: what it cannot read is never delivered to. Its
        # host as sent (IDN hosts in punycode); `.host` would decode IDNA, and can raise.
        sent = httpx.URL(url)
        host = sent.raw_host.decode("ascii").lower()
        sent.host  # noqa: B018 - raises for a malformed A-label (xn--), as a send would
    except (ValueError, httpx.InvalidURL):
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname or not host:
        return "must name a host"
    if parts.hostname != host:
        # Two parsers reading two hosts: the one checked below must be the one connected to.
        return "not a valid URL (its host is read differently by URL parsers)"
    if "%" in host:
        return "must not carry an IPv6 zone id (the client cannot send to one)"
    if sent.port == 0:
        return "port: must be 1-65535"
    if parts.username or parts.password:
        # SECURITY: credentials in a URL end up in logs and staff views; use the secret.
        return "must not carry credentials (user:password@)"
    # SECURITY: unless a deployment allows other hosts, deliveries never leave this machine
    # (tests and local runs must not send payment events anywhere else). The host is the one
    # the delivering client connects to.
    literal = _literal_ip(host)
    if not allow_any_host and (literal is None or not literal.is_loopback):
        return f"host {host!r} is not a loopback address ({ALLOW_ANY_HOST_ENV} is off)"
    if allow_any_host and literal is not None and not address_allowed(literal, private_networks):
        return f"host {host!r} {_NOT_PUBLIC}"
    return None


_NOT_PUBLIC = (
    f"is not a public address (a private network a receiver may be in is listed in "
    f"{PRIVATE_NETWORKS_ENV})"
)


def _literal_ip(host: str) -> IPAddress | None:
    if host == "localhost":
        return ipaddress.ip_address("127.0.0.1")
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix
# Addresses whose IPv4 address cannot be read from them alone: the local-use NAT64 prefix
# (RFC 8215; a translator may use it at any length from /48 to /96) and Teredo (it names a
# server and a client). Refused unless a listed network holds them.
_OPAQUE = (ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("2001::/32"))


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, where it stands for one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.0.0.1
    if ip.sixtofour is not None:
        return ip.sixtofour  # 2002:a00:1::
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # 64:ff9b::a00:1
    if ip in _TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)  # ::ffff:0:a00:1, SIIT (RFC 2765)
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip))  # ::10.0.0.1, IPv4-compatible (deprecated)
    return None


_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (SIIT)
# Ranges the IANA special-purpose registries say are not globally reachable but that
# `is_global` calls global on some Python builds (3.11.7 predates the CVE-2024-4032 table fix):
# judged here whatever the interpreter's tables say.
_NOT_GLOBAL = (
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890)
    ipaddress.ip_network("fec0::/10"),  # site-local (deprecated, RFC 3879), still routed inside
    ipaddress.ip_network("5f00::/16"),  # SRv6 SIDs (RFC 9602)
)
# The two 192.0.0.0/24 assignments that are globally reachable: PCP and TURN anycast.
_GLOBAL_IN_NOT_GLOBAL = (ipaddress.ip_address("192.0.0.9"), ipaddress.ip_address("192.0.0.10"))


def address_allowed(ip: IPAddress, private_networks: Sequence[str] = ()) -> bool:
    """Whether a delivery may connect to `ip` with any host allowed: a public unicast address,
    or one in a network the deployment listed."""
    if any(ip in ipaddress.ip_network(n) for n in private_networks):
        return True
    if any(ip in net for net in _OPAQUE):
        return False
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        # SECURITY: an IPv6 address that carries an IPv4 one (mapped, translated, NAT64, 6to4,
        # IPv4-compatible) reaches that address through the kernel or a gateway: judged as it.
        return address_allowed(embedded, private_networks)
    # SECURITY: a tenant's endpoint must not make this machine POST (and record how it was
    # answered, which the tenant reads) to loopback services, the private network or the
    # cloud's metadata address (169.254.169.254).
    if ip not in _GLOBAL_IN_NOT_GLOBAL and any(ip in net for net in _NOT_GLOBAL):
        return False
    return ip.is_global and not ip.is_multicast


def endpoint_key(url: str) -> str:
    """The receiver a URL names, for telling duplicates apart (RFC 3986 section 6.2.2): scheme
    and host in lower case (an IP address in its canonical text), the port always, dot
    segments removed (httpx's parser), an escaped unreserved character as itself and other
    escapes in upper case (in the path and the query), an empty path as `/`, an empty query
    dropped, the fragment (never sent) dropped, and `localhost` as 127.0.0.1. An escaped
    reserved character stays escaped (`%3B` is not `;` to a server), and a trailing or
    doubled slash stays: a server may route those elsewhere."""
    u = httpx.URL(url)
    path, _, params = u.raw_path.decode("ascii").partition("?")
    path = _ESCAPE.sub(_unescaped, path) or "/"
    params = _ESCAPE.sub(_unescaped, params)  # the query's escapes alike (6.2.2.1-2)
    if "." in path:
        # An escaped dot segment (`%2e%2e`) is a dot segment once unescaped (RFC 3986
        # 6.2.2: escapes first, then dot segments): httpx's parser removes it this time.
        path = httpx.URL("http://h" + path).raw_path.decode("ascii")
    raw = u.raw_host.decode("ascii").lower()
    host = "127.0.0.1" if raw == "localhost" else _ip_text(raw)
    port = u.port or _DEFAULT_PORTS.get(u.scheme)
    return f"{u.scheme}://{host}:{port}{path}" + (f"?{params}" if params else "")


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _ip_text(host: str) -> str:
    """An IP address in its one canonical text (`[0::1]`, `[::0001]` are `[::1]`); a name as
    it is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def _unescaped(m: re.Match[str]) -> str:
    c = chr(int(m[1], 16))
    return c if c in _UNRESERVED else "%" + m[1].upper()


def redact_url(url: str) -> str:
    """scheme://host[:port]/path: what audit rows and logs keep (a query may carry a token)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryConfig:
    """The delivery bounds; `from_settings` reads them from RAILPROOF_WEBHOOK_* (the defaults
    here are the Settings defaults, for tests that build one by hand)."""

    timeout_s: float = 10.0
    max_attempts: int = 10
    backoff_initial_s: float = 30.0
    backoff_max_s: float = 6 * 3600.0
    backoff_jitter_s: float = 30.0
    lease_s: float = 120.0
    concurrency: int = 32  # POSTs in flight at once, per worker
    per_token: int = 2  # of them, at most this many to one token's endpoints (leases count)
    poll_s: float = 1.0  # while POSTs are in flight, how often newly due deliveries are claimed
    allow_any_host: bool = False  # re-checked at send time (url_problem)
    private_networks: tuple[str, ...] = ()  # with any host allowed, the private ones allowed

    def __post_init__(self) -> None:
        if (
            self.max_attempts < 1
            or self.concurrency < 1
            or self.per_token < 1
            or self.timeout_s <= 0
            or self.poll_s <= 0
        ):
            raise ValueError(
                "webhook delivery: max_attempts, concurrency, per_token, timeout, poll must be > 0"
            )
        # A lease shorter than a POST could hand a row in flight to a second worker.
        if self.lease_s <= self.timeout_s:
            raise ValueError("webhook delivery: the lease must be longer than the timeout")

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        return cls(
            timeout_s=settings.webhook_timeout_seconds,
            max_attempts=settings.webhook_max_attempts,
            backoff_initial_s=settings.webhook_backoff_initial_seconds,
            backoff_max_s=settings.webhook_backoff_max_seconds,
            backoff_jitter_s=settings.webhook_backoff_jitter_seconds,
            lease_s=settings.webhook_lease_seconds,
            concurrency=settings.webhook_concurrency,
            per_token=settings.webhook_token_concurrency,
            allow_any_host=settings.webhook_allow_any_host,
            private_networks=tuple(settings.webhook_private_networks),
        )


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


def signing_time() -> int:
    """webhook-timestamp: receivers check it against their own clock, so always real time."""
    return int(time.time())


# -- the delivery sweep ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What one POST needs, read at claim time so the POST runs outside any transaction."""

    delivery_id: str
    event_id: str
    endpoint_id: str
    url: str
    secret: str
    body: bytes
    principal: str = ""  # the endpoint's token: whose slots a lookup still running holds

    def __repr__(self) -> str:  # SECURITY: never print the secret
        return f"Job({self.delivery_id}, event={self.event_id})"


@dataclass(frozen=True)
class Result:
    ok: bool
    status_code: int | None
    error: str | None
    reason: str  # metric label: delivered, http_4xx, http_5xx, timeout, connect, ...
    latency_s: float


def _counts() -> dict[str, int]:
    return dict.fromkeys(
        ("claimed", "delivered", "retrying", "dead_lettered", "stale", "unrecorded"), 0
    )


def deliver_due(
    engine: Engine,
    worker_name: str,
    batch: int = 100,
    *,
    now: datetime | None = None,
    config: DeliveryConfig | None = None,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Deliver what is due until nothing is, at most `batch` attempts (`railproof worker
    --once`, and tests, which pass `now`); `deliver_until` is the worker's own loop. Once
    `stop` is set nothing more is claimed, and the POSTs under way end and are recorded."""
    cfg = config or DeliveryConfig.from_settings(engine.settings)
    out = _counts()
    asyncio.run(_deliver(engine, worker_name, cfg, out, batch=batch, now=now, stop=stop))
    refresh_webhook_gauges(engine)
    return out


def deliver_until(
    engine: Engine,
    worker_name: str,
    stop: threading.Event,
    idle_s: float,
    config: DeliveryConfig | None = None,
) -> None:
    """Deliver as deliveries fall due, until `stop` is set: the worker's webhook thread. With
    nothing due and nothing in flight it looks again every `idle_s`; the outcome counts are
    logged when they change and it goes idle. Raises what the database raises (the caller
    logs it and starts again)."""
    cfg = config or DeliveryConfig.from_settings(engine.settings)
    out = _counts()
    logged = dict(out)

    def idle() -> None:
        nonlocal logged
        if out != logged:
            log.info("webhooks %s", out, extra={"worker": worker_name})
            logged = dict(out)
        refresh_webhook_gauges(engine)
        stop.wait(idle_s)

    asyncio.run(_deliver(engine, worker_name, cfg, out, stop=stop, idle=idle))


async def _deliver(
    engine: Engine,
    worker_name: str,
    cfg: DeliveryConfig,
    out: dict[str, int],
    *,
    batch: int | None = None,
    now: datetime | None = None,
    stop: threading.Event | None = None,
    idle: Callable[[], None] | None = None,
) -> None:
    """`concurrency` POSTs at a time. A slot that frees claims the next due delivery at once
    (event n+1 of a resource goes out as soon as event n is delivered), and while POSTs are
    in flight, deliveries falling due are claimed every `poll_s`: a receiver that hangs holds
    its token's slots (at most `per_token`) to the timeout, a host name lookup that hangs
    until the resolver gives up, never another's delivery."""

    async def send(http: httpx.AsyncClient, job: Job) -> None:
        res = await post(
            http, job, cfg.allow_any_host, cfg.timeout_s, cfg.private_networks, lookups
        )
        try:
            outcome = await asyncio.to_thread(_record, engine, job, res, worker_name, cfg, now)
        except Exception:  # noqa: BLE001 - logged; the other deliveries still count
            # SECURITY: one delivery's outcome that cannot be written (whatever its receiver
            # answered) must not leave the others unrecorded: those are other tenants'
            # deliveries, sent and then sent again. This one keeps its lease, and is tried
            # again once the lease runs out.
            log.exception(
                "webhook delivery outcome not recorded",
                extra={"delivery_id": job.delivery_id, "event_id": job.event_id},
            )
            outcome = "unrecorded"
        out[outcome] += 1

    in_flight: set[asyncio.Task[None]] = set()
    # SECURITY: host names are resolved on threads of the sweep's own (`Lookups`), never on
    # the default executor that runs claims and outcome writes (asyncio.to_thread): a
    # tenant's DNS server that never answers tied up its threads, nothing was claimed for
    # any other tenant, and outcomes written late outlived their leases (sent again).
    lookups = Lookups(cfg.concurrency)
    # SECURITY: one client delivers every tenant's events, so it keeps nothing a receiver
    # answers (a cookie set by one would go to every other on the same host) and takes no
    # proxy from the environment (a loopback delivery would go to the proxy, signed, and its
    # answer be recorded as the receiver's).
    async with httpx.AsyncClient(
        timeout=cfg.timeout_s,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        trust_env=False,
    ) as http:
        unblocked_at = -UNBLOCK_EVERY_S
        try:
            while True:
                stopping = stop is not None and stop.is_set()
                if time.monotonic() - unblocked_at >= UNBLOCK_EVERY_S and not stopping:
                    unblocked_at = time.monotonic()
                    try:
                        await asyncio.to_thread(unblock, engine, now or wall_now())
                    except Exception:  # noqa: BLE001 - the deliveries go on; tried again later
                        log.exception("webhook followers not brought forward")
                # A lookup given up on holds a slot until its thread returns (`Lookups`).
                free = cfg.concurrency - len(in_flight) - len(lookups)
                if batch is not None:
                    free = min(free, batch - out["claimed"])
                if free > 0 and not stopping:
                    jobs = await asyncio.to_thread(
                        claim, engine, worker_name, free, now or wall_now(), cfg, lookups.held
                    )
                    out["claimed"] += len(jobs)
                    in_flight |= {asyncio.create_task(send(http, j)) for j in jobs}
                if not in_flight:
                    spent = batch is not None and out["claimed"] >= batch
                    if stopping or spent:
                        return  # every POST recorded
                    if len(lookups):
                        # What those lookups' tokens have due waits for their slots: look
                        # again once they may be free (not an idle wait, nor the end).
                        await asyncio.sleep(cfg.poll_s)
                        continue
                    if idle is None:
                        return  # nothing due, every POST recorded
                    await asyncio.to_thread(idle)
                    continue
                # Claim again when a POST ends (its slot, or the next event of its resource),
                # or after `poll_s` for what fell due meanwhile.
                done, pending = await asyncio.wait(
                    in_flight, timeout=cfg.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                in_flight = set(pending)
                for task in done:
                    task.result()  # what `send` does not catch ends the loop
        finally:
            if in_flight:  # ending early: the POSTs under way still end and are recorded
                await asyncio.gather(*in_flight, return_exceptions=True)
            lookups.close()


UNBLOCK_EVERY_S = 60.0  # how often a delivering worker looks for followers left waiting


def unblock(engine: Engine, now: datetime) -> int:
    """`delivery_repo.unblock_followers` in a transaction of its own: a resource's next event
    left due at its predecessor's retry time though that one was delivered meanwhile."""
    with engine.db.tx() as s:
        return delivery_repo.unblock_followers(s, now)


def claim(
    engine: Engine,
    worker_name: str,
    limit: int,
    now: datetime,
    cfg: DeliveryConfig,
    held: Callable[[], Mapping[str, int]] | None = None,
) -> list[Job]:
    """Lease up to `limit` due deliveries, each the earliest pending event of its resource
    for its endpoint, `held` counted against their tokens' slots beside the leases (the
    sweep's lookups still running after their POSTs ended). Attempts are counted here,
    before the POST, so a delivery that kills its worker every time still runs out of
    tries."""
    jobs: list[Job] = []
    with engine.db.tx() as s:
        for d, ev, ep in delivery_repo.due(s, now, limit, cfg.per_token, held):
            d.updated_at = now
            if ev.owner_id is not None and not still_held(
                engine.settings.service_tokens, ep.owners or []
            ):
                # SECURITY: owner isolation at send time too: no token acts any more for every
                # owner this endpoint was made for (the deployment moved an owner to another
                # token), so nothing of theirs is sent; staff may replay it once it is right.
                d.status, d.next_attempt_at = DeliveryStatus.dead_letter, None
                d.claimed_by = d.claimed_until = None
                d.last_error = (
                    "not sent: no service token acts any more for every owner of this endpoint"
                )
                delivery_repo.followers_due_at(s, d, now, later=False)
                continue
            if d.attempts >= cfg.max_attempts:
                # The previous holder died during the final try: out of tries, not lost.
                d.status, d.next_attempt_at = DeliveryStatus.dead_letter, None
                d.claimed_by = d.claimed_until = None
                d.last_error = "worker lost during the final attempt (lease expired)"
                delivery_repo.followers_due_at(s, d, now, later=False)
                continue
            d.attempts += 1
            d.claimed_by, d.claimed_until = worker_name, now + timedelta(seconds=cfg.lease_s)
            body = canonical_json(envelope(ev))
            jobs.append(Job(d.id, ev.id, ep.id, ep.url, ep.secret, body, ep.principal))
    return jobs


async def post(
    http: httpx.AsyncClient,
    job: Job,
    allow_any_host: bool = False,
    timeout_s: float = 10.0,
    private_networks: Sequence[str] = (),
    lookups: Lookups | None = None,
) -> Result:
    """One signed POST, answered within `timeout_s`; never raises (a failure is a result to
    record). With any host allowed, a host named is resolved here (on `lookups`, the
    sweep's, or threads of this POST's own) and the POST goes to the address checked
    (`_pinned`), with the name as Host and TLS server name."""
    problem = url_problem(job.url, allow_any_host, private_networks)
    if problem is not None:
        # SECURITY: re-checked at send time, so a URL stored before a setting changed (or
        # written to the table directly) still cannot make this machine send elsewhere.
        return Result(False, None, f"not sent: url {problem}", "host_not_allowed", 0.0)
    problem = secret_problem(job.secret)
    if problem is not None:
        # SECURITY: a legacy secret is never used to sign (no verifier could check it, and
        # the package would silently sign with a mangled key); the owner rotates it.
        return Result(
            False,
            None,
            f"not sent: the endpoint's secret {problem}; rotate it with "
            f"POST /v1/webhook-endpoints/{job.endpoint_id}/rotate-secret",
            "legacy_secret",
            0.0,
        )
    headers = {
        "Content-Type": "application/json",
        **signed_headers(job.secret, job.event_id, job.body, signing_time()),
    }
    start = time.perf_counter()
    # SECURITY: the timeout bounds the whole exchange, not each read of it (httpx's own
    # timeouts are per operation): a receiver dripping its answer a byte at a time held the
    # round, and every other tenant's deliveries behind it, for as long as it kept dripping.
    end = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(end):
            request = http.build_request("POST", job.url, content=job.body, headers=headers)
            if allow_any_host:
                refused = await _pinned(request, private_networks, lookups, job.principal)
                if refused is not None:
                    return Result(False, None, refused, "host_not_allowed", 0.0)
            r = await http.send(request, stream=True)
    except (TimeoutError, httpx.TimeoutException):
        return Result(
            False,
            None,
            f"timeout: no answer within {timeout_s:g} s",
            "timeout",
            time.perf_counter() - start,
        )
    except httpx.ProtocolError as e:
        # SECURITY: the HTTP parser's message quotes the line it could not read, which the
        # receiver wrote: one echoing the request there put the event's payload in last_error.
        return Result(
            False,
            None,
            f"{type(e).__name__}: the answer is not valid HTTP (not kept)",
            "connect",
            time.perf_counter() - start,
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
    try:
        code = r.status_code
        latency = time.perf_counter() - start
        if 200 <= code < 300:
            # A 2xx is the receiver's acknowledgement: its body is never waited for.
            return Result(True, code, None, "delivered", latency)
        try:
            async with asyncio.timeout_at(end):
                answer = await _read_some(r)
        except (TimeoutError, httpx.HTTPError):
            answer = b""  # the status says what happened; the rest of the answer is noise
        return Result(False, code, answer_error(code, answer), f"http_{code // 100}xx", latency)
    finally:
        await r.aclose()


async def _pinned(
    request: httpx.Request,
    private_networks: Sequence[str],
    lookups: Lookups | None = None,
    principal: str = "",
) -> str | None:
    """Resolve a named host once, refuse it when any of its addresses is not allowed, and
    point the request at the first: the address checked is the one connected to, so a name
    that resolves to a public address when checked and to a private one when connecting
    (DNS rebinding) reaches nothing private. None when the request may go."""
    # SECURITY: the host as sent and as url_problem checked it, in ASCII (an IDN as its
    # punycode A-label). `.host` is httpx's Unicode form, which the socket and ssl modules
    # encode again with Python's IDNA 2003 codec: `xn--fa-hia.de` (faß.de) was resolved, and
    # its certificate checked, as `fass.de`, another registered domain.
    host = request.url.raw_host.decode("ascii").lower()
    if _literal_ip(host) is not None:
        return None  # checked by url_problem; nothing to resolve
    port = request.url.port or _DEFAULT_PORTS[request.url.scheme]
    try:
        found = await _resolve(host, port, lookups, principal)
    except OSError as e:
        raise httpx.ConnectError(f"name not resolved: {e.strerror or e}") from None
    # SECURITY: every address, not only the first: a name with one public and one private
    # address would otherwise reach the private one whenever the resolver's order changes.
    if not found or not all(address_allowed(ip, private_networks) for ip in found):
        return f"not sent: url host {host!r} resolves to an address that {_NOT_PUBLIC}"
    # The Host header was written from the name when the request was built; the TLS
    # certificate is checked against the name too (httpcore's sni_hostname).
    request.url = request.url.copy_with(host=str(found[0]))
    request.extensions["sni_hostname"] = host
    # SECURITY: the client pools connections by the address a request names, and pinned,
    # two names at one address (a CDN, a shared ingress) would share one: another tenant's
    # event sent over a TLS session verified for this name. A pinned connection is never
    # kept for another request.
    request.headers["Connection"] = "close"
    return None


async def _resolve(
    host: str, port: int, lookups: Lookups | None = None, principal: str = ""
) -> list[IPAddress]:
    """`host`'s addresses, looked up on `lookups` (a POST on its own: on a pool of its own)."""
    if lookups is not None:
        return await lookups.resolve(principal, host, port)
    own = Lookups(1)
    try:
        return await own.resolve(principal, host, port)
    finally:
        own.close()


def _addresses(host: str, port: int) -> list[IPAddress]:
    # `socket.getaddrinfo` read at call time (tests stand a resolver in for it).
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


class Lookups:
    """Where a delivery sweep resolves its endpoints' host names (any host allowed): threads
    of its own, at most `size` (the sweep's concurrency), never the event loop's default
    executor, which runs every claim and outcome write. A lookup cannot be stopped: one the
    POST's timeout gave up on (a tenant's DNS server that never answers) runs until the
    system resolver gives up. Until its thread returns it holds a slot of the sweep (`len`)
    and one of its token (`held`, counted with the leases when claiming), so the threads in
    use never outnumber the pool (no lookup waits behind another tenant's), and a tenant's
    names that hang hold its own slots, never the others'."""

    def __init__(self, size: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="webhook-dns")
        self._lock = threading.Lock()
        self._given_up: dict[Future[list[IPAddress]], str] = {}  # lookup -> its token

    async def resolve(self, principal: str, host: str, port: int) -> list[IPAddress]:
        lookup = self._pool.submit(_addresses, host, port)
        lookup.add_done_callback(self._returned)
        try:
            return await asyncio.wrap_future(lookup)
        finally:
            # Cancelled (the POST's timeout) while its thread runs: the thread runs on. The
            # lock orders this with `_returned`, which runs once the lookup is done.
            with self._lock:
                if not lookup.done():
                    self._given_up[lookup] = principal

    def _returned(self, lookup: Future[list[IPAddress]]) -> None:
        with self._lock:
            self._given_up.pop(lookup, None)

    def held(self) -> dict[str, int]:
        """Per token, the lookups given up on whose threads still run."""
        with self._lock:
            return dict(Counter(self._given_up.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._given_up)

    def close(self) -> None:
        # Not waited for: a lookup still running ends on its own, its thread with it.
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _read_some(r: httpx.Response) -> bytes:
    # Only the start of the answer: a receiver cannot make us buffer a large body.
    got = b""
    async for chunk in r.aiter_raw():
        got += chunk
        if len(got) >= _ANSWER_BYTES:
            break
    return got[:_ANSWER_BYTES]


def answer_error(code: int, answer: bytes) -> str:
    """last_error for a receiver's answer other than 2xx: its status and, when it had a body,
    a fingerprint of the body's start (the first 16 hex digits of its sha256: the same on
    each try when the receiver answers the same), never the body's text."""
    # SECURITY: a receiver may echo the request in its answer (many frameworks' error pages
    # do): its text in last_error put the event's payload in listings that show it only with
    # --include-payload. No part of an answer is kept, only this fixed-length fingerprint.
    if not answer:
        return f"HTTP {code}"
    digest = hashlib.sha256(answer).hexdigest()[:_FINGERPRINT_HEX]
    return f"HTTP {code} (answer not kept; sha256 of its start: {digest})"


def stored_text(text: str | None) -> str | None:
    """Text about a delivery a receiver may have a hand in (an error about its connection or
    its answer), as it may be stored: control characters (NUL, which PostgreSQL text cannot
    hold, among them), and what is not a character at all (lone surrogates), each run of
    them a space, and bounded.
    """
    if text is None:
        return None
    # SECURITY: a receiver may write some of this text; a NUL in it made the write of the
    # whole round fail on PostgreSQL, and other control characters garble logs and staff views.
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return clean[:_STORED_ERROR_CHARS]


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
            delivery_repo.followers_due_at(s, d, t, later=False)
            return "delivered"
        if d.claimed_by != worker_name:
            return "stale"  # our lease ran out and another worker owns the row now
        d.last_error, d.last_status_code = stored_text(res.error), res.status_code
        d.claimed_by = d.claimed_until = None
        if d.attempts >= cfg.max_attempts:
            d.status, d.next_attempt_at = DeliveryStatus.dead_letter, None
            delivery_repo.followers_due_at(s, d, t, later=False)
            return "dead_lettered"
        d.next_attempt_at = t + backoff(d.attempts, cfg)
        # The resource's next events wait for this one: out of the claims' way meanwhile.
        delivery_repo.followers_due_at(s, d, d.next_attempt_at, later=True)
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
    audit.require_context(op, "to replay", incident=False)
    t = now or wall_now()
    with engine.db.tx() as s:
        ev = _event_of(s, any_id)
        rows = delivery_repo.dead_letters_locked(s, ev.id, any_id if any_id != ev.id else None)
        if not rows:
            raise Conflict("not_dead_letter", f"{any_id}: nothing in the dead-letter queue")
        replayed = []
        for d, _, ep in rows:
            # SECURITY: read under the endpoint's row lock (dead_letters_locked): a delete
            # at the same time cancelled only what was pending in its view, so a delivery put
            # back in the queue unseen stayed pending for good to an endpoint no longer there.
            if not ep.active:
                raise Conflict(
                    "endpoint_inactive",
                    f"endpoint {ep.id} was deleted; its deliveries cannot be replayed",
                )
            # SECURITY: a receiver applies a resource's events in the order they arrive: an
            # `entitlement.activated` replayed after the `entitlement.revoked` it already has
            # would give back access staff took away. Nor replayed alone when that revocation
            # dead-lettered too: the receiver would take "active" as the current state.
            newer = delivery_repo.later_sent(s, ep.id, ev)
            if newer is not None:
                raise Conflict(
                    "event_superseded",
                    f"endpoint {ep.id} has a later event about {ev.resource_type} "
                    f"{ev.resource_id} ({newer}), sent or to be sent: replayed, this one would "
                    "arrive as the current state; replay the later one (it carries the "
                    "current state); nothing was replayed",
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
