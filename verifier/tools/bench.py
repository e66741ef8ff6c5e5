"""`railproof bench`: how fast the engine verifies, submits and dry-runs, on synthetic proofs
made from the recorded Solana cassettes (docs/bench.md says how, and how to read the figures).

Every phase runs the production code paths: `run_verify` over a `CassetteTransport` for pure
verification; `open_session` + `submit_proof` (which verifies and writes the attempt) on a real
database; `gate.dry_run_apply` as the admin API calls it (with an operator, so audited). Only
the chain is replayed, and the engine's clock is pinned inside the cassettes' blockTime window.
One phase replaces the chain with a node that never answers (`SilentNode`), to show what a
hanging RPC node costs a submission under the verification budget.

Nothing here prints; the CLI prints the returned dict.
"""

from __future__ import annotations

import math
import os
import random
import resource
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import base58
import orjson
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from rails import adapter_for
from rails.base import Status, Terms, fingerprint
from rails.cassette import Call, CassetteTransport
from rails.solana import GET_TX_OPTIONS, STATUS_OPTIONS, movements, parse_transaction
from registry.catalog import RailOverrides, load_catalog
from verifier.core.checking import run_verify
from verifier.core.config import REPO_FIXTURES

RAIL_ID = "solana_usdc"
NETWORK = "solana-mainnet"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
# All generated cassettes have their blockTime in the first quarter hour of 2026; sessions open
# at this pinned clock and live an hour, so every synthetic transfer falls inside its window.
CLOCK = datetime(2026, 1, 1, tzinfo=UTC)
SESSION_TTL = 3600
# A disposable database's own key, for every engine and process of one run: the chain the
# stored history starts is continued by `serve`, which refuses another key.
AUDIT_KEY = "bench-audit-key-" + "0" * 32
SEED = 7  # synthetic proofs are reproducible run to run
DRY_RUN_SAMPLES = 500
# The hanging-node phase: the submission budget is shrunk from its 3 s default so the phase
# takes about samples × budget seconds; the figure is the budget plus the engine's own cost.
HANGING_SAMPLES = 10
HANGING_BUDGET_S = 0.2
FILL_BATCH = 2000

SOLANA = REPO_FIXTURES / "solana"


@dataclass(frozen=True)
class Template:
    """A recorded transfer that verifies, with the session terms it pays."""

    cassette: str
    recipient: str
    amount: int
    reference: str | None = None
    memo: str | None = None
    block_time: int | None = None  # moved into the bench window (a 2023 mainnet transfer)


TEMPLATES = (
    Template(
        "generated/usdc_reference_memo.json",
        "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        1_500_000,
        "5EgHDWBUEbpZyrLBFVikjVKZY9MsRbEUtMvPdDr9ytPE",
        "order-1001",
    ),
    Template(
        "generated/demo_payment.json",
        "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        25_000_000,
        "5d1GsdrxZkmihE9ZaxSproXqTukLq6L64GjYQFspbPBP",
        "railproof-demo",
    ),
    Template(
        "generated/v0_lookup_table_usdc.json",
        "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        2_000_000,
        "4MM9Nq4Hxcb7NyvdKHzDsak4NjhiSctJsNb6Eo2EaDbF",
    ),
    Template(
        "generated/extra_instructions_a.json",
        "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        3_000_000,
        "7sTUSSsCLNu2mVFWMu4SdAcuZCxBRjAZT36KaZBsYvxm",
        memo="order-1002",
    ),
    Template(
        "generated/extra_instructions_b.json",
        "C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg",
        3_000_000,
        "7sTUSSsCLNu2mVFWMu4SdAcuZCxBRjAZT36KaZBsYvxm",
        memo="order-1002",
    ),
    Template(
        "generated/ata_created_same_tx.json",
        "A6L3a9vm1Uvfx2ra1S9m7tXLkna9WSFJ9qJWDZxoRHt3",
        4_200_000,
        "FAi1Bz93mbhmKVqCkVN7GRWHvje61FzJSzpaHfNZDyes",
    ),
    Template(
        "generated/old_format_resolved.json",
        "CJ81KRVNTRESph1YqNreU8C1mmwnQcPVgWQdHLKu7ZgM",
        7_000_000,
        "BpZEX5wSmFQJ1fNLfiXXksXdKSoDj4Lbjbf3dxgKPvc2",
    ),
    # Every session binds a reference, so only transfers that carry one are templates (the
    # real mainnet transfers carry none; they are verified in the adapter tests).
)


# -- synthetic proofs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Synthetic:
    signature: str
    recipient: str
    amount: int
    reference: str | None
    memo: str | None
    calls: tuple[Call, Call]


