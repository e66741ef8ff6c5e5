"""PostgreSQL as the shared store of many processes: two API deployments (`railproof serve
--workers 3` and a single-process `railproof serve`) and two `railproof worker` processes with
automatic apply, all on one fresh database migrated by `railproof db upgrade`, replaying the
recorded Solana chain with the demo clock.

Hundreds of concurrent HTTP requests then race on overlapping work: each transfer's own
session (bound by the transfer's reference) submits it many times (with and without one
Idempotency-Key) while hostile tenants — other owners and another session of the same owner,
each with a session of the same amount on the same shared treasury, two of them bound to a
reference the payment carries but which is no reference (the payer's wallet, the payer's
token account) — submit the same transfer for their own sessions at the same moment; two transfers for one session; and staff
applies on every proof from several threads while the workers auto-apply. Afterwards the
database must hold: the transfer held only by the session it was made for (never a thief's,
whoever submitted first), one holding proof per fingerprint, one receipt per proof and per
session, no active entitlement without a final settlement, receipts exactly where a final
verified proof paid an unpaid session, no idempotency claim left in progress, an intact audit
chain — and every answer was a JSON 2xx/4xx (no 5xx).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.fault_rpc import FIXTURES, SOLANA_GENERATED
from tests.procs import AUDIT_KEY, Api, PgDatabase, Worker, base_env, migrate, wait_until
from verifier.services.audit import verify_chain
from verifier.storage.db import Database
from verifier.storage.models import (
    AuditEvent,
    Entitlement,
    IdempotencyClaim,
    PaymentSession,
    Proof,
    Receipt,
    SettlementEvidence,
    VerificationAttempt,
)

pytestmark = pytest.mark.postgres
PG_URL = os.environ.get("RAILPROOF_TEST_POSTGRES_URL")
CLOCK = "2026-01-01T00:00:00Z"
TOKENS = {"tok-a": ["owner-a1", "owner-a2"], "tok-b": ["owner-b"], "tok-c": ["owner-c"]}
OWNER_TOKEN = {o: t for t, owners in TOKENS.items() for o in owners}
STAFF = {"Authorization": "Bearer staff-1"}
PHASE_TIMEOUT_S = 120.0
POOL = 32


def _proof_set() -> list[dict[str, Any]]:
    """Every generated Solana cassette with an expected payment (verified, failed, not final),
    each a distinct signature with the Solana Pay reference its session binds, and its
    payer's wallet (the fee payer) and source token account."""
    out = []
    for path in sorted(SOLANA_GENERATED.glob("*.json")):
        doc = json.loads(path.read_text())
        want = doc.get("expect") or doc.get("demo")
        if not want or "recipient" not in want or want.get("asset"):
            continue
        call = next(c for c in doc["calls"] if c["method"] == "getTransaction")
        tx = call["result"]
        keys = [
            k["pubkey"] if isinstance(k, dict) else k
            for k in tx["transaction"]["message"]["accountKeys"]
        ]
        owned = {  # old cassettes name no owner; v0 indexes may reach loaded addresses
            b.get("owner"): keys[b["accountIndex"]]
            for b in tx["meta"]["preTokenBalances"]
            if b["accountIndex"] < len(keys)
        }
        out.append(
            {
                "name": path.stem,
                "signature": call["params"][0],
                "recipient": want["recipient"],
                "amount": int(want["amount"]),
                "reference": want["reference"],
                "memo": want.get("memo"),
                "payer": keys[0],
                "source": owned.get(keys[0]),
            }
        )
    return out


@pytest.fixture
def pg_db() -> Iterator[PgDatabase]:
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("RAILPROOF_TEST_POSTGRES_URL is unset under CI: PostgreSQL tests must run")
        pytest.skip(
            "PostgreSQL tests skipped: set RAILPROOF_TEST_POSTGRES_URL "
            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"
        )
    db = PgDatabase(PG_URL)
    try:
        yield db
    finally:
        db.close()


