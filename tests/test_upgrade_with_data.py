"""Upgrades of databases holding what earlier versions stored: the new guarantees hold for
the old rows, and data a revision cannot carry stops it with a message naming the rows,
never a raw constraint error.

On both stores; the x402 payment is the recorded Base Sepolia payload, settled on a local
chain (tests/test_transfer_identity.py)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from rails import adapter_for
from rails.base import Settlement, canonical_json, fingerprint
from registry.catalog import RailOverrides, load_catalog
from tests.conftest import SERVICE_TOKEN, make_settings
from tests.fake_rail import catalog_with_fake
from tests.helpers import FAKE_SESSION
from tests.procs import base_env, cli
from tests.test_transfer_identity import (
    HEADER,
    IDENTITY,
    OPENED_AT,
    PAY_TO,
    SETTLED_AT,
    VALUE,
    Settled,
    served,
)
from verifier.core.engine import Engine
from verifier.core.errors import Refused
from verifier.http.api import create_app
from verifier.services import audit, gate, proofs, queries, sessions
from verifier.storage.db import Database, current_revision, upgrade
from verifier.storage.models import Proof, Receipt, TransferHold
from verifier.worker.loop import sweep


def _insert(url: str, *rows: tuple[str, dict]) -> None:
    eng = create_engine(url)
    with eng.begin() as c:
        for sql, params in rows:
            c.execute(text(sql), params)
    eng.dispose()


def _credited_x402(url: str, settled: Settled) -> str:
    """Alice's x402 payment as the schema before transfer holds stored it: session paid,
    proof verified, settlement final, receipt and active entitlement. Returns its fingerprint."""
    return _credited(url, settled, "x402", "x402_payment_payload", HEADER)


def _credited(url: str, settled: Settled, rail_id: str, proof_type: str, raw: str) -> str:
    """Alice's payment on `rail_id` (rows named after it), as `_credited_x402` says."""
    rail = load_catalog().resolve(rail_id, RailOverrides(network="base-sepolia"))
    ref = adapter_for(rail).normalize_proof(proof_type, raw)
    fp = fingerprint(rail.family, rail.network, proof_type, ref)
    tag = "x402" if rail_id == "x402" else "base"
    ids = {k: f"{k}_{tag}" for k in ("ses", "prf", "rcp", "ent")} | {
        "rail": rail_id,
        "ptype": proof_type,
    }
    opened = datetime.fromtimestamp(OPENED_AT - 60, tz=UTC)
    paid = datetime.fromtimestamp(SETTLED_AT + 60, tz=UTC)
    receipt = settled.receipt(settled.settlement)
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(
            text(
                "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, amount, "
                "network, asset, recipient, reference, memo, status, created_at, expires_at, "
                "paid_at) VALUES (:ses, 'alice', :rail, 'api', :amount, 'base-sepolia', "
                ":asset, :to, NULL, NULL, 'paid', :opened, :expires, :paid)"
            ),
            dict(
                **ids,
                amount=VALUE,
                asset=rail.asset,
                to=PAY_TO,
                opened=opened,
                expires=opened + timedelta(hours=1),
                paid=paid,
            ),
        )
        c.execute(
            text(
                "INSERT INTO proofs (id, fingerprint, rail_id, proof_type, ref, raw, owner_id, "
                "session_id, status, failure_code, detail, attempts, created_at, updated_at) "
                "VALUES (:prf, :fp, :rail, :ptype, :ref, :raw, 'alice', "
                ":ses, 'verified', NULL, 'authorization verified', 1, :at, :paid)"
            ),
            dict(**ids, fp=fp, ref=ref, raw=raw, at=opened + timedelta(seconds=30), paid=paid),
        )
        attempt = c.execute(
            text(
                "INSERT INTO verification_attempts (proof_id, status, failure_code, detail, "
                "observed, rpc_calls, latency_ms, source, worker, created_at) VALUES "
                "(:prf, 'verified', NULL, 'settled', '{}', 3, 5, 'live', 'w1', :paid) "
                "RETURNING id"
            ),
            dict(**ids, paid=paid),
        ).scalar_one()
        settlement = c.execute(
            text(
                "INSERT INTO settlement_evidence (proof_id, attempt_id, finality, is_final, "
                "reorged, slot, block_number, block_hash, confirmations, detail, source, "
                "observed_at) VALUES (:prf, :a, 'finalized', true, false, NULL, :bn, "
                ":bh, 20, 'finalized', 'live', :paid) RETURNING id"
            ),
            dict(
                **ids,
                a=attempt,
                bn=int(receipt["blockNumber"], 16),
                bh=receipt["blockHash"],
                paid=paid,
            ),
        ).scalar_one()
        c.execute(
            text(
                "INSERT INTO receipts (id, proof_id, session_id, settlement_id, owner_id, "
                "access_product_id, rail_id, amount, created_by, created_at) VALUES "
                "(:rcp, :prf, :ses, :st, 'alice', 'api', :rail, :amount, "
                "'ops1', :paid)"
            ),
            dict(**ids, st=settlement, amount=VALUE, paid=paid),
        )
        c.execute(
            text(
                "INSERT INTO entitlements (id, owner_id, access_product_id, session_id, status, "
                "receipt_id, reorg_flagged, created_at, updated_at) VALUES (:ent, "
                "'alice', 'api', :ses, 'active', :rcp, false, :paid, :paid)"
            ),
            dict(**ids, paid=paid),
        )
    eng.dispose()
    return fp


