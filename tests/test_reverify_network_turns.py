"""A tenant's proofs whose own request hangs to the RPC policy's total (a node that is up
for everyone else) must not send another tenant's proof on that network to the next sweep
sweep after sweep: the skip keeps the skipped proofs' due time, so the tenant's backlog of
older due proofs is first in turn every sweep, one timing out per sweep."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from rails.errors import RpcUnavailable
from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.helpers import advance
from verifier.core.engine import Engine
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Proof
from verifier.worker import loop as worker


class SlowForSome(ScriptedChain):
    """A node that is up, but whose answer to some requests (one tenant's proofs') runs to
    the RPC policy's total and times out (a provider's heavy log query, say)."""

    def __init__(self, clock: list[float], total_s: float) -> None:
        super().__init__()
        self.clock, self.total_s = clock, total_s
        self.slow: set[str] = set()

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "fake_getTransfer" and params[0] in self.slow:
            self.clock[0] += self.total_s
            raise RpcUnavailable(f"{method}: read timed out")
        return super().call(method, params)


def _session(e, owner: str) -> dict:
    return open_session(
        e,
        NewSession(
            owner_id=owner,
            rail_id="fake_live",
            access_product_id="pro",
            amount=1_000_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )


def test_one_tenants_slow_proofs_do_not_starve_anothers_sweep_after_sweep(db_url, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(worker, "_clock", lambda: clock[0])
    e = Engine(make_settings(db_url), catalog=catalog_with_fake())
    chain = SlowForSome(clock, e.settings.rpc_total_s)
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    try:
        mine = _session(e, "alice")
        for i in range(8):
            tx = f"fx{i:08x}"
            chain.slow.add(tx)
            view, _ = proofs.submit_proof(e, mine["id"], tx, ["alice"])
            assert view["status"] == "pending", view
        advance(e, 30)
        theirs = _session(e, "bob")
        tx = "fx" + "cd" * 16
        view, _ = proofs.submit_proof(e, theirs["id"], tx, ["bob"])
        assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found")
        chain.txs[tx] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1_000_000,
            "asset": "fusd",
            "refs": [theirs["reference"]],
        }
        advance(e, 120)
        # Sweeps one after the other (a few seconds apart): bob's proof is due all along.
        for _ in range(2):
            worker.reverify_pending(e, "w1", 100)
            advance(e, 1)
        got = proofs.get_proof(e, view["id"], ["bob"])
        assert got["status"] == "verified", (
            f"bob's due proof still {got['status']} {got['failure_code']} after two sweeps: "
            "each sweep alice's next older slow proof went first and sent it to the next"
        )
    finally:
        e.db.dispose()


def test_a_node_down_for_everyone_is_asked_for_each_owner_in_turn(db_url, monkeypatch):
    """A node down for every request: each sweep spends the RPC policy's total once on the
    network, and the owner it was spent for is not the one asked first in the next sweep."""
    clock = [0.0]
    monkeypatch.setattr(worker, "_clock", lambda: clock[0])
    e = Engine(make_settings(db_url), catalog=catalog_with_fake())
    chain = SlowForSome(clock, e.settings.rpc_total_s)
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    asked: list[str] = []
    real_call = chain.call

    def call(method: str, params: list[Any]) -> Any:
        if method == "fake_getTransfer":
            asked.append(params[0])
        return real_call(method, params)

    try:
        mine = _session(e, "alice")
        txs = {}
        for i in range(4):
            tx = f"fx{i:08x}"
            view, _ = proofs.submit_proof(e, mine["id"], tx, ["alice"])
            txs[tx] = "alice"
        advance(e, 30)
        theirs = _session(e, "bob")
        for i in range(4, 6):
            tx = f"fx{i:08x}"
            view, _ = proofs.submit_proof(e, theirs["id"], tx, ["bob"])
            txs[tx] = "bob"
        chain.slow.update(txs)  # the node is down now, for everyone
        monkeypatch.setattr(chain, "call", call)
        advance(e, 120)
        firsts = []
        for _ in range(4):
            asked.clear()
            worker.reverify_pending(e, "w1", 100)
            assert len(asked) == 1, asked  # one call's total a sweep, then the rest wait
            firsts.append(txs[asked[0]])
            advance(e, 1)
        assert firsts == ["alice", "bob", "alice", "bob"], firsts
    finally:
        e.db.dispose()


def test_skipped_claims_due_times_do_not_run_away_while_a_node_is_down(db_url, monkeypatch):
    """A node down for everyone (an ordinary outage) for minutes, several owners with pending
    proofs on it: the skipped proofs moved ahead each sweep stay near their due times (placed
    by the spread of the claimed ones, the distance doubled each sweep until the date
    overflowed, and every sweep, of every network, failed)."""
    clock = [0.0]
    monkeypatch.setattr(worker, "_clock", lambda: clock[0])
    e = Engine(make_settings(db_url), catalog=catalog_with_fake())
    chain = SlowForSome(clock, e.settings.rpc_total_s)
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    try:
        owners = [f"o{i}" for i in range(8)]
        sess = {o: _session(e, o) for o in owners}
        n = 0
        for o in owners:
            for _ in range(12):
                tx = f"fx{n:08x}"
                n += 1
                chain.slow.add(tx)  # the node is down (times out) for every request
                proofs.submit_proof(e, sess[o]["id"], tx, [o])
                advance(e, 1)
        start = e.now()
        errors = []
        lowest = None
        for _ in range(60):  # about five minutes of sweeps
            advance(e, 5)
            try:
                worker.reverify_pending(e, "w1", 100)
            except Exception as ex:  # noqa: BLE001 - asserted below
                errors.append(f"{type(ex).__name__}: {ex}")
                break
            with e.db.tx() as s:
                lowest = s.scalar(
                    select(func.min(Proof.next_check_at)).where(Proof.status == "pending")
                )
        assert not errors, errors
        # Every proof here was submitted within the last two minutes before `start`.
        assert lowest is None or lowest.replace(tzinfo=None) > (start - timedelta(days=1)).replace(
            tzinfo=None
        ), f"next_check_at ran back to {lowest}"
    finally:
        e.db.dispose()
