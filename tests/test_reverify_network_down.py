"""A network whose node is down holds no other network's finality and apply for a sweep.

The sweep re-verifies pending proofs one by one before it refreshes any finality or applies
anything, and each call to a node that is down costs the RPC policy's whole total
(RAILPROOF_RPC_TOTAL_S, 20 s by default). Once a network's proofs have spent that total in a
sweep on a node that could not be asked, the other proofs of its network wait for the next
sweep (worker/loop.py `reverify_pending`). A node that is up and refuses one proof's own
request at once sends no one else's proof to the next sweep.

Counted in calls to the failing node before the healthy network's finality call, on a clock
each timed-out call moves by the RPC policy's total, never in wall-clock time."""

from __future__ import annotations

from typing import Any

import pytest

from rails.errors import RpcErrorResponse, RpcUnavailable
from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from tests.helpers import advance
from verifier.core.engine import Engine
from verifier.services import proofs
from verifier.services.sessions import NewSession, open_session
from verifier.storage.repo import proofs as proof_repo
from verifier.worker import loop as worker

OTHER_NETWORK = """
[networks.fakenet2]
family = "fake"

[rails.fake_other]
family = "fake"
stage = "live"
production_enabled = true
network = "fakenet2"
asset_symbol = "FUSD"
decimals = 6
proof_types = ["fake_tx"]
finality = { mode = "commitment", level = "finalized" }
assets = { fakenet2 = "fusd" }
"""


class TimingOut:
    """fakenet2's node during an outage: every call runs to the RPC policy's total, then
    fails (here at once; each call stands for RAILPROOF_RPC_TOTAL_S of the sweep)."""

    source = "live"

    def __init__(self, events: list[str], clock: list[float], total_s: float):
        self.events, self.clock, self.total_s = events, clock, total_s

    def call(self, method: str, params: list[Any]) -> Any:
        self.events.append("timeout")
        self.clock[0] += self.total_s
        raise RpcUnavailable(f"{method}: read timed out")


class Recording(ScriptedChain):
    def __init__(self, events: list[str]):
        super().__init__()
        self.events = events

    def call(self, method: str, params: list[Any]) -> Any:
        self.events.append(method)
        return super().call(method, params)


@pytest.fixture
def two_networks(db_url, monkeypatch):
    events: list[str] = []
    clock = [0.0]
    monkeypatch.setattr(worker, "_clock", lambda: clock[0])
    e = Engine(make_settings(db_url, auto_apply=True), catalog=catalog_with_fake(OTHER_NETWORK))
    healthy = Recording(events)
    e.chains.set_transport("fakenet", healthy)
    e.chains.set_transport("fakenet2", TimingOut(events, clock, e.settings.rpc_total_s))
    e.ensure_rail_states()
    yield e, healthy, events
    e.db.dispose()


def _session(e, owner: str, rail_id: str) -> dict:
    return open_session(
        e,
        NewSession(
            owner_id=owner,
            rail_id=rail_id,
            access_product_id="pro",
            amount=1_000_000,
            recipient="fatreasury",
        ),
        actor="svc",
    )


def test_a_network_whose_node_is_down_does_not_hold_another_networks_finality(two_networks):
    e, healthy, events = two_networks
    # Bob's proofs on fakenet2, whose node is down: pending rpc_unavailable, due again soon.
    ps = _session(e, "bob", "fake_other")
    for i in range(100):
        view, _ = proofs.submit_proof(e, ps["id"], f"fx{i:08x}", ["bob"])
        assert view["status"] == "pending", view
    # Alice's payment on fakenet: verified, confirmed; then final on chain.
    mine = _session(e, "alice", "fake_live")
    tx = "fx" + "ab" * 16
    healthy.txs[tx] = {
        "status": "ok",
        "to": "fatreasury",
        "amount": 1_000_000,
        "asset": "fusd",
        "refs": [mine["reference"]],
        "finality": "confirmed",
    }
    view, _ = proofs.submit_proof(e, mine["id"], tx, ["alice"])
    assert (view["status"], view["settlement"]["finality"]) == ("verified", "confirmed")
    healthy.statuses[tx] = "finalized"
    advance(e, 120)
    events.clear()

    worker.sweep(e, "w1", batch=100, deliveries=False)

    assert proofs.get_proof(e, view["id"], ["alice"])["receipt_id"], "alice was not credited"
    before = events[: events.index("fake_getStatuses")].count("timeout")
    assert before <= 10, (
        f"alice's finality waited behind {before} timed-out calls to another network's node "
        f"(~{before * 20} s at the default RAILPROOF_RPC_TOTAL_S)"
    )


def test_the_proofs_left_for_the_next_sweep_stay_due_and_unclaimed(two_networks):
    e, _, events = two_networks
    ps = _session(e, "bob", "fake_other")
    ids = [proofs.submit_proof(e, ps["id"], f"fx{i:08x}", ["bob"])[0]["id"] for i in range(5)]
    advance(e, 120)
    events.clear()

    assert worker.reverify_pending(e, "w1", 100) == 1  # one asked, four left
    assert events.count("timeout") <= 3  # one proof's calls (the RPC policy's retries)
    with e.db.tx() as s:
        rows = [proof_repo.get(s, pid) for pid in ids]
    asked = [p for p in rows if p.attempts == 2]
    left = [p for p in rows if p.attempts == 1]
    assert len(asked) == 1 and len(left) == 4
    assert all(p.claimed_by is None and p.claimed_until is None for p in rows)
    now = e.now().replace(tzinfo=None)
    assert all(p.next_check_at.replace(tzinfo=None) <= now for p in left)
    # The next sweep asks one of them (the one asked is not due again yet).
    events.clear()
    assert worker.reverify_pending(e, "w1", 100) == 1
    with e.db.tx() as s:
        assert sum(proof_repo.get(s, p.id).attempts == 2 for p in left) == 1


class OneRequestRefused(ScriptedChain):
    """A node that is up and answers some requests (one tenant's proofs') with a JSON-RPC
    error at once (a provider refusing an eth_getLogs range, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str] = set()

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "fake_getTransfer" and params[0] in self.refused:
            raise RpcErrorResponse(method, {"code": -32005, "message": "range too large"})
        return super().call(method, params)


def test_one_tenants_refused_requests_do_not_send_anothers_proof_to_the_next_sweep(db_url):
    e = Engine(make_settings(db_url), catalog=catalog_with_fake())
    chain = OneRequestRefused()
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    try:
        # Alice keeps proofs whose own request the node refuses: pending rpc_unavailable.
        mine = _session(e, "alice", "fake_live")
        for i in range(5):
            tx = f"fx{i:08x}"
            chain.refused.add(tx)
            view, _ = proofs.submit_proof(e, mine["id"], tx, ["alice"])
            assert (view["status"], view["failure_code"]) == ("pending", "rpc_unavailable")
        advance(e, 30)
        # Bob's payment, handed over before the node saw it, which the node now answers.
        theirs = _session(e, "bob", "fake_live")
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

        assert worker.reverify_pending(e, "w1", 100) == 6  # every claimed proof asked
        got = proofs.get_proof(e, view["id"], ["bob"])
        assert got["status"] == "verified", (got["status"], got["failure_code"])
    finally:
        e.db.dispose()