def _settled_in(engine: Engine, proof_id: str, settled: Settled) -> None:
    receipt = settled.receipt(settled.settlement)
    with engine.db.tx() as s:
        p = s.get(Proof, proof_id)
        att = proofs.latest_verified_attempt(s, proof_id)
        proofs.record_settlement(
            engine,
            s,
            p,
            att.id,
            Settlement(
                ref=p.ref,
                finality="finalized",
                is_final=True,
                block_number=int(receipt["blockNumber"], 16),
                block_hash=receipt["blockHash"],
                tx_hash=settled.settlement.lower(),
            ),
            "live",
        )


def _holds(url: str) -> dict[str, str]:
    db = Database(url)
    with db.tx() as s:
        held = {h.transfer_key: h.proof_id for h in s.scalars(select(TransferHold))}
    db.dispose()
    return held


def test_an_x402_payment_credited_before_transfer_holds_cannot_be_credited_again(empty_url):
    # SECURITY: the upgrade gave an x402 payment held before transfer holds only its
    # fingerprint, never its EIP-3009 identity, which is what refuses the same transfer named
    # by its settlement's hash: another owner's Base USDC session was credited it (201
    # verified) where a payment made on today's schema is refused.
    settled = Settled()
    upgrade(empty_url, "0004")
    fp = _credited_x402(empty_url, settled)
    upgrade(empty_url)
    assert _holds(empty_url) == {"proof:" + fp: "prf_x402", IDENTITY: "prf_x402"}

    with served(empty_url, settled.chain) as api:
        bob = api.open("base_usdc", "bob")
        r = api.submit(bob, settled.settlement, "bob")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "proof_owner_conflict"
    assert _holds(empty_url)[IDENTITY] == "prf_x402"


def test_a_payment_already_held_twice_is_left_for_staff_not_a_failed_upgrade(empty_url, caplog):
    # A Base USDC proof of the same settlement verified after 0005 holds the identity already:
    # the upgrade keeps both rows as they are and names the pair.
    settled = Settled()
    upgrade(empty_url, "0012")
    fp = _credited_x402(empty_url, settled)
    now = datetime.fromtimestamp(SETTLED_AT + 120, tz=UTC)
    _insert(
        empty_url,
        (
            "INSERT INTO transfer_holds (transfer_key, proof_id, session_id, owner_id, "
            "created_at) VALUES (:fp, 'prf_x402', 'ses_x402', 'alice', :now)",
            dict(fp="proof:" + fp, now=now),
        ),
        (
            "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, amount, "
            "network, asset, recipient, status, created_at, expires_at, payer) VALUES "
            "('ses_bob', 'bob', 'base_usdc', 'api', 1, 'base-sepolia', 'a', 'r', 'paid', :now, "
            ":later, 'p')",
            dict(now=now, later=now + timedelta(hours=1)),
        ),
        (
            "INSERT INTO proofs (id, fingerprint, rail_id, proof_type, ref, raw, owner_id, "
            "session_id, status, detail, attempts, created_at, updated_at) VALUES ('prf_bob', "
            "'b', 'base_usdc', 'evm_tx_hash', 'h', 'h', 'bob', 'ses_bob', 'verified', '', 1, "
            ":now, :now)",
            dict(now=now),
        ),
        (
            "INSERT INTO transfer_holds (transfer_key, proof_id, session_id, owner_id, "
            "created_at) VALUES (:key, 'prf_bob', 'ses_bob', 'bob', :now)",
            dict(key=IDENTITY, now=now),
        ),
    )
    with caplog.at_level("WARNING", logger="alembic.runtime.migration"):
        upgrade(empty_url)
    assert _holds(empty_url) == {"proof:" + fp: "prf_x402", IDENTITY: "prf_bob"}
    assert "prf_x402" in caplog.text and "prf_bob" in caplog.text, caplog.text


