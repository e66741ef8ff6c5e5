"""The worker's apply sweep in batches (`gate.apply_many`): the same receipts, entitlements,
sessions, audit events, outbox events and metrics as applying each proof on its own; a blocked
proof left alone in a batch that applies the others; proofs sharing a session applied in turn;
a failing batch rolled back whole, after which the sweep applies proof by proof; two
sweeps racing over the same proofs crediting each exactly once. And which proofs a sweep
picks: from the index of proofs not applied yet, never those that cannot apply (a second
transfer for a paid order, a paused or unlisted rail), so they cannot crowd the others out.
On SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text, update

from tests.helpers import advance, audit_actions
from tests.test_gate import OP, paid_proof
from verifier.services import audit, gate, rails_admin, reconciliation, webhook_endpoints
from verifier.storage.models import Entitlement, PaymentSession, Proof, Receipt
from verifier.storage.repo import proofs as proof_repo
from verifier.storage.webhook_models import OutboxEvent, WebhookDelivery
from verifier.worker import loop as worker


def _receipts(engine) -> dict[str, Receipt]:
    with engine.db.tx() as s:
        return {r.proof_id: r for r in s.scalars(select(Receipt)).all()}


def _credited(engine, proof_ids: list[str]) -> list[dict]:
    """What applying each proof wrote, as plain values that do not depend on generated ids."""
    receipts = _receipts(engine)
    actions = audit_actions(engine)
    out = []
    with engine.db.tx() as s:
        for pid in proof_ids:
            p = s.get(Proof, pid)
            ps = s.get(PaymentSession, p.session_id)
            r = receipts.get(pid)
            ent = s.scalar(select(Entitlement).where(Entitlement.session_id == ps.id))
            events = (
                s.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.resource_id.in_([r.id, ent.id]))
                    .order_by(OutboxEvent.type)
                ).all()
                if r is not None
                else []
            )
            if r is None:
                out.append({"receipt": None, "entitlement": ent.status, "session": ps.status})
                continue
            out.append(
                {
                    "receipt": (r.session_id == ps.id, r.amount, r.owner_id, r.rail_id),
                    "created_by": r.created_by,
                    "entitlement": (ent.status, ent.receipt_id == r.id),
                    "session": ps.status,
                    "events": [
                        (e.type, e.sequence, e.owner_id, e.payload["id"] in (r.id, ent.id))
                        for e in events
                    ],
                    "audit": [
                        (a.action, a.actor)
                        for a in actions
                        if a.subject_id in (r.id, ent.id)
                        or (a.subject_id == pid and a.action == "proof.applied")
                    ],
                }
            )
    return out


def _metric(engine, name: str, **labels: str) -> float:
    return engine.metrics.registry.get_sample_value(f"railproof_{name}", labels) or 0.0


def _chain_intact(engine) -> None:
    with engine.db.tx() as s:
        rep = audit.verify_chain(s)
    assert rep.ok, rep.message


def test_a_batch_writes_what_applying_each_proof_writes(engine, chain, monkeypatch):
    webhook_endpoints.create_endpoint(
        engine, "svc", ["alice"], "http://127.0.0.1:9/hook", ["receipt.created"]
    )
    one_by_one = [paid_proof(engine, chain)[1]["id"] for _ in range(3)]
    batched = [paid_proof(engine, chain)[1]["id"] for _ in range(3)]
    for pid in one_by_one:
        gate.apply(engine, pid, OP, gate.Via.auto)
    receipts_before = _metric(engine, "receipts_total", rail_id="fake_live")

    # The batch path only: a proof applied on its own here would be a fallback.
    def refuse(*_a, **_k):
        raise AssertionError("a proof was applied on its own")

    monkeypatch.setattr(gate, "apply", refuse)
    assert gate.apply_many(engine, batched, OP, gate.Via.auto) == 3

    assert _credited(engine, batched) == _credited(engine, one_by_one)
    first = _credited(engine, batched)[0]
    assert first["receipt"] == (True, 1_500_000, "alice", "fake_live")
    assert first["entitlement"] == ("active", True) and first["session"] == "paid"
    assert first["events"] == [
        ("entitlement.activated", 1, "alice", True),
        ("receipt.created", 1, "alice", True),
    ]
    assert [action for action, _ in first["audit"]] == [
        "receipt.created",
        "entitlement.activated",
        "proof.applied",
    ]
    assert _metric(engine, "receipts_total", rail_id="fake_live") == receipts_before + 3
    with engine.db.tx() as s:
        # One delivery per receipt.created event, to the endpoint subscribed to it.
        deliveries = s.scalars(select(WebhookDelivery)).all()
    assert len(deliveries) == 6
    _chain_intact(engine)
    # Applied already: a second batch changes nothing and answers them as applied.
    before = _receipts(engine)
    assert gate.apply_many(engine, batched, OP, gate.Via.auto) == 3
    assert _receipts(engine).keys() == before.keys()


def test_a_blocked_proof_is_left_as_it_is_and_counted(engine, chain):
    ids = [paid_proof(engine, chain)[1]["id"] for _ in range(3)]
    # The middle proof's session now asks for another amount: its tuple binding fails.
    with engine.db.tx() as s:
        sid = s.get(Proof, ids[1]).session_id
        s.execute(update(PaymentSession).where(PaymentSession.id == sid).values(amount=7))
    blocks = _metric(engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="tuple_bound")
    assert gate.apply_many(engine, ids, OP, gate.Via.auto) == 2
    got = _receipts(engine)
    assert ids[0] in got and ids[2] in got and ids[1] not in got
    assert (
        _metric(engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="tuple_bound")
        == blocks + 1
    )
    with engine.db.tx() as s:
        assert s.get(PaymentSession, sid).status == "open"
    _chain_intact(engine)


def test_proofs_sharing_a_session_are_applied_in_turn(engine, chain):
    sess, a = paid_proof(engine, chain)
    _, b = paid_proof(engine, chain, session=sess)
    other = paid_proof(engine, chain)[1]["id"]
    # b first: it pays the session, and a then meets its receipt.
    assert gate.apply_many(engine, [b["id"], other, a["id"]], OP, gate.Via.auto) == 2
    got = _receipts(engine)
    assert b["id"] in got and other in got and a["id"] not in got
    with engine.db.tx() as s:
        assert len(s.scalars(select(Receipt).where(Receipt.session_id == sess["id"])).all()) == 1


def test_a_paused_rail_blocks_the_whole_batch(engine, chain):
    ids = [paid_proof(engine, chain)[1]["id"] for _ in range(2)]
    rails_admin.set_paused(engine, "fake_live", True, OP)
    assert gate.apply_many(engine, ids, OP, gate.Via.auto) == 0
    assert _receipts(engine) == {}


def test_a_failing_batch_rolls_back_whole_and_the_sweep_goes_proof_by_proof(
    engine, chain, monkeypatch
):
    engine.settings.auto_apply = True
    ids = [paid_proof(engine, chain)[1]["id"] for _ in range(3)]
    engine.fail_after_receipt_insert = True
    with pytest.raises(RuntimeError):
        gate.apply_many(engine, ids, OP, gate.Via.auto)
    engine.fail_after_receipt_insert = False
    assert _receipts(engine) == {}  # the receipts it had written are gone with the batch
    _chain_intact(engine)

    # Anything else going wrong in the batch: each proof is applied on its own instead.
    def broken(*_a, **_k):
        raise RuntimeError("batch read failed")

    monkeypatch.setattr(gate._Prefetched, "__init__", broken)
    assert worker.auto_apply(engine, 10) == 3
    assert set(_receipts(engine)) == set(ids)
    _chain_intact(engine)


def test_two_sweeps_racing_over_the_same_proofs_credit_each_once(engine, chain):
    ids = [paid_proof(engine, chain)[1]["id"] for _ in range(8)]
    errors: list[BaseException] = []
    answers: list[int] = []
    start = threading.Barrier(2)

    def sweep(order: list[str]) -> None:
        try:
            start.wait()
            answers.append(gate.apply_many(engine, order, OP, gate.Via.auto))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=sweep, args=(ids,)),
        threading.Thread(target=sweep, args=(list(reversed(ids)),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert answers == [8, 8]  # the second answers every proof as applied already
    assert set(_receipts(engine)) == set(ids)
    assert [a.action for a in audit_actions(engine)].count("proof.applied") == 8
    _chain_intact(engine)


def test_appliers_racing_over_sessions_paid_twice_credit_one_transfer_and_tell_the_other(
    engine, chain
):
    # Each session paid twice, both transfers verified and final before any credit. One
    # sweep starts from the first transfers, another from the second ones, and staff apply
    # them one by one: each locks the other transfer of a session with its own, in id order,
    # before the session, so none waits on another's proofs while holding a session.
    pairs = []
    for _ in range(4):
        session, first = paid_proof(engine, chain)
        pairs.append((first["id"], paid_proof(engine, chain, session=session)[1]["id"]))
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def run(call) -> None:
        try:
            start.wait()
            call()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(lambda: gate.apply_many(engine, firsts, OP),)),
        threading.Thread(
            target=run, args=(lambda: gate.apply_many(engine, list(reversed(seconds)), OP),)
        ),
        threading.Thread(target=run, args=(lambda: gate.apply_each(engine, seconds, OP),)),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    receipts = _receipts(engine)
    with engine.db.tx() as s:
        for a, b in pairs:
            paid, other = (a, b) if a in receipts else (b, a)
            assert paid in receipts and other not in receipts
            assert "not credited" not in (s.get(Proof, paid).detail or "")
            assert s.get(Proof, other).detail.count("not credited") == 1
    _chain_intact(engine)


# -- which proofs the sweep picks -----------------------------------------------------------


def _unapplied(engine) -> list[str]:
    with engine.db.tx() as s:
        return proof_repo.final_unapplied(s, ["fake_live"], 100)


def test_applying_takes_a_proof_out_of_the_sweeps_selection(engine, chain):
    one = paid_proof(engine, chain)[1]["id"]
    many = [paid_proof(engine, chain)[1]["id"] for _ in range(2)]
    waiting = paid_proof(engine, chain, finality="confirmed")[1]["id"]
    assert _unapplied(engine) == [one, *many]  # oldest first; not the unfinal one
    gate.apply(engine, one, OP, gate.Via.auto)
    gate.apply_many(engine, many, OP, gate.Via.auto)
    assert _unapplied(engine) == []
    receipts = _receipts(engine)
    with engine.db.tx() as s:
        for pid in [one, *many]:
            assert s.get(Proof, pid).applied_at == receipts[pid].created_at
        assert s.get(Proof, waiting).applied_at is None


def test_the_sweeps_selection_reads_its_partial_index(engine):
    # The planner may only use a partial index whose predicate the query implies; otherwise
    # it reads every verified proof ever stored.
    q = proof_repo.final_unapplied_query(
        ["fake_live"], 256, networks={"fake_live": ("fakenet", "fusd")}
    )
    with engine.db.tx() as s:
        dialect = s.get_bind().dialect
        sql = str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if dialect.name == "postgresql":
            # Tables this small are read whole whatever the indexes; forbid that to see
            # whether the index can serve the query at all.
            s.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(s.execute(text(f"EXPLAIN {sql}")).scalars())
        else:
            plan = "\n".join(str(r[-1]) for r in s.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "ix_proofs_unapplied" in plan, plan


def test_the_migration_marks_proofs_applied_before_it(db_url, chain):
    from alembic import command

    from tests.conftest import make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine
    from verifier.storage.db import alembic_config

    engine = Engine(make_settings(db_url), catalog=catalog_with_fake())
    engine.chains.set_transport("fakenet", chain)
    engine.ensure_rail_states()
    try:
        applied = paid_proof(engine, chain)[1]["id"]
        waiting = paid_proof(engine, chain)[1]["id"]
        gate.apply(engine, applied, OP, gate.Via.auto)
        engine.db.dispose()
        command.downgrade(alembic_config(db_url), "0011")
        command.upgrade(alembic_config(db_url), "head")
        receipt = _receipts(engine)[applied]
        with engine.db.tx() as s:
            assert s.get(Proof, applied).applied_at == receipt.created_at
            assert s.get(Proof, waiting).applied_at is None
        assert _unapplied(engine) == [waiting]
    finally:
        engine.db.dispose()


def test_proofs_that_can_never_apply_do_not_hold_up_the_sweep(engine, chain):
    engine.settings.auto_apply = True
    # Two orders paid twice each: the second transfer of each is verified and final, but its
    # session is paid already, so no sweep can ever apply it.
    for _ in range(2):
        sess, first = paid_proof(engine, chain)
        _, second = paid_proof(engine, chain, session=sess)
        assert worker.auto_apply(engine, 10) == 1  # the first transfer pays the order
        assert second["id"] not in _receipts(engine)
    blocks = _metric(engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="tuple_bound")
    # A newer payment, with sweeps of two: the two doubles are older and would fill them.
    newer = paid_proof(engine, chain)[1]["id"]
    assert worker.auto_apply(engine, 2) == 1
    assert newer in _receipts(engine)
    # And they are not tried (and counted as blocked) over and over.
    assert (
        _metric(engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="tuple_bound")
        == blocks
    )


def test_a_paused_rail_is_not_swept_until_it_resumes(engine, chain):
    engine.settings.auto_apply = True
    ids = [paid_proof(engine, chain)[1]["id"] for _ in range(2)]
    rails_admin.set_paused(engine, "fake_live", True, OP)
    paused = _metric(
        engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="rail_not_paused"
    )
    assert worker.auto_apply(engine, 10) == 0
    assert _receipts(engine) == {}
    assert (
        _metric(engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="rail_not_paused")
        == paused
    )
    rails_admin.set_paused(engine, "fake_live", False, OP)
    assert worker.auto_apply(engine, 10) == 2
    assert set(_receipts(engine)) == set(ids)


def test_a_rail_outside_the_apply_allowlist_is_not_swept(engine, chain):
    engine.settings.auto_apply = True
    pid = paid_proof(engine, chain)[1]["id"]
    engine.settings.apply_rail_allowlist = []
    listed = _metric(
        engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="rail_allowlisted"
    )
    assert worker.auto_apply(engine, 10) == 0
    # Not tried: it could only be blocked (and counted) on every sweep.
    assert (
        _metric(engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="rail_allowlisted")
        == listed
    )
    engine.settings.apply_rail_allowlist = ["fake_live"]
    assert worker.auto_apply(engine, 10) == 1
    assert pid in _receipts(engine)


def test_proofs_staff_sent_back_do_not_hold_up_the_sweep(engine, chain):
    # Two payments staff refunded in reconciliation: verified and final, never applied (the
    # gate's transfer_not_sent_back), and older than the next payment.
    back = [paid_proof(engine, chain)[1]["id"] for _ in range(2)]
    advance(engine, engine.settings.reconcile_verified_sla_seconds + 60)
    run = reconciliation.run(
        engine,
        reconciliation.RunRequest(
            scope="rail_proofs", incident_id="INC-1", operator_reason="past the SLA"
        ),
        "ops1",
    )
    found = [f for f in run["findings"] if f["kind"] == "verified_without_receipt"]
    assert sorted(f["subjects"]["proof_id"] for f in found) == sorted(back)
    for f in found:
        reconciliation.resolve_finding(engine, f["id"], "refunded", OP)
    # A newer payment, with sweeps of two: the two sent back are older and would fill them.
    newer = paid_proof(engine, chain)[1]["id"]
    assert worker.auto_apply(engine, 2) == 1
    assert set(_receipts(engine)) == {newer}
    # Nor are they tried, and counted blocked, on every sweep.
    assert worker.auto_apply(engine, 2) == 0
    assert not _metric(
        engine, "apply_gate_blocks_total", rail_id="fake_live", blocker="transfer_not_sent_back"
    )