class _Recipe:
    """One template, prepared once: its getTransaction result as JSON bytes (the signature and
    reference are swapped as text, which reaches every place they occur), and where the
    amounts sit, so each synthetic copy only rewrites those."""

    def __init__(self, t: Template):
        doc = orjson.loads((SOLANA / t.cassette).read_bytes())
        by_method = {c["method"]: c for c in doc["calls"]}
        tx = by_method["getTransaction"]
        self.t = t
        self.signature = tx["params"][0]
        result = tx["result"]
        if t.block_time is not None:
            result["blockTime"] = t.block_time
        self.status = by_method["getSignatureStatuses"]["result"]
        self.blob = orjson.dumps(result)
        view = parse_transaction(result, self.signature)
        moves = movements(view, USDC)
        into = [m for m in moves if m.owner == t.recipient and m.delta > 0]
        out = [m for m in moves if m.delta == -t.amount]
        if len(into) != 1 or into[0].delta != t.amount:
            raise ValueError(
                f"{t.cassette}: expected one account of {t.recipient} receiving {t.amount}"
            )
        keys = view.account_keys
        meta = result["meta"]

        def where(part: str, account: str) -> int | None:
            for i, b in enumerate(meta.get(part) or []):
                if keys[b["accountIndex"]] == account and b["mint"] == USDC:
                    return i
            return None

        # The recipient gains the new amount (post moves); the payer, when one account paid it
        # all, pays the new amount from a correspondingly different starting balance (pre moves).
        self.patches: list[tuple[str, int]] = []
        i = where("postTokenBalances", into[0].account)
        if i is None:
            raise ValueError(f"{t.cassette}: recipient account has no post balance")
        self.patches.append(("postTokenBalances", i))
        if len(out) == 1 and (j := where("preTokenBalances", out[0].account)) is not None:
            self.patches.append(("preTokenBalances", j))
        # Instructions that state the amount (transfer / transferChecked) say the new one too.
        self.instr_paths: list[tuple[str, int, int | None]] = []
        groups = [("instructions", result["transaction"]["message"]["instructions"])]
        groups += [
            (f"inner{g}", grp["instructions"])
            for g, grp in enumerate(meta.get("innerInstructions") or [])
        ]
        for name, instrs in groups:
            for k, ins in enumerate(instrs):
                info = (
                    (ins.get("parsed") or {}).get("info")
                    if isinstance(ins.get("parsed"), dict)
                    else None
                )
                if not info:
                    continue
                amt = (
                    info.get("tokenAmount", {}).get("amount")
                    if "tokenAmount" in info
                    else info.get("amount")
                )
                if amt == str(t.amount):
                    self.instr_paths.append((name, k, None))

    def make(self, rng: random.Random, amount: int) -> Synthetic:
        t = self.t
        sig = base58.b58encode(rng.randbytes(64)).decode()
        blob = self.blob.replace(self.signature.encode(), sig.encode())
        reference = t.reference
        if t.reference is not None:
            reference = base58.b58encode(rng.randbytes(32)).decode()
            blob = blob.replace(t.reference.encode(), reference.encode())
        result = orjson.loads(blob)
        meta = result["meta"]
        d = amount - t.amount
        for part, i in self.patches:
            _shift(meta[part][i]["uiTokenAmount"], d)
        for name, k, _ in self.instr_paths:
            instrs = (
                result["transaction"]["message"]["instructions"]
                if name == "instructions"
                else meta["innerInstructions"][int(name[5:])]["instructions"]
            )
            info = instrs[k]["parsed"]["info"]
            if "tokenAmount" in info:
                _set_amount(info["tokenAmount"], amount)
            else:
                info["amount"] = str(amount)
        calls = (
            Call(
                {
                    "method": "getTransaction",
                    "params": [sig, dict(GET_TX_OPTIONS)],
                    "result": result,
                }
            ),
            Call(
                {
                    "method": "getSignatureStatuses",
                    "params": [[sig], dict(STATUS_OPTIONS)],
                    "result": self.status,
                }
            ),
        )
        return Synthetic(sig, t.recipient, amount, reference, t.memo, calls)


def _shift(ui: dict[str, Any], d: int) -> None:
    _set_amount(ui, int(ui["amount"]) + d)


def _set_amount(ui: dict[str, Any], amount: int) -> None:
    from rails.solana import ui_amount

    decimals = ui.get("decimals", 6)
    ui["amount"] = str(amount)
    ui["uiAmountString"] = ui_amount(amount, decimals)
    ui["uiAmount"] = amount / 10**decimals if amount else None  # display only; never read