@pytest.mark.parametrize("start", ["0004", "0001"])
def test_sessions_sharing_a_reference_across_rails_stop_the_upgrade_by_name(empty_url, start):
    # References were unique per rail, so a solana_usdc and a solana_usdt session could share
    # one; the revision making them unique everywhere died on the unique index with a raw
    # IntegrityError and named nothing. The message says where the database is left, as read
    # after the failure: SQLite commits each revision, so it stops at 0004; PostgreSQL runs
    # every pending revision in one transaction, so it is back where it started.
    upgrade(empty_url, start)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ref = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
    _insert(
        empty_url,
        *(
            (
                "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, "
                "amount, network, asset, recipient, reference, memo, status, created_at, "
                "expires_at) VALUES (:id, 'alice', :rail, 'pro', 5, 'solana-mainnet', :mint, "
                "'C1bLvQGPqJx3xD3gtQqm4wP7P1q3u8TrRBh3GhDZ3DCb', :ref, NULL, 'open', :now, :exp)",
                dict(
                    id=sid, rail=rail_id, mint=mint, ref=ref, now=now, exp=now + timedelta(hours=1)
                ),
            )
            for sid, rail_id, mint in (
                ("ses_usdc", "solana_usdc", "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"),
                ("ses_usdt", "solana_usdt", "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB"),
            )
        ),
    )
    out = cli(["db", "upgrade"], base_env(database_url=empty_url))
    message = out.stdout + out.stderr
    assert out.returncode == 2, message
    assert "ses_usdc (solana_usdc, open)" in message and "ses_usdt (solana_usdt, open)" in message
    assert ref in message and "IntegrityError" not in message, message
    eng = create_engine(empty_url)
    left = "0004" if empty_url.startswith("sqlite") else start
    assert current_revision(eng) == left
    assert f"the database is left at revision {left}" in message, message
    with eng.connect() as c:
        kept = c.execute(text("SELECT id, reference FROM payment_sessions ORDER BY id")).all()
    eng.dispose()
    assert [tuple(r) for r in kept] == [("ses_usdc", ref), ("ses_usdt", ref)]

    _insert(empty_url, ("UPDATE payment_sessions SET reference = NULL WHERE id = 'ses_usdt'", {}))
    out = cli(["db", "upgrade"], base_env(database_url=empty_url))
    assert out.returncode == 0, out.stdout + out.stderr


def test_discovery_cursors_gain_their_walk_and_references_are_read_again(empty_url):
    # 0014: a treasury's cursor is kept (its watch goes on from it); a reference's, written
    # but never read before, is cleared, so that a payment listed behind it is not skipped.
    upgrade(empty_url, "0013")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    row = (
        "INSERT INTO discovery_cursors (watch_key, rail_id, last_signature, last_block, "
        "idle_polls, next_poll_at, updated_at) VALUES (:key, 'solana_usdc', :sig, NULL, 0, "
        "NULL, :at)"
    )
    treasury, reference = "solana:solana_usdc:mainnet:treasury:T", "solana:solana_usdc:ref:R"
    _insert(
        empty_url,
        (row, dict(key=treasury, sig="sigT", at=at)),
        (row, dict(key=reference, sig="sigR", at=at)),
    )
    upgrade(empty_url)
    eng = create_engine(empty_url)
    with eng.begin() as c:
        rows = c.execute(
            text(
                "SELECT watch_key, last_signature, walk_before, walk_newest, "
                "stuck_signature, stuck_failures FROM discovery_cursors ORDER BY watch_key"
            )
        ).all()
    eng.dispose()
    # No walk is under way, and none is stuck at a transaction the node did not return.
    assert [tuple(r) for r in rows] == [
        (treasury, "sigT", None, None, None, None),
        (reference, None, None, None, None, None),
    ]


