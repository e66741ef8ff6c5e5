"""Solana discovery against hostile tenants, on the recorded chains (fixtures/solana/generated).

- Sessions paying a recipient that is not the treasury are watched one by one, through their
  reference, `SESSIONS_PER_CYCLE` (5,000) a cycle. They are taken by turn: one tenant keeping
  that many open, unpaid sessions (a week each, 20 a second at the default rate limit) must
  not leave a session opened after them, another tenant's, never watched.
- A session opened after a payment, naming one of its keys as its reference, is not a session
  the payment could be for (verification says `session_not_open`): it must not make the
  payment look ambiguous and hide it from discovery.
"""

from __future__ import annotations

import json
from datetime import timedelta

from solders.keypair import Keypair

from tests.conftest import CLOCK
from tests.helpers import FIXTURES
from tests.test_discovery import DOC, _alices, _paying_elsewhere, _refs, make_engine
from verifier.services import discovery
from verifier.services.sessions import NewSession, open_session

ELSEWHERE = FIXTURES / "solana" / "generated" / "ata_created_same_tx.json"


def _bobs_wallets(e, n: int) -> list[str]:
    """The hostile tenant's open sessions paying wallets of its own, a week each, never paid:
    their references."""
    return [
        open_session(
            e,
            NewSession(
                owner_id="bob",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=1,
                recipient=str(Keypair().pubkey()),
                expires_in_seconds=7 * 24 * 3600,
            ),
            actor="svc",
        )["reference"]
        for _ in range(n)
    ]


class _Node:
    """The recorded chain, and a reference's listing: the victim's names its payment, any
    other reference (the hostile tenant's) has none."""

    source = "cassette"

    def __init__(self, inner, reference: str, listing: list[dict]):
        self.inner, self.reference, self.listing = inner, reference, listing
        self.listed: list[str] = []

    def call(self, method, params):
        if method == "getSignaturesForAddress":
            self.listed.append(params[0])
            return self.listing if params[0] == self.reference else []
        return self.inner.call(method, params)


def test_many_open_sessions_of_one_tenant_never_starve_another_tenants_session(db_url, monkeypatch):
    # (3 stands for SESSIONS_PER_CYCLE's 5,000, as tests/test_discovery does for its bounds)
    monkeypatch.setattr(discovery, "SESSIONS_PER_CYCLE", 3)
    from tests.helpers import SwitchableTransport

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
    e = make_engine(db_url)
    try:
        node = _Node(SwitchableTransport(doc["calls"]), exp["reference"], listing)
        e.chains.set_transport("solana-mainnet", node)
        # The hostile tenant: open sessions paying its own wallet, a week each, never paid.
        e.settings.clock = CLOCK - timedelta(seconds=60)
        _bobs_wallets(e, 3)
        e.settings.clock = CLOCK
        victim = _paying_elsewhere(e, exp)  # alice's session, paying a merchant's wallet
        rail = e.rail("solana_usdc")
        for _ in range(6):  # six worker cycles, each past every watch's back-off
            discovery.watch_solana(e, rail)
            e.settings.clock = e.settings.now() + timedelta(seconds=120)
        assert exp["reference"] in node.listed, "alice's session was never watched"
        assert _refs(e, victim["id"]) == [(sig, "verified")]
    finally:
        e.db.dispose()


# -- a key of the payment chosen as another session's reference after it was made -----------


def _with_second_key(extra: str):
    """The recorded "discovered" transfer into the treasury (fresh signature) carrying one more
    read-only, non-signer key (`extra`) after its reference, as a Solana Pay request with two
    references or an Actions provider's identity puts it; the treasury's listing of it."""
    import orjson

    from tests.helpers import SwitchableTransport
    from tests.test_discovery import DOC, EXPECT, _Node

    calls = {c["method"] + ":" + json.dumps(c["params"][0]): c for c in DOC["calls"]}
    sig = EXPECT["discovered"]["signature"]
    tx = calls["getTransaction:" + json.dumps(sig)]
    status = calls["getSignatureStatuses:" + json.dumps([sig])]
    new_sig = str(Keypair().sign_message(b"a second key"))
    result = json.loads(orjson.dumps(tx["result"]).decode().replace(sig, new_sig))
    message = result["transaction"]["message"]
    message["accountKeys"].append(
        {"pubkey": extra, "signer": False, "source": "transaction", "writable": False}
    )
    message["instructions"][0]["parsed"]["info"]["signers"].append(extra)
    entry = {
        "blockTime": result["blockTime"],
        "confirmationStatus": "finalized",
        "err": None,
        "memo": None,
        "signature": new_sig,
        "slot": result["slot"],
    }
    inner = SwitchableTransport(
        [
            {"method": "getTransaction", "params": [new_sig, tx["params"][1]], "result": result},
            {
                "method": "getSignatureStatuses",
                "params": [[new_sig], status["params"][1]],
                "result": status["result"],
            },
        ]
    )
    return new_sig, result["blockTime"], _Node(inner, [entry])


