"""Discovery's reference watches take turns in the order each fell due, a never-polled one
when its session was opened (storage/repo/reconciliation.py `sessions_by_reference_turn`),
and a cycle stops at its budget (RAILPROOF_DISCOVERY_CYCLE_BUDGET_S). A tenant that keeps
opening sessions paying wallets of its own, a few more each cycle than a budget reaches, must
not keep another tenant's session from its second look: a session polled once before its
payer paid is looked at again, and its payment discovered, while the stream goes on.
tests/test_discovery_hostile_tenants.py covers a fixed backlog."""

from __future__ import annotations

import json
from datetime import timedelta

from tests.conftest import CLOCK
from tests.helpers import SwitchableTransport
from tests.test_discovery import _paying_elsewhere, _refs, make_engine
from tests.test_discovery_hostile_tenants import ELSEWHERE, _bobs_wallets
from verifier.services import discovery


def test_a_stream_of_fresh_sessions_never_takes_another_tenants_next_look(db_url, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(discovery, "_clock", lambda: clock[0])
    doc = json.loads(ELSEWHERE.read_text())
    exp, sig, real = doc["expect"], doc["calls"][0]["params"][0], doc["calls"][0]["result"]
    listing = [
        {
            "signature": sig,
            "slot": real["slot"],
            "blockTime": real["blockTime"],
            "err": None,
            "memo": None,
            "confirmationStatus": "finalized",
        }
    ]
    paid = [False]
    listed: list[str] = []
    inner = SwitchableTransport(doc["calls"])

    class Node:
        """A reference's listing takes a second of the cycle's clock; alice's reference lists
        her payment once her payer has paid; bob's wallets never receive anything."""

        source = "cassette"

        def call(self, method, params):
            if method == "getSignaturesForAddress":
                listed.append(params[0])
                clock[0] += 1.0
                return listing if paid[0] and params[0] == exp["reference"] else []
            return inner.call(method, params)

    e = make_engine(db_url, discovery_max_backoff_s=60.0)
    e.settings.discovery_cycle_budget_s = 4.5  # five lookups a cycle
    try:
        e.chains.set_transport("solana-mainnet", Node())
        e.settings.clock = CLOCK
        victim = _paying_elsewhere(e, exp)  # alice's session, paying a merchant's wallet
        rail = e.rail("solana_usdc")
        discovery.watch_solana(e, rail)  # looked at once: nothing paid yet
        assert listed == [exp["reference"]]
        paid[0] = True  # alice's payer pays now
        for _ in range(10):  # ten cycles, each past every watch's back-off
            e.settings.clock = e.settings.now() + timedelta(seconds=120)
            _bobs_wallets(e, 6)  # bob's stream: six new sessions a cycle (his limit: 40/2 s)
            discovery.watch_solana(e, rail)
        looks = listed.count(exp["reference"])
        assert looks > 1, f"alice's session was looked at {looks} time(s) in 11 cycles"
        assert _refs(e, victim["id"]) == [(sig, "verified")]
    finally:
        e.db.dispose()