def test_entitlements_stored_before_keep_their_list_order_and_new_ones_come_after(empty_url):
    # 0020: an owner's list pages by commit order (`seq`); the rows stored before are
    # numbered in the order their list had, (created_at, id).
    upgrade(empty_url, "0019")
    at = datetime(2025, 6, 1, tzinfo=UTC)
    session = (
        "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, amount, "
        "network, asset, recipient, reference, memo, status, created_at, expires_at, paid_at) "
        "VALUES (:id, 'alice', 'fake_live', 'pro', 1500000, 'fakenet', 'FAKE', 'fatreasury', "
        ":id, NULL, 'expired', :at, :until, NULL)"
    )
    entitlement = (
        "INSERT INTO entitlements (id, owner_id, access_product_id, session_id, status, "
        "receipt_id, reorg_flagged, created_at, updated_at) VALUES (:id, 'alice', 'pro', "
        ":sid, 'pending', NULL, false, :at, :at)"
    )
    # Ids out of time order, two at one instant: the list's order was (created_at, id).
    stored = [("ent_c", at), ("ent_a", at + timedelta(seconds=1)), ("ent_b", at)]
    _insert(
        empty_url,
        *((session, dict(id=f"ses_{e}", at=t, until=t + timedelta(hours=1))) for e, t in stored),
        *((entitlement, dict(id=e, sid=f"ses_{e}", at=t)) for e, t in stored),
    )
    upgrade(empty_url)
    eng = create_engine(empty_url)
    with eng.begin() as c:
        numbered = c.execute(text("SELECT id, seq FROM entitlements ORDER BY seq")).all()
    eng.dispose()
    assert [tuple(r) for r in numbered] == [("ent_b", 1), ("ent_c", 2), ("ent_a", 3)]

    engine = Engine(make_settings(empty_url), catalog=catalog_with_fake())
    engine.ensure_rail_states()
    opened = sessions.open_session(engine, sessions.NewSession(**FAKE_SESSION), actor="svc:t")
    listed = queries.entitlements_of(engine, "alice", 1000)
    assert [e["id"] for e in listed[:3]] == ["ent_b", "ent_c", "ent_a"]
    assert len(listed) == 4 and listed[3]["session_id"] == opened["id"], listed
    assert [e["id"] for e in queries.entitlements_of(engine, "alice", 2, "ent_c")] == [
        "ent_a",
        listed[3]["id"],
    ]
    engine.db.dispose()


def test_settlement_evidence_gains_the_transaction_its_detail_names(empty_url):
    # 0016: an x402 settlement found after verification named its transaction only in the
    # evidence's detail; the column is filled from it, so the apply gate's
    # transfer_not_sent_back reads it for payments settled before the upgrade too.
    settled = Settled()
    upgrade(empty_url, "0004")
    _credited_x402(empty_url, settled)
    upgrade(empty_url, "0015")
    tx = "0x" + "Ab" * 32
    eng = create_engine(empty_url)
    with eng.begin() as c:
        c.execute(
            text("UPDATE settlement_evidence SET detail = :d"),
            {"d": f"settled by {tx} (transfer to 0xto, value 1); 12 confirmations"},
        )
        c.execute(
            text(
                "INSERT INTO settlement_evidence (proof_id, attempt_id, finality, is_final, "
                "reorged, slot, block_number, block_hash, confirmations, detail, source, "
                "observed_at) SELECT proof_id, attempt_id, 'confirmed', false, false, NULL, "
                "NULL, NULL, NULL, 'no settlement yet', source, observed_at "
                "FROM settlement_evidence"
            )
        )
    upgrade(empty_url)
    with eng.begin() as c:
        got = c.execute(text("SELECT detail, tx_hash FROM settlement_evidence ORDER BY id")).all()
    eng.dispose()
    assert [r[1] for r in got] == [tx.lower(), None], got


def _base_usdc_credited_before_holds(url: str) -> tuple[Settled, str]:
    """Alice's Base USDC proof of the x402 settlement, credited at revision 0004, upgraded."""
    settled = Settled()
    upgrade(url, "0004")
    fp = _credited(url, settled, "base_usdc", "evm_tx_hash", settled.settlement)
    upgrade(url)
    return settled, fp


