"""Configuration from the environment (RAILPROOF_*), read once through pydantic-settings.

Per-rail and per-network values (RAILPROOF_TREASURY_<RAIL_ID>, RAILPROOF_NETWORK_<RAIL_ID>,
RAILPROOF_ASSET_<RAIL_ID>, RAILPROOF_RPC_<NETWORK>, RAILPROOF_RPC_{TIMEOUT_S,ATTEMPTS,TOTAL_S}_
<NETWORK>) have open-ended names, so they are read from the environment mapping the settings
were built from.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rails.files import read_regular
from rails.rpc_policy import MAX_RPC_S, RpcPolicy
from registry.catalog import RailOverrides

REPO_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
# The cassettes the demo and `railproof rehearse` replay, shipped in the wheel (copies of
# fixtures/solana/generated/, kept identical by tests/test_packaging.py). A source checkout
# serves every recorded chain under fixtures/; an installed wheel, the packaged ones.
PACKAGED_CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"
DEFAULT_CASSETTE_DIR = REPO_FIXTURES if REPO_FIXTURES.is_dir() else PACKAGED_CASSETTES

CsvList = Annotated[list[str], NoDecode]


# The longest any duration may be: added to (or taken from) now, it stays a date, where a
# larger one overflowed the first datetime it met (a 500 on every request that did).
_YEAR_S = 365 * 24 * 3600
MAX_DURATION_S = _YEAR_S  # what the API's schema admits; a deployment sets its own below
_YEAR_DAYS = 365
# PostgreSQL's own largest lock_timeout / statement_timeout (a 32-bit count of ms, ~24.8 days):
# a larger one fails every connection.
_PG_MAX_MS = 2**31 - 1
# The owner ids a session can name (http.models `Id`, SessionIn.owner_id), and so the only
# ones a service token may act for.
OWNER_ID = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")
# How a token's principal names a long owner list (services.principals), so no owner id's.
HASHED_PRINCIPAL = "sha256:"
_SEPARATORS = str.maketrans("", "", ".-_")


_HEX_TOKEN = re.compile(r"[0-9a-fA-F]{64,}")
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{43,}={0,2}|[A-Za-z0-9_-]{43,}={0,2}")


def reads_as_random(token: str) -> bool:
    """Whether a token reads as at least 256 random bits: 64+ hex digits, or 43+ characters of
    one base64 alphabet, mixing what random text of that length mixes (letters and digits;
    both cases in base64) with enough distinct characters. A safeguard against a passphrase
    or a pattern put where a random token belongs, not a proof of randomness: the operator
    who lists a staff member in RAILPROOF_STAFF_LOCKOUT_EXEMPT makes their token at random."""
    if _HEX_TOKEN.fullmatch(token):
        low = token.lower()
        return (
            len(set(low)) >= 12
            and any(c.isdigit() for c in low)
            and not low.isdigit()
            and not any(low.count(low[:n]) * n == len(low) for n in range(1, len(low) // 2 + 1))
        )
    if _BASE64_TOKEN.fullmatch(token):
        return (
            len(set(token)) >= 24
            and any(c.isdigit() for c in token)
            and any(c.islower() for c in token)
            and any(c.isupper() for c in token)
        )
    return False


def staff_name_key(name: str) -> str:
    """What two staff names must not share: the name case-folded, without . - _ (names are
    ASCII), so "ops1", "OPS1" and "ops-1." are one person."""
    return name.casefold().translate(_SEPARATORS)


# The names railproof's own actors sign the audit trail with (the worker, a submission,
# discovery, the catalog, a service), and the prefix of a tenant's principal: a staff member
# so named would pass for them there.
SYSTEM_ACTORS = frozenset({"worker", "system", "discovery", "catalog", "service"})
PRINCIPAL_PREFIX = "svc:"
AUDIT_KEY_MISSING = (
    "no audit key: set RAILPROOF_AUDIT_KEY (the key) or RAILPROOF_AUDIT_KEY_FILE "
    "(a file holding it); the audit log is keyed with it (docs/security.md)"
)
AUDIT_KEY_MISMATCH = (
    "RAILPROOF_AUDIT_KEY: not the key the audit chain was written with (its newest event's "
    "hash does not match); set the deployment's key, or run `railproof audit verify` with it "
    "to see whether the chain itself was altered"
)
AUDIT_CHAIN_UNKEYED = (
    "the audit chain verifies only without a key: either a database written by railproof "
    "0.1.0, to anchor under the deployment's RAILPROOF_AUDIT_KEY once with `railproof audit "
    "adopt-key --incident-id … --operator-reason … --confirm`, or a chain rewritten by "
    "someone without the key; compare it with an off-host checkpoint or backup first "
    "(docs/security.md)"
)


class Settings(BaseSettings):
    # No infinite or NaN durations or rates: `inf` passes a `gt=0` bound and then overflows
    # the first datetime it is added to, in a sweep that logs it and tries again for good.
    model_config = SettingsConfigDict(env_prefix="RAILPROOF_", extra="ignore", allow_inf_nan=False)

    database_url: str = "sqlite:///./railproof.db"
    # SQLite only. NORMAL (WAL) survives any application or process crash, but a power loss
    # or OS crash may drop the last commits; FULL fsyncs every commit (up to ~1.7 ms each on
    # the development machine's busy disk, three per submission). See docs/bench.md.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    chain: Literal["cassette", "live"] = "cassette"
    cassette_dir: Path = DEFAULT_CASSETTE_DIR
    service_tokens: dict[str, list[str]] = Field(default_factory=dict)
    staff_tokens: dict[str, str] = Field(default_factory=dict)
    # Staff whose tokens still pass an address whose sign-in tries are used up (the kill
    # switch within reach of operators sharing an address with a guesser): each of their
    # tokens must read as 256 random bits (`reads_as_random`), checked at start.
    staff_lockout_exempt: CsvList = Field(default_factory=list)
    live_apply: bool = False
    auto_apply: bool = False
    # Whether a session may name its own Solana reference (DESIGN allows it). A chosen key
    # cannot be proven unique to one payment (README, "Binding"): off where tenants are not
    # trusted with that, and every reference is one railproof generated.
    client_references: bool = True
    apply_rail_allowlist: CsvList = Field(default_factory=lambda: ["solana_usdc"])
    receipt_creation_rails: CsvList = Field(default_factory=list)
    clock: datetime | None = None
    # The port `railproof serve` listens on: $PORT, as hosting platforms set it (no prefix).
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("port", "PORT"))
    # The operator CLI's API and token. Empty: http://127.0.0.1:$PORT (filled in below).
    api_base_url: str = ""
    staff_token: str | None = None
    # engine policies
    session_ttl_seconds: int = Field(default=3600, ge=60, le=_YEAR_S)
    max_session_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=_YEAR_S)
    tx_not_found_grace_seconds: int = Field(default=900, ge=0, le=_YEAR_S)
    # How far a transfer's chain time may be before the creation, on railproof's clock, of a
    # session whose reference railproof generated (a Solana block time is the validators'
    # estimate); other sessions allow none (services.proofs.terms_for).
    chain_clock_skew_seconds: int = Field(default=30, ge=0, le=600)
    # How long a requested rail change (production state, treasury) may wait for its second
    # staff member: older, it can be rejected, not approved (ask for the change again).
    approval_max_age_seconds: int = Field(default=72 * 3600, ge=60, le=_YEAR_S)
    stuck_claim_seconds: int = Field(default=300, ge=1, le=_YEAR_S)
    claim_lease_seconds: int = Field(default=120, ge=1, le=_YEAR_S)
    rate_limit_per_second: float = Field(default=20.0, ge=0)  # 0 turns limiting off
    rate_limit_burst: int = Field(default=40, ge=1)
    # Console logins tried per client address a minute (0: not limited).
    console_logins_per_minute: int = Field(default=10, ge=0, le=10_000)
    # The console's public origins (scheme://host[:port]) as browsers name them, behind a
    # proxy that sends its upstream's address as Host or terminates TLS. Empty: the Origin
    # of a console form must be the request's own scheme and Host.
    console_origin: CsvList = Field(default_factory=list)
    # /docs (Swagger UI) and /redoc: a large script bundle on the console's origin. A
    # production deployment whose operators need no API browser turns them off.
    api_docs: bool = True
    # Rate-limit buckets shared by every API process in Redis (redis://host:6379/0); unset:
    # each process keeps its own. The prefix separates deployments sharing one Redis.
    redis_url: str | None = Field(default=None, pattern=r"^(rediss?|unix)://\S+$")
    redis_key_prefix: str = Field(default="railproof", min_length=1, max_length=64)
    rpc_quorum: int = Field(default=1, ge=1)
    # Live RPC bounds; each also per network (rpc_policy). Defaults of RpcPolicy.
    rpc_timeout_s: float = Field(default=8.0, gt=0, le=MAX_RPC_S)
    rpc_attempts: int = Field(default=3, ge=1, le=100)
    rpc_total_s: float = Field(default=20.0, gt=0, le=MAX_RPC_S)
    # What is not decided by then is answered pending and finished by the worker, which
    # keeps the RPC policy's longer bounds.
    submit_verify_budget_s: float = Field(default=3.0, gt=0, le=MAX_RPC_S)
    # PostgreSQL: no transaction waits for a lock, or runs a statement, for ever (0: no limit).
    pg_lock_timeout_ms: int = Field(default=5000, ge=0, le=_PG_MAX_MS)
    pg_statement_timeout_ms: int = Field(default=30000, ge=0, le=_PG_MAX_MS)
    # PostgreSQL: submission-path requests one API process works on at once, a request
    # waiting on the chain not counted (core.inline.Slots). 0: no limit.
    pg_work_slots: int = Field(default=2, ge=0)
    # The audit chain's HMAC key (docs/security.md): never stored in the database.
    audit_key: SecretStr | None = None
    audit_key_file: str | None = None
    # When set, GET /metrics answers only `Authorization: Bearer <this>` (Prometheus'
    # `authorization.credentials_file`): its counters are not for tenants to read.
    metrics_token: SecretStr | None = None
    # Webhook delivery (verifier.services.webhooks): durations up to a year, so that a lease
    # or a backoff added to now stays a date.
    webhook_allow_any_host: bool = False
    # With any host allowed, the private networks (CIDR) receivers may still be in: every
    # other non-public address (loopback, RFC 1918, link-local, metadata) is refused.
    webhook_private_networks: CsvList = Field(default_factory=list)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=_YEAR_S)
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_backoff_initial_seconds: float = Field(default=30.0, ge=0, le=_YEAR_S)
    webhook_backoff_max_seconds: float = Field(default=6 * 3600.0, ge=0, le=_YEAR_S)
    webhook_backoff_jitter_seconds: float = Field(default=30.0, ge=0, le=_YEAR_S)
    webhook_lease_seconds: float = Field(default=120.0, gt=0, le=_YEAR_S)
    webhook_concurrency: int = Field(default=32, ge=1)
    # Deliveries in flight to one token's endpoints at a time: receivers that hang hold no more.
    webhook_token_concurrency: int = Field(default=2, ge=1)
    # Reconciliation (verifier.services.reconciliation) and discovery (…discovery).
    reconcile_verified_sla_seconds: int = Field(default=3600, ge=0, le=_YEAR_S)
    reconcile_pending_sla_seconds: int = Field(default=7200, ge=0, le=_YEAR_S)
    reconcile_max_pages: int = Field(default=50, ge=1)  # getSignaturesForAddress pages per run
    reconcile_evm_max_range: int = Field(default=2000, ge=1)  # eth_getLogs blocks per request
    # Blocks one EVM chain_inflows run reads: a longer window ends the run `incomplete`.
    reconcile_evm_max_blocks: int = Field(default=1_000_000, ge=1)
    # None: on with RAILPROOF_CHAIN=live for rails whose treasury is configured; off otherwise.
    # Release-gate evidence older than this no longer counts (0: never expires).
    release_gate_max_age_days: int = Field(default=30, ge=0, le=_YEAR_DAYS)
    discovery: bool | None = None
    discovery_page_limit: int = Field(default=1000, ge=1, le=1000)
    discovery_max_backoff_s: float = Field(default=60.0, ge=0, le=_YEAR_S)
    discovery_evm_lookback_blocks: int = Field(default=2000, ge=1)
    # How long one discovery cycle walks a Solana treasury, and then looks up a rail's
    # references: the walk goes on from where it stopped, and references not reached have
    # the first turn, next cycle.
    discovery_cycle_budget_s: float = Field(default=2.0, gt=0, le=3600)
    env: Mapping[str, str] = Field(default_factory=lambda: dict(os.environ), exclude=True)

    @field_validator(
        "apply_rail_allowlist",
        "receipt_creation_rails",
        "webhook_private_networks",
        "staff_lockout_exempt",
        "console_origin",
        mode="before",
    )
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("webhook_private_networks", mode="after")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None
        return out

    @field_validator("console_origin", mode="after")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(web_origin(item) for item in v))

    @field_validator("service_tokens", "staff_tokens", mode="before")
    @classmethod
    def _json(cls, v: Any) -> Any:
        if isinstance(v, str):
            return json.loads(v) if v.strip() else {}
        return v

    @field_validator("service_tokens", mode="after")
    @classmethod
    def _owner_ids(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        # SECURITY: a token's owners name its principal (services.principals: sorted, joined
        # with commas), which keys its idempotency claims, rate limits and webhook endpoints;
        # an owner id holding a comma would give two tokens for different owners one principal.
        # The message never repeats a token.
        for owners in v.values():
            if not owners:
                raise ValueError("every token acts for at least one owner id")
            for owner in owners:
                if not OWNER_ID.fullmatch(owner):
                    raise ValueError(
                        f"owner id {owner!r} is not one a session can name (1-128 of "
                        "A-Z a-z 0-9 _ . : @ -)"
                    )
                # SECURITY: a token for many owners is named `svc:sha256:<hex>`; a token for
                # the one owner `sha256:<hex>` would be named the same and share its claims,
                # rate limits and webhook endpoints.
                if owner.lower().startswith(HASHED_PRINCIPAL):
                    raise ValueError(
                        f"owner id {owner!r}: an owner id must not begin with "
                        f"{HASHED_PRINCIPAL!r} (the form a token for many owners is named by)"
                    )
        return v

    @field_validator("staff_tokens", mode="after")
    @classmethod
    def _staff_names(cls, v: dict[str, str]) -> dict[str, str]:
        # SECURITY: the two-person rule compares staff names, and the audit trail shows them:
        # "op1 ", "OP1" or "op1." beside "op1" would be one person passing as two. A name may
        # be on several tokens (the same person's); names that differ only in case or in the
        # separators . - _ are refused.
        seen: dict[str, str] = {}
        for name in v.values():
            if not OWNER_ID.fullmatch(name):
                raise ValueError(
                    f"staff name {name!r} is not a name (1-128 of A-Z a-z 0-9 _ . : @ -)"
                )
            folded = name.casefold()
            if staff_name_key(name) in SYSTEM_ACTORS or folded.startswith(
                (PRINCIPAL_PREFIX, HASHED_PRINCIPAL)
            ):
                raise ValueError(
                    f"staff name {name!r} is reserved: the audit trail names railproof's own "
                    f"actors so ({', '.join(sorted(SYSTEM_ACTORS))}), and tenants by names "
                    f"beginning {PRINCIPAL_PREFIX!r}"
                )
            other = seen.setdefault(staff_name_key(name), name)
            if other != name:
                raise ValueError(
                    f"staff names {other!r} and {name!r} differ only in case or in . - _ "
                    "(the two-person rule would take one person for two)"
                )
        return v

    @field_validator(
        "port",
        "webhook_allow_any_host",
        "webhook_timeout_seconds",
        "webhook_max_attempts",
        "webhook_backoff_initial_seconds",
        "webhook_backoff_max_seconds",
        "webhook_backoff_jitter_seconds",
        "webhook_lease_seconds",
        "webhook_concurrency",
        "webhook_token_concurrency",
        "redis_url",
        mode="before",
    )
    @classmethod
    def _empty_is_default(cls, v: Any, info: ValidationInfo) -> Any:
        # An exported but empty variable has always meant "not set" for these.
        if isinstance(v, str) and not v.strip() and info.field_name:
            return cls.model_fields[info.field_name].default
        return v

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url(cls, v: str) -> str:
        from verifier.storage.db import check_url  # storage imports this module

        check_url(v)
        return v

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None:
            _check_service_url("RAILPROOF_REDIS_URL", v, host=not v.startswith("unix:"))
        return v

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator("clock", mode="after")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        # In UTC whatever offset it was written with: SQLite keeps a time's digits, not its
        # offset, so 00:00+05:00 was read back as 00:00 UTC (every stored time five hours
        # off, and the audit chain, hashed over the instant, reported as tampered).
        if v is not None:
            try:
                v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
            except OverflowError:  # 0001-01-01T00:00+01:00 is a time before year 1 in UTC
                raise ValueError("outside the representable UTC range") from None
        return v

    @model_validator(mode="after")
    def _token_scopes(self) -> Settings:
        # SECURITY: a token is a tenant's, a staff member's or the metrics scraper's, never two
        # of these: a tenant's token that is also staff would reach every /v1/admin route.
        # The message never repeats a token.
        tables = {
            "RAILPROOF_SERVICE_TOKENS": set(self.service_tokens),
            "RAILPROOF_STAFF_TOKENS": set(self.staff_tokens),
            "RAILPROOF_METRICS_TOKEN": (
                {self.metrics_token.get_secret_value()} if self.metrics_token else set()
            ),
        }
        names = list(tables)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if tables[a] & tables[b]:
                    raise ValueError(f"a token is in both {a} and {b}: give each its own")
        return self

    @model_validator(mode="after")
    def _lockout_exempt(self) -> Settings:
        for name in self.staff_lockout_exempt:
            tokens = [t for t, n in self.staff_tokens.items() if n == name]
            if not tokens:
                raise ValueError(
                    f"RAILPROOF_STAFF_LOCKOUT_EXEMPT: {name!r} is not a staff name of "
                    "RAILPROOF_STAFF_TOKENS"
                )
            # SECURITY: an exempt token is told right from a locked address: only one no
            # guessing finds may be (a passphrase would be confirmed at any rate).
            if not all(reads_as_random(t) for t in tokens):
                raise ValueError(
                    f"RAILPROOF_STAFF_LOCKOUT_EXEMPT: a token of {name!r} does not read as 256 "
                    "random bits (make it with `openssl rand -hex 32`)"
                )
        return self

    def lockout_exempt(self, token: str) -> bool:
        """Whether `token` is an exempt staff member's: it passes a locked address."""
        return bool(self.staff_lockout_exempt) and self.staff_name(token) in set(
            self.staff_lockout_exempt
        )

    @model_validator(mode="after")
    def _no_fixed_clock_live(self) -> Settings:
        # SECURITY: a fixed clock would let expired sessions and authorizations pass on live data.
        if self.chain == "live" and self.clock is not None:
            raise ValueError("RAILPROOF_CLOCK is refused when RAILPROOF_CHAIN=live")
        return self

    @model_validator(mode="after")
    def _api_base_url(self) -> Settings:
        url = self.api_base_url.strip().rstrip("/")
        self.api_base_url = url or f"http://127.0.0.1:{self.port}"
        return self

    @model_validator(mode="after")
    def _session_ttls(self) -> Settings:
        # The default lifetime is what a session asking for none gets: above the longest
        # allowed, every such session would be refused, blaming a field the client never sent.
        if self.session_ttl_seconds > self.max_session_ttl_seconds:
            raise ValueError(
                f"RAILPROOF_SESSION_TTL_SECONDS ({self.session_ttl_seconds}) must not be longer "
                f"than RAILPROOF_MAX_SESSION_TTL_SECONDS ({self.max_session_ttl_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _webhook_lease(self) -> Settings:
        # A lease shorter than a POST could hand a delivery in flight to a second worker.
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                "RAILPROOF_WEBHOOK_LEASE_SECONDS must be longer than "
                "RAILPROOF_WEBHOOK_TIMEOUT_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _rpc_policies(self) -> Settings:
        # Per-network RPC bounds fail at startup, naming the variable, not at the first call.
        for key in self.env:
            for prefix in _RPC_POLICY_KEYS:
                if key.startswith(prefix) and len(key) > len(prefix):
                    self.rpc_policy(key[len(prefix) :])
        return self

    @model_validator(mode="after")
    def _rpc_urls(self) -> Settings:
        # A URL the transport could not read fails at startup, naming the variable, not at
        # the first call with the driver's message (which quotes the password).
        fields = {env_var(f) for f in Settings.model_fields}
        for key in self.env:
            if (
                key.startswith("RAILPROOF_RPC_")
                and key not in fields
                and not any(key.startswith(prefix) for prefix in _RPC_POLICY_KEYS)
            ):
                for url in self.rpc_urls(key.removeprefix("RAILPROOF_RPC_")):
                    _check_service_url(key, url, schemes=("http", "https"))
        return self

    # -- derived ------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock or datetime.now(UTC)

    def rail_overrides(self, rail_id: str) -> RailOverrides:
        key = rail_id.upper()
        return RailOverrides(
            network=self.env.get(f"RAILPROOF_NETWORK_{key}") or None,
            asset=self.env.get(f"RAILPROOF_ASSET_{key}") or None,
            treasury=self.env.get(f"RAILPROOF_TREASURY_{key}") or None,
        )

    def rpc_urls(self, network: str) -> list[str]:
        raw = self.env.get("RAILPROOF_RPC_" + network.upper().replace("-", "_"), "")
        return [u.strip() for u in raw.split(",") if u.strip()]

    def rpc_policy(self, network: str) -> RpcPolicy:
        """The live RPC bounds for `network`: RAILPROOF_RPC_<BOUND>_<NETWORK> where set,
        else the global RAILPROOF_RPC_<BOUND>."""
        key = network.upper().replace("-", "_")
        values: dict[str, Any] = {
            "timeout_s": self.rpc_timeout_s,
            "attempts": self.rpc_attempts,
            "total_s": self.rpc_total_s,
        }
        for prefix, field in _RPC_POLICY_KEYS.items():
            raw = self.env.get(prefix + key, "").strip()
            if raw:
                values[field] = raw
        try:
            return RpcPolicy(**values)
        except ValidationError as e:
            # One line naming the variable, as every other setting's error does.
            by_field = {f: p + key for p, f in _RPC_POLICY_KEYS.items()}
            err = e.errors(include_url=False)[0]
            field = str(err["loc"][0]) if err.get("loc") else ""
            name = by_field.get(field, f"RAILPROOF_RPC_*_{key}")
            raise ValueError(f"{name}: {err.get('msg', 'invalid')}") from None

    def service_owners(self, token: str) -> list[str] | None:
        return _lookup(self.service_tokens, token)

    def staff_name(self, token: str) -> str | None:
        return _lookup(self.staff_tokens, token)

    def known_token(self, token: str) -> bool:
        """Whether `token` is on any list (service, staff, metrics)."""
        metrics = self.metrics_token.get_secret_value() if self.metrics_token else None
        return (
            self.service_owners(token) is not None
            or self.staff_name(token) is not None
            or (metrics is not None and hmac.compare_digest(metrics.encode(), token.encode()))
        )

    def audit_key_bytes(self) -> bytes | None:
        """The audit chain's key: RAILPROOF_AUDIT_KEY, or the contents (stripped) of
        RAILPROOF_AUDIT_KEY_FILE; None when neither is set. ValueError when both are set or
        the file cannot be read or is empty."""
        text = self.audit_key.get_secret_value() if self.audit_key is not None else ""
        path = Path(self.audit_key_file) if self.audit_key_file else None
        if path is None:
            return text.encode() or None
        # SECURITY: two sources that could disagree would key processes differently.
        if text:
            raise ValueError(
                "RAILPROOF_AUDIT_KEY and RAILPROOF_AUDIT_KEY_FILE are both set; set one of them"
            )
        try:
            key = read_regular(path).strip()  # a pipe or a device would hang the process
        except OSError as e:
            raise ValueError(
                f"RAILPROOF_AUDIT_KEY_FILE: cannot read {path}: {e.strerror}"
            ) from None
        if not key:
            raise ValueError(f"RAILPROOF_AUDIT_KEY_FILE: {path} is empty")
        return key


_RPC_POLICY_KEYS = {
    "RAILPROOF_RPC_TIMEOUT_S_": "timeout_s",
    "RAILPROOF_RPC_ATTEMPTS_": "attempts",
    "RAILPROOF_RPC_TOTAL_S_": "total_s",
}


def _check_service_url(
    name: str, url: str, *, host: bool = True, schemes: tuple[str, ...] = ()
) -> None:
    """ValueError naming `name`, never the URL (it may hold a password), when `url` is not one
    its client can read: a credential with an unescaped '#', '/' or '?' ends the host early,
    and urllib then takes the password for the port (and says so, quoting it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        # SECURITY: an '@' after the host is the rest of a misread user information.
        readable = "@" not in parts.path + parts.query + parts.fragment
    except ValueError:
        readable = False
    if not readable:
        raise ValueError(
            f"{name}: not a URL that can be read; percent-encode a '#', '/', '?' or '@' in "
            "its user name or password"
        )
    if schemes and parts.scheme not in schemes:
        raise ValueError(f"{name}: the scheme must be {' or '.join(schemes)}")
    if host and not parts.hostname:
        raise ValueError(f"{name}: a URL without a host")


_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN_HOST = re.compile(r"[a-z0-9.\-]+|[0-9a-f:.]+")  # a name, IPv4, or IPv6 (bracketed)


def web_origin(value: str) -> str:
    """`value` as a browser's Origin header says it (`https://ops.example.com`,
    `http://10.0.0.5:8080`: lower case, no default port), or ValueError saying why it is not an
    origin: an http(s) scheme and a host, a port at most; no path, query or user name."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port])") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not _ORIGIN_HOST.fullmatch(host):
        raise ValueError(
            f"{value!r} is not an origin: http:// or https:// and an ASCII host name (an "
            "international one in its xn-- form), e.g. https://ops.example.com"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"{value!r} is not an origin: scheme://host[:port] only, with no path, query or "
            "user name"
        )
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, _DEFAULT_PORTS[scheme]) else "")