def test_a_session_opened_after_the_payment_naming_one_of_its_keys_never_hides_it(db_url):
    # Bob's session (its reference R) is paid by a transfer that also carries a read-only key
    # K. Once the transfer is on chain, Alice (another tenant) opens a session choosing K as
    # its reference. That session was opened after the transfer: it cannot be its payment
    # (verification says so: `session_not_open`, and Bob's own submission of it verifies,
    # the later session being no candidate). Discovery counts it anyway: "the transfer carries
    # the references of 2 sessions", and its watch moved past Bob's payment for good.
    from tests.test_discovery import EXPECT

    extra = str(Keypair().pubkey())
    sig, block_time, node = _with_second_key(extra)
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        e.chains.set_transport("solana-mainnet", node)
        bobs = open_session(
            e,
            NewSession(
                owner_id="bob",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=EXPECT["discovered"]["amount"],
                reference=EXPECT["discovered"]["reference"],
            ),
            actor="svc",
        )
        # After the transfer's block time (past any clock skew verification allows):
        e.settings.clock = CLOCK + timedelta(
            seconds=block_time - int(CLOCK.timestamp()) + e.settings.chain_clock_skew_seconds + 60
        )
        open_session(
            e,
            NewSession(
                owner_id="alice",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=EXPECT["discovered"]["amount"],
                reference=extra,
            ),
            actor="svc",
        )
        rail = e.rail("solana_usdc")
        for _ in range(3):
            discovery.watch_solana(e, rail)
            e.settings.clock = e.settings.now() + timedelta(seconds=120)
        assert _refs(e, bobs["id"]) == [(sig, "verified")]
    finally:
        e.db.dispose()


# -- the watches of many open sessions against the sweep's other work -----------------------


def test_many_open_sessions_of_one_tenant_hold_neither_the_sweep_nor_its_turns(
    db_url, monkeypatch, chain
):
    """A tenant's many sessions paying wallets of its own each cost a reference lookup: the
    worker re-checks submitted proofs before any of them, and a cycle stops at its budget
    (RAILPROOF_DISCOVERY_CYCLE_BUDGET_S), the rest first in turn next cycle."""
    from tests.fake_rail import catalog_with_fake
    from verifier.services import proofs
    from verifier.worker import loop as worker

    clock = [0.0]
    monkeypatch.setattr(discovery, "_clock", lambda: clock[0])
    e = make_engine(db_url)
    e.catalog = catalog_with_fake()
    e.ensure_rail_states()
    e.chains.set_transport("fakenet", chain)
    e.settings.discovery_cycle_budget_s = 4.5
    events: list[str] = []

    class _Slow:
        """A node that takes a second (on the cycle's clock) to list a reference's none."""

        source = "cassette"

        def call(self, method, params):
            assert method == "getSignaturesForAddress", method
            events.append(params[0])
            clock[0] += 1.0
            return []

    e.chains.set_transport("solana-mainnet", _Slow())
    try:
        bob = _bobs_wallets(e, 12)
        ps = open_session(
            e,
            NewSession(
                owner_id="alice",
                rail_id="fake_live",
                access_product_id="pro",
                amount=1_000_000,
                recipient="fatreasury",
            ),
            actor="svc",
        )
        view, _ = proofs.submit_proof(e, ps["id"], "fx00aa11bb", ["alice"])
        assert (view["status"], view["failure_code"]) == ("pending", "tx_not_found")
        chain.txs["fx00aa11bb"] = {
            "status": "ok",
            "to": "fatreasury",
            "amount": 1_000_000,
            "asset": "fusd",
            "refs": [ps["reference"]],
        }
        plain = chain.call

        def recorded(method, params):
            events.append(method)
            return plain(method, params)

        chain.call = recorded
        e.settings.clock = e.settings.now() + timedelta(seconds=120)  # alice's proof is due
        out = worker.sweep(e, "w1", deliveries=False)
        assert out["reverified"] == 1
        # alice's proof was asked before any of bob's watches, and the cycle stopped at its
        # budget: five lookups (the fifth passes 4.5 s), not twelve.
        assert events[0] == "fake_getTransfer", events[:3]
        first = events[1:]
        assert len(first) == 5 and set(first) <= set(bob), first
        # The next cycles take the references not reached first: every one within three.
        events.clear()
        for _ in range(2):
            discovery.cycle(e)
        assert set(bob) - set(first) <= set(events), "a reference never had its turn"
    finally:
        e.db.dispose()


def test_a_slow_treasury_walk_leaves_the_references_their_budget(db_url, monkeypatch):
    """A busy treasury's walk may take longer than the budget: the references' budget starts
    after it, and one reference at least is looked up every cycle."""
    from rails.solana import token_account

    clock = [0.0]
    monkeypatch.setattr(discovery, "_clock", lambda: clock[0])
    e = make_engine(db_url, discovery_max_backoff_s=0.0)
    treasury_account = None
    listed: list[str] = []

    class _Node:
        """Lists nothing new; the treasury's token account takes 3 s (a big page), a
        reference's listing a tenth of a second (on the cycle's clock)."""

        source = "cassette"

        def call(self, method, params):
            assert method == "getSignaturesForAddress", method
            listed.append(params[0])
            clock[0] += 3.0 if params[0] == treasury_account else 0.1
            return []

    e.chains.set_transport("solana-mainnet", _Node())
    try:
        _alices(e, 1_000, str(Keypair().pubkey()))  # a session paying the treasury
        rail = e.rail("solana_usdc")
        treasury_account = str(token_account(DOC["treasury"], rail.asset))
        bobs = open_session(
            e,
            NewSession(
                owner_id="bob",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=1,
                recipient=str(Keypair().pubkey()),  # not the treasury: watched by reference
                expires_in_seconds=24 * 3600,
            ),
            actor="svc",
        )
        discovery.cycle(e)
        # The treasury's walk (3 s, past the 2 s budget) leaves the references theirs.
        assert listed == [treasury_account, bobs["reference"]], listed
    finally:
        e.db.dispose()