def test_a_base_usdc_settlement_credited_before_transfer_holds_is_not_credited_again_as_x402(
    empty_url,
):
    # SECURITY: the other way round. A Base USDC proof of an x402 facilitator's settlement,
    # credited before transfer holds, keeps only its fingerprint after the upgrade (its
    # authorization's identity is in the receipt's logs, which the database never stored).
    # The same payment named by its x402 payload then verifies for another owner; the apply
    # gate refuses it once its settlement is found to be that transaction.
    settled, fp = _base_usdc_credited_before_holds(empty_url)
    assert _holds(empty_url) == {"proof:" + fp: "prf_base"}

    with served(empty_url, settled.chain) as api:
        bob = api.open("x402", "bob")
        r = api.submit(bob, HEADER, "bob")
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        # What the worker's finality sweep records once it finds the authorization used
        # (the local chain's tester cannot filter logs by block range: the x402 rail's own
        # tests run that search, tests/test_sent_back_x402_settled_later.py).
        _settled_in(api.engine, pid, settled)
        assert api.proof(pid, "bob")["settlement"]["tx_hash"] == settled.settlement.lower()
        report = gate.dry_run_apply(api.engine, pid)
        (blocker,) = [b for b in report["blockers"] if b["code"] == "settlement_not_another_proof"]
        assert "prf_base" in blocker["detail"], blocker
        with pytest.raises(Refused):
            gate.apply(api.engine, pid, audit.Operator("ops1"), gate.Via.staff_receipt)
    with Database(empty_url).tx() as s:
        assert [r.proof_id for r in s.scalars(select(Receipt))] == ["prf_base"]


# The identity of a transfer the Base USDC proof counted, not this x402 payment's.
OTHER_TRANSFER = "eip155:84532:{}:0xtoken:0xrecipient:0xsender"


def test_a_proof_naming_its_transfers_blocks_no_other_authorization_of_its_transaction(
    empty_url,
):
    # A Base USDC proof verified since transfer holds holds the identities it counted. One
    # that does not name this authorization's (a settlement of several authorizations, one
    # of them another tenant's) is not this payment: the gate does not block on it.
    settled, fp = _base_usdc_credited_before_holds(empty_url)
    _insert(
        empty_url,
        (
            "INSERT INTO transfer_holds (transfer_key, proof_id, session_id, owner_id, "
            "created_at) VALUES (:k, 'prf_base', 'ses_base', 'alice', :at)",
            {"k": OTHER_TRANSFER.format(settled.settlement.lower()), "at": datetime.now(UTC)},
        ),
    )
    assert set(_holds(empty_url)) == {
        "proof:" + fp,
        OTHER_TRANSFER.format(settled.settlement.lower()),
    }

    with served(empty_url, settled.chain) as api:
        bob = api.open("x402", "bob")
        pid = api.submit(bob, HEADER, "bob").json()["id"]
        _settled_in(api.engine, pid, settled)
        report = gate.dry_run_apply(api.engine, pid)
        assert "settlement_not_another_proof" not in [b["code"] for b in report["blockers"]]


def test_an_x402_payment_final_before_settlement_times_and_not_credited_is_asked_again(empty_url):
    # 0018: evidence keeps the settling block's time, and the apply gate refuses an x402
    # proof without it. One final and not credited at the upgrade had no next check (the
    # reorg watch asks only under a receipt): it is made due, so the worker fills the time in.
    settled = Settled()
    upgrade(empty_url, "0004")
    _credited_x402(empty_url, settled)
    upgrade(empty_url, "0017")
    eng = create_engine(empty_url)
    with eng.begin() as c:
        c.execute(text("DELETE FROM entitlements"))
        c.execute(text("DELETE FROM receipts"))
        c.execute(text("UPDATE proofs SET next_check_at = NULL"))
    upgrade(empty_url)
    with eng.begin() as c:
        due, updated = c.execute(text("SELECT next_check_at, updated_at FROM proofs")).one()
    eng.dispose()
    assert due is not None and due == updated