class Recorder:
    """Every HTTP answer, checked to be JSON and below 500."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: list[tuple[str, int, Any]] = []
        self.problems: list[str] = []

    def send(
        self, client: httpx.Client, what: str, method: str, url: str, **kw: Any
    ) -> tuple[int, Any]:
        try:
            r = client.request(method, url, **kw)
        except httpx.HTTPError as e:
            with self.lock:
                self.problems.append(f"{what}: {type(e).__name__}: {e}")
            return 0, None
        try:
            body = r.json()
        except ValueError:
            body = None
        with self.lock:
            self.answers.append((what, r.status_code, body))
            if r.status_code >= 500 or body is None:
                self.problems.append(f"{what}: {r.status_code} {r.text[:300]}")
            elif r.status_code >= 400 and not (isinstance(body, dict) and "error" in body):
                self.problems.append(f"{what}: {r.status_code} without an error object")
        return r.status_code, body


def run_all(jobs: list, timeout: float = PHASE_TIMEOUT_S) -> list[Any]:
    with ThreadPoolExecutor(POOL) as pool:
        futures = [pool.submit(j) for j in jobs]
        done, not_done = wait(futures, timeout=timeout)
        for f in not_done:
            f.cancel()
        assert not not_done, f"{len(not_done)} requests did not finish within {timeout:g}s"
        return [f.result() for f in futures]


def test_many_processes_share_one_postgresql(pg_db, tmp_path):
    env = base_env(
        database_url=pg_db.url,
        chain="cassette",
        cassette_dir=str(FIXTURES),
        clock=CLOCK,
        service_tokens=json.dumps(TOKENS),
        staff_tokens=json.dumps({"staff-1": "ops1", "staff-2": "ops2"}),
        # The flood is the test (races between processes), and a faster API sends it faster
        # than the default per-principal limit allows: limiting has its own tests
        # (test_ratelimit*.py), and a 429 here would only hide the race being tested.
        rate_limit_per_second="0",
    )
    migrate(env)
    apply_env = {**env, "RAILPROOF_AUTO_APPLY": "1"}
    procs: list[Any] = []
    rng = random.Random(7)
    rec = Recorder()
    try:
        # Everything starts at once on the fresh database (startup races are part of the test).
        apis = [
            Api(env, tmp_path, workers=3, name="api-multi"),
            Api(env, tmp_path, name="api-single"),
        ]
        procs += apis
        # Two workers sweep the same queue throughout (claims under FOR UPDATE SKIP LOCKED).
        procs += [Worker(env, tmp_path, "w1"), Worker(env, tmp_path, "w2")]
        for api in apis:
            api.wait_ready()
        bases = [api.url for api in apis]
        # The client drops idle connections before uvicorn's 5 s keep-alive closes them, so a
        # request is never written onto a connection the server is closing between phases.
        limits = httpx.Limits(
            max_connections=POOL * 2, max_keepalive_connections=POOL * 2, keepalive_expiry=2.0
        )
        client = httpx.Client(timeout=60.0, limits=limits)

        # -- sessions: each transfer's own session, and hostile sessions of the same amount ----
        proofs_set = _proof_set()
        assert len(proofs_set) >= 10
        owners = ("owner-a1", "owner-a2", "owner-b", "owner-c")
        # Two transfers carry one reference (one order paid twice): one session for both.
        by_ref: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in proofs_set:
            by_ref[p["reference"]].append(p)
        assert any(len(v) == 2 for v in by_ref.values())
        # (transfers it is for, owner, binding): "own" carries the transfer's reference,
        # "fresh" a generated one, "payer"/"source" the payer's wallet or token account.
        plan: list[tuple[list[dict[str, Any]], str, str]] = []
        for k, (_ref, ps_) in enumerate(sorted(by_ref.items())):
            rightful = owners[k % len(owners)]
            plan.append((ps_, rightful, "own"))
            # Thieves: every other owner, and another session of the rightful owner.
            others = [o for o in owners if o != rightful]
            plan += [(ps_, o, "fresh") for o in others] + [(ps_, rightful, "fresh")]
            # A repeat payer's accounts are in each of their payments, and a reference is
            # unique: one thief of each, on the demo payment.
            if any(p["name"] == "demo_payment" for p in ps_):
                assert ps_[0]["payer"] and ps_[0]["source"]
                plan += [(ps_, others[0], "payer"), (ps_, others[1], "source")]
        ledger_thieves = [i for i, (_p, _o, b) in enumerate(plan) if b in ("payer", "source")]
        assert len(ledger_thieves) == 2

        def open_session(
            i: int, ps_: list[dict[str, Any]], owner: str, binding: str, key: str | None
        ) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {OWNER_TOKEN[owner]}"}
            if key:
                headers["Idempotency-Key"] = key
            p = ps_[0]
            body = {
                "owner_id": owner,
                "rail_id": "solana_usdc",
                "access_product_id": f"prod-{p['name']}",
                "amount": p["amount"],
                "recipient": p["recipient"],
            }
            if binding == "own":
                body.update(reference=p["reference"], memo=p["memo"])
            elif binding != "fresh":
                body["reference"] = p[binding]
            return rec.send(
                client,
                "session",
                "POST",
                bases[i % 2] + "/v1/payment-sessions",
                headers=headers,
                json=body,
            )

        jobs = []
        for i, (ps_, owner, binding) in enumerate(plan):
            key = f"sess-{i}"
            # Half the sessions are created twice with one key, concurrently, on both APIs.
            for j in range(2 if i % 2 == 0 else 1):
                jobs.append(
                    lambda i=i, j=j, ps_=ps_, owner=owner, binding=binding, key=key: (
                        i,
                        open_session(i + j, ps_, owner, binding, key),
                    )
                )
        rng.shuffle(jobs)
        sessions: dict[int, dict[str, Any]] = {}
        for i, (status, body) in run_all(jobs):
            assert status in (201, 409), (status, body, rec.problems[-3:])
            if status == 201:
                if i in sessions:
                    assert sessions[i]["id"] == body["id"]  # the replay is the same session
                sessions[i] = body
            else:
                assert body["error"]["code"] == "idempotency_in_progress", body
        assert set(sessions) == set(range(len(plan))), "a session was lost"
        rightful_session = {
            p["signature"]: sessions[i]["id"]
            for i, (ps_, _o, binding) in enumerate(plan)
            if binding == "own"
            for p in ps_
        }

        # -- proofs: each transfer by its own session and, at the same time, by the thieves ----
        def submit(i: int, sess: dict[str, Any], sig: str, key: str | None) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {OWNER_TOKEN[sess['owner_id']]}"}
            if key:
                headers["Idempotency-Key"] = key
            return rec.send(
                client,
                "proof",
                "POST",
                bases[i % 2] + "/v1/proofs",
                headers=headers,
                json={"session_id": sess["id"], "proof": sig},
            )

        jobs = []
        n = 0
        for i, (ps_, _owner, binding) in enumerate(plan):
            sess = sessions[i]
            for p in ps_:
                for rep in range(6 if binding == "own" else 3):
                    key = f"proof-{i}-{p['name']}" if rep < 2 else None  # two with one key
                    jobs.append(
                        lambda n=n, sess=sess, sig=p["signature"], key=key: (
                            sess,
                            sig,
                            submit(n, sess, sig, key),
                        )
                    )
                    n += 1
        rng.shuffle(jobs)
        results = run_all(jobs)
        assert len(results) >= 150
        codes = Counter()
        for sess, sig, (status, body) in results:
            assert status in (200, 201, 409), (status, body, rec.problems[-3:])
            if status == 409:
                codes[body["error"]["code"]] += 1
                assert body["error"]["code"] in (
                    "duplicate_payment",
                    "proof_owner_conflict",
                    "idempotency_in_progress",
                ), body
                # SECURITY: the session the transfer was made for is never refused it.
                assert (
                    body["error"]["code"] == "idempotency_in_progress"
                    or sess["id"] != rightful_session[sig]
                ), (sess, body)
            else:
                codes[status] += 1
                assert body["session_id"] == sess["id"] and body["owner_id"] == sess["owner_id"]
                # SECURITY: a thief's session never holds someone else's transfer.
                if sess["id"] != rightful_session[sig]:
                    assert body["status"] in ("failed", "pending"), body
        # The races were really run: each outcome happened.
        assert codes[201] >= 1 and codes[200] >= 1
        assert codes["duplicate_payment"] >= 1 and codes["proof_owner_conflict"] >= 1

        # -- apply: staff on every proof from several threads, while the workers auto-apply ----
        staff_view = client.get(
            bases[0] + "/v1/admin/proofs", headers=STAFF, params={"limit": 1000}
        )
        assert staff_view.status_code == 200
        stored = staff_view.json()
        jobs = []
        for p in stored:
            for rep in range(4):
                jobs.append(
                    lambda pid=p["id"], rep=rep: (
                        pid,
                        rec.send(
                            client,
                            "apply",
                            "POST",
                            bases[rep % 2] + f"/v1/admin/proofs/{pid}/apply",
                            headers=STAFF,
                            json={
                                "confirm": True,
                                "incident_id": "INC-1",
                                "operator_reason": "concurrency test",
                            },
                        ),
                    )
                )
        rng.shuffle(jobs)
        # Two automatic-apply workers race the staff: the kill switch holds them back until
        # both have swept (blocked) at least once, then the rail resumes and everyone applies.
        ops = {"confirm": True, "incident_id": "INC-1", "operator_reason": "concurrency test"}
        r = client.post(bases[0] + "/v1/admin/rails/solana_usdc/pause", headers=STAFF, json=ops)
        assert r.status_code == 200, r.text
        appliers = [Worker(apply_env, tmp_path, f"auto{i}", interval=0.05) for i in (1, 2)]
        procs += appliers
        for w in appliers:
            wait_until(f"{w.name} to sweep", lambda w=w: '"sweep' in w.output(), 30.0, 0.1)
        r = client.post(bases[1] + "/v1/admin/rails/solana_usdc/resume", headers=STAFF, json=ops)
        assert r.status_code == 200, r.text
        applied_fresh: Counter = Counter()
        for pid, (status, body) in run_all(jobs):
            assert status in (200, 409), (status, body, rec.problems[-3:])
            if status == 200:
                assert body["applied"] is True
                if not body["already_applied"]:
                    applied_fresh[pid] += 1
            else:
                assert body["error"]["code"] == "apply_blocked", body
        assert all(v == 1 for v in applied_fresh.values()), applied_fresh

        # Let the workers finish whatever auto-apply they had started.
        db = Database(pg_db.url, audit_key=AUDIT_KEY)
        try:

            def settled() -> bool:
                with db.tx() as s:
                    n_final = s.scalar(
                        select(func.count(func.distinct(Proof.session_id)))
                        .join(SettlementEvidence, SettlementEvidence.proof_id == Proof.id)
                        .where(Proof.status == "verified", SettlementEvidence.is_final)
                    )
                    return n_final == s.scalar(select(func.count()).select_from(Receipt))

            wait_until("every final verified proof to be applied", settled, 30.0, 0.2)
            for proc in procs:
                assert proc.alive(), f"{proc.name} died: {proc.output()}"
            check_invariants(db, proofs_set, rightful_session)
            demo = next(p["signature"] for p in proofs_set if p["name"] == "demo_payment")
            check_ledger_thieves(
                db, [sessions[i]["id"] for i in ledger_thieves], demo, rightful_session[demo]
            )
            with db.tx() as s:
                applied = s.scalars(
                    select(AuditEvent).where(AuditEvent.action == "proof.applied")
                ).all()
            # Exactly one apply per receipt, whoever won it (staff or a worker).
            assert len(applied) == len({a.subject_id for a in applied})
            staff_applied = {a.subject_id for a in applied if a.data.get("via") == "staff"}
            assert staff_applied == set(applied_fresh)
            assert len(applied) >= 5
            print(
                f"applies: {len(staff_applied)} by staff, {len(applied) - len(staff_applied)} "
                f"automatic; proof answers {dict(codes)}"
            )
        finally:
            db.dispose()
        client.close()
        assert not rec.problems, rec.problems[:10]
    finally:
        for proc in procs:
            proc.stop()


def check_invariants(
    db: Database, proofs_set: list[dict[str, Any]], rightful_session: dict[str, str]
) -> None:
    with db.tx() as s:
        proofs = s.scalars(select(Proof)).all()
        # One proof per fingerprint and session; every submitted transfer is stored; and the
        # only proof that holds a transfer is its own session's.
        assert len({(p.fingerprint, p.session_id) for p in proofs}) == len(proofs)
        assert {p.ref for p in proofs} == {x["signature"] for x in proofs_set}
        holding = [p for p in proofs if p.status in ("verified", "requires_review")]
        assert len({p.fingerprint for p in holding}) == len(holding)
        for p in holding:
            assert p.session_id == rightful_session[p.ref], f"{p.ref} held by another session"
        by_id = {p.id: p for p in proofs}

        receipts = s.scalars(select(Receipt)).all()
        assert len({r.proof_id for r in receipts}) == len(receipts), "two receipts for one proof"
        assert len({r.session_id for r in receipts}) == len(receipts), (
            "two receipts for one session"
        )
        sessions = {ps.id: ps for ps in s.scalars(select(PaymentSession)).all()}
        for r in receipts:
            p, ps = by_id[r.proof_id], sessions[r.session_id]
            assert p.session_id == ps.id and p.status == "verified"
            assert (r.owner_id, r.access_product_id, r.amount) == (
                ps.owner_id,
                ps.access_product_id,
                ps.amount,
            )
            ev = s.scalar(
                select(SettlementEvidence)
                .where(SettlementEvidence.proof_id == p.id)
                .order_by(SettlementEvidence.id.desc())
                .limit(1)
            )
            assert ev is not None and ev.is_final and not ev.reorged
            assert ps.status == "paid"

        # Nothing lost: every session a final verified proof paid has its receipt (a session
        # that two transfers paid has one receipt; the other transfer waits for a refund).
        final_sessions = {
            p.session_id
            for p in proofs
            if p.status == "verified"
            and s.scalar(
                select(SettlementEvidence.is_final)
                .where(SettlementEvidence.proof_id == p.id)
                .order_by(SettlementEvidence.id.desc())
                .limit(1)
            )
        }
        assert {r.session_id for r in receipts} == final_sessions

        receipt_by_id = {r.id: r for r in receipts}
        per_session = defaultdict(int)
        for ent in s.scalars(select(Entitlement)).all():
            per_session[ent.session_id] += 1
            if ent.status == "active":
                # No active entitlement without a receipt whose settlement is final.
                assert ent.receipt_id in receipt_by_id
                assert receipt_by_id[ent.receipt_id].session_id == ent.session_id
            else:
                assert ent.status == "pending" and ent.receipt_id is None
        assert all(v == 1 for v in per_session.values()) and len(per_session) == len(sessions)

        # Every verification run left exactly its attempt row.
        for p in proofs:
            n = s.scalar(
                select(func.count())
                .select_from(VerificationAttempt)
                .where(VerificationAttempt.proof_id == p.id)
            )
            assert n == p.attempts >= 1

        stuck = s.scalar(
            select(func.count())
            .select_from(IdempotencyClaim)
            .where(IdempotencyClaim.status != "completed")
        )
        assert stuck == 0
        report = verify_chain(s)
        assert report.ok, report.message
        assert report.events > len(sessions) + len(proofs)


def check_ledger_thieves(db: Database, thieves: list[str], demo: str, holder: str) -> None:
    """Sessions bound to the payer's wallet or token account took nothing: every claim they
    made failed its binding, no receipt, no active entitlement; the demo payment (`demo`)
    is verified for its own session (`holder`)."""
    with db.tx() as s:
        claims = s.scalars(select(Proof).where(Proof.session_id.in_(thieves))).all()
        assert all((p.status, p.failure_code) == ("failed", "reference_missing") for p in claims)
        assert not s.scalars(select(Receipt).where(Receipt.session_id.in_(thieves))).all()
        ents = s.scalars(select(Entitlement).where(Entitlement.session_id.in_(thieves))).all()
        assert sorted(e.status for e in ents) == ["pending"] * len(thieves)
        own = s.scalar(select(Proof).where(Proof.ref == demo, Proof.session_id == holder))
        assert own is not None and own.status == "verified"