def synthetic_proofs(n: int, seed: int = SEED) -> list[Synthetic]:
    """n proofs, round-robin over the templates, each with a fresh signature (and reference
    key) and an amount of 0.01 to 500 USDC."""
    rng = random.Random(seed)
    recipes = [_Recipe(t) for t in TEMPLATES]
    return [recipes[i % len(recipes)].make(rng, rng.randint(1, 50_000) * 10_000) for i in range(n)]


def _terms(p: Synthetic) -> Terms:
    return Terms(
        recipient=p.recipient,
        amount=p.amount,
        asset=USDC,
        reference=p.reference,
        memo=p.memo,
        not_before=CLOCK,
        not_after=CLOCK + timedelta(seconds=SESSION_TTL),
        now=CLOCK,
    )


# -- phases ---------------------------------------------------------------------------------


def bench_verify_offline(proofs: list[Synthetic]) -> dict[str, Any]:
    adapter = adapter_for(load_catalog().resolve(RAIL_ID))
    chain = CassetteTransport([c for p in proofs for c in p.calls], NETWORK)
    terms = [_terms(p) for p in proofs]
    for p, t in zip(proofs[:20], terms, strict=False):  # warm caches and lazy imports
        run_verify(adapter, p.signature, t, chain)
    verified = calls = 0
    started = time.perf_counter()
    for p, t in zip(proofs, terms, strict=False):
        checked = run_verify(adapter, p.signature, t, chain)
        calls += checked.rpc_calls
        verified += checked.verdict.status is Status.verified
    elapsed = time.perf_counter() - started
    return {
        "verify_offline_per_s": _rate(len(proofs), elapsed),
        "offline_verified": verified,
        "offline_rpc_calls": calls,
    }