def test_a_session_create_retried_with_its_key_after_the_upgrade_replays_its_answer(empty_url):
    """A backend lost the 201 of POST /v1/payment-sessions and retries the same body with the
    same Idempotency-Key (README: "the same on each retry"); the deploy upgraded the service
    in between. The claim was hashed over 0.1.0's request model, which had no `payer`: the
    retry is the same request and gets the session it made, not 409 idempotency_conflict
    (its customer may be paying that session already)."""
    upgrade(empty_url, "0004")
    body = {
        "owner_id": "alice",
        "rail_id": "solana_usdc",
        "access_product_id": "api",
        "amount": "9007199254740993",
    }
    dump = {  # SessionIn.model_dump(mode="json") as 0.1.0 made it
        **body,
        "amount": 9_007_199_254_740_993,
        "recipient": None,
        "reference": "auto",
        "memo": None,
        "expires_in_seconds": None,
    }
    at = datetime(2026, 11, 25, tzinfo=UTC)
    _insert(
        empty_url,
        (
            "INSERT INTO idempotency_claims (principal, endpoint, key, request_hash, status, "
            "response_code, response, created_at, completed_at) VALUES ('svc:alice,alice-2', "
            "'POST /v1/payment-sessions', 'order-42', :hash, 'completed', 201, :response, :at, "
            ":at)",
            dict(
                hash=hashlib.sha256(canonical_json(dump)).hexdigest(),
                response=json.dumps({"id": "ses_0", "status": "open", "owner_id": "alice"}),
                at=at,
            ),
        ),
    )
    upgrade(empty_url)
    engine = Engine(make_settings(empty_url), catalog=catalog_with_fake())
    try:
        with TestClient(create_app(engine), raise_server_exceptions=False) as client:
            r = client.post(
                "/v1/payment-sessions",
                json=body,
                headers={"Authorization": f"Bearer {SERVICE_TOKEN}", "Idempotency-Key": "order-42"},
            )
        assert r.status_code == 201, r.text
        assert r.json()["id"] == "ses_0" and r.headers["Idempotent-Replayed"] == "true"
    finally:
        engine.db.dispose()