def _lookup(table: Mapping[str, Any], token: str) -> Any:
    # SECURITY: compare every configured token in constant time, and do not stop at the first
    # match, so timing says nothing about which token (or how much of one) was right.
    found = None
    given = token.encode()
    for candidate, value in table.items():
        if hmac.compare_digest(candidate.encode(), given):
            found = value
    return found


BEARER_TOKEN_RULE = (
    "the token must be printable ASCII with no spaces or line breaks around it (a token "
    "read from a file keeps its newline)"
)


def bearer_token_ok(token: str) -> bool:
    """Whether `token` can be sent as `Authorization: Bearer <token>` as it is.

    SECURITY: HTTP refuses a header value with control characters or a space at either end,
    and httpx says so by quoting the whole header, the token included: a client checks its
    token with this before sending it, and names the variable, never the token
    (BEARER_TOKEN_RULE says why)."""
    return bool(token) and token.isascii() and token.isprintable() and token == token.strip()


def default_api_base_url(environ: Mapping[str, str] | None = None) -> str:
    """Where the operator CLI and the demo find the API: RAILPROOF_API_BASE_URL, else the
    loopback port `railproof serve` (and `make serve`) listens on: $PORT, else 8000."""
    env = os.environ if environ is None else environ
    url = env.get("RAILPROOF_API_BASE_URL")
    if url:
        return url.rstrip("/")
    return f"http://127.0.0.1:{env.get('PORT') or 8000}"