def bench_submit(
    engine: Any, proofs: list[Synthetic], progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    from verifier.services.proofs import submit_proof
    from verifier.services.sessions import NewSession, open_session
    from verifier.storage.models import VerificationAttempt

    engine.chains.set_transport(
        NETWORK, CassetteTransport([c for p in proofs for c in p.calls], NETWORK)
    )

    def one(i: int, p: Synthetic) -> str:
        owner = f"bench-owner-{i % 97}"
        s = open_session(
            engine,
            NewSession(
                owner_id=owner,
                rail_id=RAIL_ID,
                access_product_id="bench-product",
                amount=p.amount,
                recipient=p.recipient,
                reference=p.reference,
                memo=p.memo,
                expires_in_seconds=SESSION_TTL,
            ),
            actor="bench",
        )
        view, _ = submit_proof(engine, s["id"], p.signature, [owner])
        return view["status"]

    with engine.db.tx() as s:  # only this phase's attempts count below, not stored history
        first_attempt = (s.scalar(select(func.max(VerificationAttempt.id))) or 0) + 1
    cut = min(10, len(proofs) // 5)
    warm, timed = proofs[:cut], proofs[cut:]
    for i, p in enumerate(warm):
        one(i, p)
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    for i, p in enumerate(timed):
        st = one(i, p)
        statuses[st] = statuses.get(st, 0) + 1
        if progress is not None and (i + 1) % 50 == 0:
            progress("submit", i + 1, len(timed))
    elapsed = time.perf_counter() - started
    VA = VerificationAttempt
    with engine.db.tx() as s:
        calls, verified = s.execute(
            select(
                func.coalesce(func.sum(VA.rpc_calls), 0),
                func.count().filter(VA.status == "verified"),
            ).where(VA.id >= first_attempt)
        ).one()
    return {
        "submit_verify_per_s": _rate(len(timed), elapsed),
        "submit_statuses": statuses,
        "rpc_calls_per_verified_proof": round(calls / verified, 3) if verified else None,
    }


def bench_dry_run(engine: Any, samples: int, seed: int = SEED) -> dict[str, Any]:
    from verifier.services import audit
    from verifier.services.gate import dry_run_apply
    from verifier.storage.models import Proof

    with engine.db.tx() as s:
        ids = list(s.scalars(select(Proof.id)))
    rng = random.Random(seed)
    picks = [rng.choice(ids) for _ in range(samples)]
    # As the admin API calls it: a staff operator, so each dry run is audited too.
    op = audit.Operator("bench-staff", incident_id="BENCH-1", reason="latency benchmark")
    for pid in picks[:10]:
        dry_run_apply(engine, pid, op)
    took: list[float] = []
    would = 0
    for pid in picks:
        started = time.perf_counter()
        report = dry_run_apply(engine, pid, op)
        took.append((time.perf_counter() - started) * 1000)
        would += bool(report["would_apply"] or report["already_applied"])
    took.sort()
    return {
        "dry_run_apply_p50_ms": round(statistics.median(took), 3),
        "dry_run_apply_p95_ms": round(took[int(0.95 * (len(took) - 1))], 3),
        "dry_run_samples": len(took),
        "dry_run_would_or_did_apply": would,
    }


class SilentNode:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte: an RPC
    node that hangs. `url` is its address; `accepted` counts connections."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._sock.settimeout(0.05)  # so the accept loop sees stop()
        self._conns: list[socket.socket] = []
        self._stopped = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name="silent-node", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._conns.append(conn)  # held open, never read, never answered
            self.accepted += 1

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        for c in [*self._conns, self._sock]:
            c.close()

    def __enter__(self) -> SilentNode:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def bench_submit_hanging_node(
    settings: Any, samples: int = HANGING_SAMPLES, budget_s: float = HANGING_BUDGET_S
) -> dict[str, Any]:
    """Submission latency while the rail's only RPC node accepts and never answers, with the
    submission budget set to `budget_s` and the default RPC policy (which alone would hold a
    submission for its whole total time). Every submission is answered pending."""
    from rails.solana_live import SolanaRpcTransport
    from verifier.core.engine import Engine
    from verifier.services.proofs import submit_proof
    from verifier.services.sessions import NewSession, open_session

    engine = Engine(settings.model_copy(update={"submit_verify_budget_s": budget_s}))
    rng = random.Random(SEED + 1)
    took: list[float] = []
    statuses: dict[str, int] = {}
    with SilentNode() as node:
        transport = SolanaRpcTransport([node.url], NETWORK)
        transport.set_policy(settings.rpc_policy(NETWORK))
        engine.chains.set_transport(NETWORK, transport)
        try:
            for i in range(samples + 1):  # the first warms the HTTP client up, untimed
                owner = f"bench-hang-{i}"
                s = open_session(
                    engine,
                    NewSession(
                        owner_id=owner,
                        rail_id=RAIL_ID,
                        access_product_id="bench-product",
                        amount=1_000_000,
                        recipient=TEMPLATES[0].recipient,
                        expires_in_seconds=SESSION_TTL,
                    ),
                    actor="bench",
                )
                signature = base58.b58encode(rng.randbytes(64)).decode()
                started = time.perf_counter()
                view, _ = submit_proof(engine, s["id"], signature, [owner])
                if i:
                    took.append((time.perf_counter() - started) * 1000)
                    statuses[view["status"]] = statuses.get(view["status"], 0) + 1
        finally:
            transport.close()
            engine.db.dispose()
    took.sort()
    return {
        "submit_p99_ms_hanging_node": round(took[math.ceil(0.99 * len(took)) - 1], 1),
        "hanging_node_budget_s": budget_s,
        "hanging_node_default_budget_s": settings.submit_verify_budget_s,
        "hanging_node_samples": len(took),
        "hanging_node_statuses": statuses,
    }


# -- x402, ours and the SDK's -----------------------------------------------------------------

X402_NETWORK = "base"
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
X402_PAY_TO = "0x02188583AC333178Dc88122B141B4e169BbdB22e"
X402_NOW = 1767226200


def x402_payloads(n: int, seed: int = SEED) -> list[tuple[dict[str, Any], dict[str, Any], int]]:
    """n distinct signed EIP-3009 payloads (alternately v1 and v2 shapes) from the fixtures'
    deterministic test payer, with their x402 requirements: (payload, requirements, amount)."""
    from coincurve import PrivateKey
    from eth_hash.auto import keccak

    from rails.x402 import Authorization, authorization_digest, domain_separator
    from verifier.tools.x402_sdk_oracle import requirements_doc

    rng = random.Random(seed)
    key = PrivateKey(keccak(b"railproof x402 test payer #1"))
    payer = keccak(key.public_key.format(compressed=False)[1:])[12:]
    to = bytes.fromhex(X402_PAY_TO[2:])
    rail = load_catalog().resolve("x402", RailOverrides(network=X402_NETWORK))
    eip712 = rail.eip712
    if eip712 is None:  # the catalog's x402 rails all name their token's EIP-712 domain
        raise ValueError(f"{rail.rail_id}: no EIP-712 domain in the catalog")
    sep = domain_separator(eip712.name, eip712.version, rail.chain_id, bytes.fromhex(BASE_USDC[2:]))
    out = []
    for i in range(n):
        amount = rng.randint(1, 50_000) * 100
        auth = Authorization(payer, to, amount, X402_NOW - 600, X402_NOW + 3600, rng.randbytes(32))
        sig = key.sign_recoverable(authorization_digest(auth, sep), hasher=None)
        signature = "0x" + (sig[:64] + bytes((sig[64] + 27,))).hex()
        a = {
            "from": _checksum(payer),
            "to": X402_PAY_TO,
            "value": str(amount),
            "validAfter": str(auth.valid_after),
            "validBefore": str(auth.valid_before),
            "nonce": "0x" + auth.nonce.hex(),
        }
        version = 1 if i % 2 == 0 else 2
        network = X402_NETWORK if version == 1 else f"eip155:{rail.chain_id}"
        req = requirements_doc(
            version, network, BASE_USDC, X402_PAY_TO, amount, eip712.name, eip712.version
        )
        if version == 1:
            doc = {
                "x402Version": 1,
                "scheme": "exact",
                "network": network,
                "payload": {"signature": signature, "authorization": a},
            }
        else:
            doc = {
                "x402Version": 2,
                "accepted": req,
                "payload": {"signature": signature, "authorization": a},
            }
        out.append((doc, req, amount))
    return out


def _checksum(address: bytes) -> str:
    from rails.x402 import checksum_address

    return checksum_address(address)


class _Offline:
    source = "cassette"

    def call(self, method: str, params: list[Any]) -> Any:  # pragma: no cover - never reached
        raise AssertionError(f"x402 offline verification made a chain call: {method}")


def bench_x402(n: int) -> dict[str, Any]:
    from verifier.tools import x402_sdk_oracle as oracle

    rail = load_catalog().resolve("x402", RailOverrides(network=X402_NETWORK))
    adapter = adapter_for(rail)
    payloads = x402_payloads(n)
    now = datetime.fromtimestamp(X402_NOW, UTC)
    texts = [orjson.dumps(doc).decode() for doc, _, _ in payloads]
    terms = [
        Terms(recipient=X402_PAY_TO, amount=amount, asset=BASE_USDC, now=now)
        for _, _, amount in payloads
    ]
    chain = _Offline()
    for t, tm in zip(texts[:20], terms, strict=False):
        run_verify(adapter, t, tm, chain)
    ours_ok = 0
    started = time.perf_counter()
    for t, tm in zip(texts, terms, strict=False):
        ours_ok += run_verify(adapter, t, tm, chain).verdict.status is Status.verified
    ours_s = time.perf_counter() - started

    facilitator = oracle.make_facilitator(oracle.StubSigner(contracts=[BASE_USDC]))
    sdk_ok = 0
    with oracle.sdk_clock(X402_NOW):
        for doc, req, _ in payloads[:20]:
            oracle.sdk_verify(facilitator, doc, req)
        started = time.perf_counter()
        for doc, req, _ in payloads:
            sdk_ok += oracle.sdk_verify(facilitator, doc, req).is_valid
        sdk_s = time.perf_counter() - started
    return {
        "x402_verify_per_s": _rate(n, ours_s),
        "x402_sdk_verify_per_s": _rate(n, sdk_s),
        "x402_valid": {"ours": ours_ok, "sdk": sdk_ok, "of": n},
    }


# -- storage ------------------------------------------------------------------------------------


# How long the check before a run waits for the database server to accept a connection.
CONNECT_CHECK_S = 5


def check_database_url(url: str) -> None:
    """ValueError naming --database-url when the run could not use `url`: not a URL, not a
    database railproof runs on, or a server that does not answer. Said before any work (a
    bench runs for minutes). The password is never repeated."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from verifier.storage.db import check_url, shown_url

    try:
        check_url(url)
    except ValueError as e:
        raise ValueError(f"--database-url: {e}") from None
    u = make_url(url)
    backend = u.get_backend_name()
    where = shown_url(url)
    if backend == "postgresql":
        # The server's own database, as _prepare_database connects: the named one may not
        # exist yet (it is created).
        u = u.set(drivername="postgresql+psycopg", database="postgres", query={})
        probe = create_engine(u, connect_args={"connect_timeout": CONNECT_CHECK_S})
    else:
        probe = create_engine(u)
    try:
        with probe.connect():
            pass
    except SQLAlchemyError as e:
        # The driver's message names the host and the reason, never the password.
        reason = str(getattr(e, "orig", None) or type(e).__name__).strip().splitlines()[0]
        raise ValueError(f"--database-url: cannot connect to {where}: {reason}") from None
    finally:
        probe.dispose()


def _prepare_database(url: str) -> int:
    """Create a PostgreSQL database named in the URL if it does not exist; then migrate.
    Returns the number of sessions already stored (what `run_seed` moves the seed by)."""
    from sqlalchemy import create_engine

    from verifier.storage.db import make_engine, upgrade

    u = make_url(url)
    if u.get_backend_name() == "postgresql" and u.database:
        admin = create_engine(
            u.set(drivername="postgresql+psycopg", database="postgres", query={}),
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as conn:
                exists = conn.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": u.database}
                )
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{u.database}"'))
        finally:
            admin.dispose()
    upgrade(url)
    counter = make_engine(url)  # as the service reads the URL (its prepare_threshold too)
    try:
        with counter.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM payment_sessions")) or 0)
    finally:
        counter.dispose()


def run_seed(seed: int, stored: int) -> int:
    """The seed of a run's synthetic transfers: `seed` on a fresh database, so runs repeat;
    moved by the sessions already stored on a database used before, whose references and
    signatures the same seed would make again (refused as already used)."""
    return seed + stored


def fill_stored(engine: Any, target: int, seed: int = SEED) -> int:
    """Bulk-insert realistic history until `target` proofs are stored: per proof a session,
    its entitlement, the proof, a verification attempt and (when verified) settlement evidence
    and audit events that continue the hash chain; most verified proofs are applied (receipt,
    active entitlement, paid session). Returns the number of proofs stored afterwards."""
    from verifier.services.audit import GENESIS, event_hash
    from verifier.storage.models import (
        AuditEvent,
        Entitlement,
        PaymentSession,
        Proof,
        Receipt,
        SettlementEvidence,
        TransferHold,
        VerificationAttempt,
        new_id,
    )
    from verifier.storage.repo import holds

    db = engine.db
    with db.tx() as s:
        have = s.scalar(select(func.count()).select_from(Proof)) or 0
        head = s.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)) or GENESIS
        next_attempt = (s.scalar(select(func.max(VerificationAttempt.id))) or 0) + 1
        next_evidence = (s.scalar(select(func.max(SettlementEvidence.id))) or 0) + 1
        next_seq = (s.scalar(select(func.max(Entitlement.seq))) or 0) + 1
    missing = max(0, target - have)
    # A stream of its own: the synthetic proofs are drawn from random.Random(seed).
    rng = random.Random(f"stored-history:{seed}:{have}")
    rail = engine.rail(RAIL_ID)
    recipients = sorted({t.recipient for t in TEMPLATES})
    for start in range(0, missing, FILL_BATCH):
        rows: dict[str, list[dict[str, Any]]] = {
            k: []
            for k in (
                "sessions",
                "entitlements",
                "proofs",
                "attempts",
                "evidence",
                "receipts",
                "holds",
                "audit",
            )
        }
        for _ in range(min(FILL_BATCH, missing - start)):
            created = CLOCK - timedelta(seconds=rng.randint(3600, 90 * 86400))
            owner = f"owner-{rng.randint(1, 20_000)}"
            amount = rng.randint(1, 50_000) * 10_000
            recipient = rng.choice(recipients)
            sid, eid, pid = new_id(), new_id(), new_id()
            sig = base58.b58encode(rng.randbytes(64)).decode()
            roll = rng.random()
            status = "verified" if roll < 0.85 else ("failed" if roll < 0.95 else "pending")
            applied = status == "verified" and roll < 0.7
            at = created + timedelta(seconds=rng.randint(5, 600))
            rows["sessions"].append(
                dict(
                    id=sid,
                    owner_id=owner,
                    rail_id=RAIL_ID,
                    access_product_id="bench-product",
                    amount=amount,
                    network=rail.network,
                    asset=rail.asset,
                    recipient=recipient,
                    reference=base58.b58encode(rng.randbytes(32)).decode(),
                    memo=None,
                    status="paid" if applied else "open",
                    created_at=created,
                    expires_at=created + timedelta(seconds=SESSION_TTL),
                    paid_at=at if applied else None,
                )
            )
            fp = fingerprint("solana", rail.network, "solana_tx_signature", sig)
            rows["proofs"].append(
                dict(
                    id=pid,
                    fingerprint=fp,
                    rail_id=RAIL_ID,
                    proof_type="solana_tx_signature",
                    ref=sig,
                    raw=sig,
                    owner_id=owner,
                    session_id=sid,
                    status=status,
                    failure_code={"failed": "amount_mismatch", "pending": "tx_not_found"}.get(
                        status
                    ),
                    detail=status,
                    attempts=1,
                    next_check_at=at + timedelta(seconds=5) if status == "pending" else None,
                    claimed_until=None,
                    claimed_by=None,
                    created_at=at,
                    updated_at=at,
                    applied_at=at if applied else None,
                )
            )
            aid = next_attempt
            next_attempt += 1
            observed = {
                "amount": str(amount),
                "recipient": recipient,
                "sender": None,
                "asset": rail.asset,
                "decimals": 6,
                "slot": 435888000 + aid,
                "block_time": int(at.timestamp()) - 2,
                "reference_found": True,
                "memo": None,
            }
            rows["attempts"].append(
                dict(
                    id=aid,
                    proof_id=pid,
                    status=status,
                    failure_code=rows["proofs"][-1]["failure_code"],
                    detail=status,
                    observed=observed,
                    rpc_calls=2 if status == "verified" else 1,
                    latency_ms=1,
                    source="cassette",
                    worker=None,
                    created_at=at,
                )
            )
            events: list[tuple[str, str, str, str, dict[str, Any]]] = [
                (
                    "service",
                    "session.opened",
                    "payment_session",
                    sid,
                    {
                        "owner_id": owner,
                        "rail_id": RAIL_ID,
                        "amount": str(amount),
                        "product": "bench-product",
                    },
                ),
                (
                    "service",
                    "proof.submitted",
                    "proof",
                    pid,
                    {"session_id": sid, "rail_id": RAIL_ID, "fingerprint": fp},
                ),
            ]
            if status != "pending":
                events.append(
                    (
                        "system",
                        f"proof.{status}",
                        "proof",
                        pid,
                        {"code": rows["proofs"][-1]["failure_code"], "attempt_id": aid},
                    )
                )
            receipt_id = None
            if status == "verified":
                rows["holds"] += [
                    dict(
                        transfer_key=k, proof_id=pid, session_id=sid, owner_id=owner, created_at=at
                    )
                    for k in (
                        holds.fingerprint_key(fp),
                        f"solana:{rail.network}:{sig}:{rail.asset}:{recipient}",
                    )
                ]
                ev_id = next_evidence
                next_evidence += 1
                rows["evidence"].append(
                    dict(
                        id=ev_id,
                        proof_id=pid,
                        attempt_id=aid,
                        finality="finalized",
                        is_final=True,
                        reorged=False,
                        slot=435888000 + aid,
                        block_number=None,
                        block_hash=None,
                        confirmations=None,
                        detail="",
                        source="cassette",
                        observed_at=at,
                    )
                )
                if applied:
                    receipt_id = new_id()
                    rows["receipts"].append(
                        dict(
                            id=receipt_id,
                            proof_id=pid,
                            session_id=sid,
                            settlement_id=ev_id,
                            owner_id=owner,
                            access_product_id="bench-product",
                            rail_id=RAIL_ID,
                            amount=amount,
                            created_by="auto",
                            created_at=at,
                        )
                    )
                    events += [
                        (
                            "auto",
                            "receipt.created",
                            "receipt",
                            receipt_id,
                            {"proof_id": pid, "session_id": sid, "amount": str(amount)},
                        ),
                        (
                            "auto",
                            "entitlement.activated",
                            "entitlement",
                            eid,
                            {
                                "receipt_id": receipt_id,
                                "owner_id": owner,
                                "product": "bench-product",
                            },
                        ),
                        (
                            "auto",
                            "proof.applied",
                            "proof",
                            pid,
                            {"receipt_id": receipt_id, "via": "auto"},
                        ),
                    ]
            rows["entitlements"].append(
                dict(
                    id=eid,
                    owner_id=owner,
                    access_product_id="bench-product",
                    session_id=sid,
                    status="active" if applied else "pending",
                    receipt_id=receipt_id,
                    reorg_flagged=False,
                    created_at=created,
                    updated_at=at,
                    seq=next_seq,  # its place in the owner's list (one each, as the service's)
                )
            )
            next_seq += 1
            for actor, action, stype, subject, data in events:
                h = event_hash(
                    head, at, actor, action, stype, subject, data, None, None, engine.db.audit_key
                )
                rows["audit"].append(
                    dict(
                        at=at,
                        actor=actor,
                        action=action,
                        subject_type=stype,
                        subject_id=subject,
                        data=data,
                        incident_id=None,
                        reason=None,
                        prev_hash=head,
                        hash=h,
                    )
                )
                head = h
        with db.engine.begin() as conn:
            # Parents before children (foreign keys); entitlements point at receipts.
            for model, key in (
                (PaymentSession, "sessions"),
                (Proof, "proofs"),
                (VerificationAttempt, "attempts"),
                (SettlementEvidence, "evidence"),
                (Receipt, "receipts"),
                (Entitlement, "entitlements"),
                (TransferHold, "holds"),
                (AuditEvent, "audit"),
            ):
                if rows[key]:
                    _bulk_insert(conn, model.__table__, rows[key])
    if db.postgres and missing:
        # The history gave attempts and evidence explicit ids: move their sequences past them,
        # or the next row the service writes would take an id already used.
        with db.engine.begin() as conn:
            for table in ("verification_attempts", "settlement_evidence"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    with db.tx() as s:
        return s.scalar(select(func.count()).select_from(Proof)) or 0


def _bulk_insert(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), rows)  # sqlite3's executemany is already one prepared loop
        return
    # PostgreSQL: one multi-row VALUES statement per chunk is one round trip instead of one
    # per row; chunks stay under the protocol's 65,535 bind parameters.
    per = max(1, 30_000 // len(rows[0]))
    for i in range(0, len(rows), per):
        conn.execute(insert(table).values(rows[i : i + per]))


# -- the whole run ----------------------------------------------------------------------------


def submit_only(
    proofs: int,
    database_url: str | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Only the submission phase (`bench_submit`), on a fresh temporary SQLite (None) or on
    `database_url` as `run_bench` uses it."""
    from verifier.core.config import Settings
    from verifier.core.engine import Engine

    tmp = tempfile.mkdtemp(prefix="railproof-bench-")
    engine = None
    try:
        url = database_url or f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        seed = run_seed(SEED, _prepare_database(url))
        engine = Engine(
            Settings(
                database_url=url,
                chain="cassette",
                clock=CLOCK,
                cassette_dir=Path(tmp) / "no-cassettes",
                session_ttl_seconds=SESSION_TTL,
                auto_apply=False,
                audit_key=AUDIT_KEY,
            )
        )
        engine.ensure_rail_states()
        out = bench_submit(engine, synthetic_proofs(proofs, seed), progress)
        return {"database": engine.db.engine.dialect.name, **out}
    finally:
        if engine is not None:
            engine.db.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def run_bench(
    proofs: int = 2000,
    database_url: str | None = None,
    stored: int | None = None,
    hanging_node_samples: int = HANGING_SAMPLES,
    discovery_sessions: int = 1000,
    reconcile_inflows: int = 10_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Every figure of the benchmark contract (DESIGN.md, "Benchmark"), as one dict.

    `database_url`: None runs on a fresh, migrated SQLite file in a temporary directory
    (removed afterwards); any other URL is used as given and written to, so it must name a
    disposable database (a PostgreSQL database that does not exist yet is created).
    `stored`: proofs in the database when submission is timed and dry-run-apply latency
    measured (default: `proofs`): `stored - proofs` are bulk-inserted as history first.
    `hanging_node_samples`: submissions timed against a node that never answers (0: skip).
    `discovery_sessions`, `reconcile_inflows`: open sessions paid in one watched window, and
    inflows in one reconciled window (bench_discovery; 0 sessions: skip).
    """
    from verifier.core.config import Settings
    from verifier.core.engine import Engine

    if proofs < 10:
        raise ValueError("proofs: at least 10")
    stored = proofs if stored is None else stored
    tmp = None
    if database_url is None:
        tmp = tempfile.mkdtemp(prefix="railproof-bench-")
        database_url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
    engine = None
    try:
        seed = run_seed(SEED, _prepare_database(database_url))
        synthetic = synthetic_proofs(proofs, seed)
        out: dict[str, Any] = {"proofs": proofs}
        out.update(bench_verify_offline(synthetic))
        settings = Settings(
            database_url=database_url,
            chain="cassette",
            clock=CLOCK,
            cassette_dir=Path(tmp or tempfile.gettempdir()) / "no-cassettes",
            session_ttl_seconds=SESSION_TTL,
            auto_apply=False,
            audit_key=AUDIT_KEY,
        )
        engine = Engine(settings)
        engine.ensure_rail_states()
        out["database"] = engine.db.engine.dialect.name
        if out["database"] == "sqlite":
            # Commit durability decides much of the submit rate (docs/bench.md): say which.
            out["sqlite_synchronous"] = settings.sqlite_synchronous
        # The history first: submission is measured against `stored` proofs too, so the
        # scale runs show how its cost grows with what is stored.
        fill_stored(engine, stored - proofs, seed)
        out.update(bench_submit(engine, synthetic, progress))
        del synthetic
        # Adds nothing unless a submission failed.
        out["stored"] = fill_stored(engine, stored, seed + 1)
        out.update(bench_dry_run(engine, min(DRY_RUN_SAMPLES, max(20, out["stored"]))))
        if hanging_node_samples > 0:
            out.update(bench_submit_hanging_node(settings, hanging_node_samples))
        out.update(bench_x402(proofs))
        if discovery_sessions > 0:
            from verifier.tools.bench_discovery import discovery_figures

            out.update(discovery_figures(discovery_sessions, reconcile_inflows))
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return out
    finally:
        if engine is not None:
            engine.db.dispose()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")