def _chain_of_0_1_0(url: str) -> None:
    """A session and its audit trail as railproof 0.1.0 (revisions 0001-0004) wrote them:
    the chain hashed with plain SHA-256 (the key came with 0005's release)."""
    at = datetime(2025, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    rows = [
        (
            "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, amount, "
            "network, asset, recipient, reference, status, created_at, expires_at) VALUES "
            "('ses0', 'alice', 'solana_usdc', 'api', 1500000, 'solana-mainnet', "
            "'EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v', "
            "'C1bL1CaQ6PjLKZyYRn11ZtydLqEfGUxdcvUS3frx8ocg', 'ref0', 'open', :at, :later)",
            dict(at=at, later=at + timedelta(hours=1)),
        )
    ]
    prev = audit.GENESIS
    for i, action in enumerate(["session.opened", "proof.submitted", "proof.failed"]):
        when = at + timedelta(seconds=i)
        h = audit.event_hash(prev, when, "svc:alice", action, "x", "ses0", {"n": i}, None, None)
        rows.append(
            (
                "INSERT INTO audit_events (at, actor, action, subject_type, subject_id, data, "
                "incident_id, reason, prev_hash, hash) VALUES (:at, 'svc:alice', :action, 'x', "
                "'ses0', :data, NULL, NULL, :prev, :h)",
                dict(at=when, action=action, data=json.dumps({"n": i}), prev=prev, h=h),
            )
        )
        prev = h
    _insert(url, *rows)


def test_a_database_written_by_0_1_0_is_served_once_its_chain_is_anchored_under_the_key(
    empty_url, tmp_path, monkeypatch
):
    # railproof 0.1.0 hashed the audit chain with plain SHA-256. After `db upgrade` no key
    # fitted it: `serve` and `worker` refused for good, telling the operator to "set the
    # deployment's key", which does not exist. `audit adopt-key` anchors the history under
    # the key once; the old events still verify, and are pinned by the anchor.
    upgrade(empty_url, "0004")
    _chain_of_0_1_0(empty_url)
    env = base_env(
        database_url=empty_url,
        chain="cassette",
        service_tokens=json.dumps({"svc-token-alice": ["alice"]}),
    )
    assert cli(["db", "upgrade"], env).returncode == 0

    for command in (["worker", "--once"], ["serve", "--port", "1"]):
        refused = cli(command, env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "verifies only without a key" in refused.stderr, refused.stderr
        assert "railproof 0.1.0" in refused.stderr and "checkpoint" in refused.stderr
        assert "railproof audit adopt-key" in refused.stderr
        assert "set the deployment's key" not in refused.stderr
    unadopted = cli(["audit", "verify", "--json"], env)
    assert unadopted.returncode == 1
    assert json.loads(unadopted.stdout)["first_broken_id"] == 1
    assert "adopt-key" in json.loads(unadopted.stdout)["message"]

    # A changing staff command: nothing is written without --confirm and the context.
    bare = cli(["audit", "adopt-key"], env)
    assert bare.returncode == 2 and "--confirm" in bare.stderr, bare.stderr
    context = ["--incident-id", "CHG-0.2", "--operator-reason", "upgrade from 0.1.0", "--confirm"]
    adopted = cli(["audit", "adopt-key", *context, "--json"], env)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert json.loads(adopted.stdout)["unkeyed_events"] == 3

    worker = cli(["worker", "--once"], env)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    verify = cli(["audit", "verify", "--json"], env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] is True and report["keyed"] is True and report["events"] >= 4
    # What `serve` runs in each API process starts too.
    from verifier.http.asgi import make_app

    for name, value in env.items():
        if name.startswith("RAILPROOF_"):
            monkeypatch.setenv(name, value)
    assert make_app() is not None

    # Checkpoints hold across the anchor.
    cp = tmp_path / "cp.json"
    assert cli(["audit", "checkpoint", "--out", str(cp)], env).returncode == 0
    held = cli(["audit", "verify", "--checkpoint", str(cp), "--json"], env)
    assert held.returncode == 0, held.stdout + held.stderr

    # Once only.
    again = cli(["audit", "adopt-key", *context], env)
    assert again.returncode == 2 and "audit_key_adopted_already" in again.stderr, again.stderr

    # The anchor pins the history before it: a rewritten 0.1.0 event is named.
    db = Database(empty_url)
    try:
        with db.engine.begin() as c:
            if db.postgres:
                c.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
            else:
                c.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
            c.execute(text("""UPDATE audit_events SET data = '{"n": 7}' WHERE id = 2"""))
    finally:
        db.dispose()
    tampered = cli(["audit", "verify", "--json"], env)
    assert tampered.returncode == 1
    assert json.loads(tampered.stdout)["first_broken_id"] == 2, tampered.stdout


# How a release before 0020 writes a session and its entitlement: it knows no `seq`.
_SESSION_0019 = (
    "INSERT INTO payment_sessions (id, owner_id, rail_id, access_product_id, amount, "
    "network, asset, recipient, reference, memo, status, created_at, expires_at, paid_at) "
    "VALUES (:id, 'alice', 'fake_live', 'pro', 1500000, 'fakenet', 'FAKE', 'fatreasury', "
    ":id, NULL, 'open', :at, :until, NULL)"
)
_ENTITLEMENT_0019 = (
    "INSERT INTO entitlements (id, owner_id, access_product_id, session_id, status, "
    "receipt_id, reorg_flagged, created_at, updated_at) VALUES (:id, 'alice', 'pro', "
    ":sid, 'pending', NULL, false, :at, :at)"
)


def _walk(engine: Engine, limit: int) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(20):
        page = queries.entitlements_of(engine, "alice", limit, after)
        seen += [e["id"] for e in page]
        if len(page) < limit:
            break
        after = page[-1]["id"]
    return seen


def test_an_entitlement_the_previous_release_wrote_during_the_upgrade_is_placed(empty_url):
    # A rolling upgrade: another replica migrated to 0020 while an API process of the
    # previous release still serves, writing entitlements without a place in the lists.
    upgrade(empty_url)
    engine = Engine(make_settings(empty_url), catalog=catalog_with_fake())
    engine.ensure_rail_states()
    sessions.open_session(engine, sessions.NewSession(**FAKE_SESSION), actor="svc:t")
    at = datetime.now(UTC)
    eng = create_engine(empty_url)
    with eng.begin() as c:
        c.execute(text(_SESSION_0019), dict(id="ses_old", at=at, until=at + timedelta(hours=1)))
        c.execute(text(_ENTITLEMENT_0019), dict(id="ent_old", sid="ses_old", at=at))
    eng.dispose()
    for _ in range(2):
        sessions.open_session(engine, sessions.NewSession(**FAKE_SESSION), actor="svc:t")
    try:
        # Until placed it is on no page, and it ends no walk early: the others all come.
        placed = _walk(engine, 1)
        assert len(placed) == 3 and "ent_old" not in placed, placed
        # The worker's sweep places it after every other: a walk holding the last mark
        # sees it next.
        assert sweep(engine, "w1", deliveries=False).get("entitlements_placed") == 1
        assert sessions.number_unplaced(engine) == 0
        assert queries.entitlements_of(engine, "alice", 10, placed[-1])[0]["id"] == "ent_old"
        assert _walk(engine, 1) == [*placed, "ent_old"]
    finally:
        engine.db.dispose()