# RAILPROOF_* names read outside the Settings fields: the open-ended per-network and per-rail
# families, and the names the demo and the test suites read.
ENV_PREFIXES = (
    "RAILPROOF_RPC_",  # RAILPROOF_RPC_<NETWORK>, RAILPROOF_RPC_{TIMEOUT_S,ATTEMPTS,TOTAL_S}_<NET>
    "RAILPROOF_TREASURY_",
    "RAILPROOF_NETWORK_",
    "RAILPROOF_ASSET_",
)
ENV_NAMES = frozenset(
    {
        "RAILPROOF_TEST_POSTGRES_URL",
        "RAILPROOF_TEST_REDIS_URL",
        "RAILPROOF_DEMO_SERVICE_TOKEN",
        "RAILPROOF_CONSOLE_SCREENSHOTS",
    }
)


def env_var(field: str) -> str:
    """The environment variable that sets a Settings field."""
    return _UNPREFIXED.get(field, "RAILPROOF_" + field.upper())


_UNPREFIXED = {"port": "PORT"}  # fields read from a name platforms set, not RAILPROOF_*


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """RAILPROOF_* variables in the environment that nothing reads: likely typos."""
    env = os.environ if environ is None else environ
    fields = {env_var(f) for f in Settings.model_fields if f != "env"}
    return sorted(
        k
        for k in env
        if k.startswith("RAILPROOF_")
        and k not in fields
        and k not in ENV_NAMES
        and not any(k.startswith(p) and len(k) > len(p) for p in ENV_PREFIXES)
    )


def describe_error(error: Exception) -> list[str]:
    """One line per invalid setting, each naming its RAILPROOF_ variable."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        text = str(error).strip()
        match = re.search(r'field "(\w+)"', text)  # pydantic-settings' SettingsError
        if match and match.group(1) in Settings.model_fields:
            return [f"{env_var(match.group(1))}: not valid JSON"]
        return [text.splitlines()[0] if text else type(error).__name__]
    lines = []
    for err in error.errors(include_url=False):
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").splitlines()[0]
        loc = err.get("loc") or ()
        if loc and isinstance(loc[0], str) and loc[0] in Settings.model_fields:
            name = env_var(loc[0])
            line = msg if msg.startswith(name) else f"{name}: {msg}"
        else:
            line = msg
        if line not in lines:
            lines.append(line)
    return lines


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
