"""Discovery in the worker: a session whose client never submitted anything is paid end to
end (discovered, verified, finalized, applied to an active entitlement) on SQLite and
PostgreSQL; the treasury is watched once per cycle, whatever the number of open sessions."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import orjson
import pytest
from solders.keypair import Keypair
from sqlalchemy import select

from tests.helpers import (
    FAKE_SESSION,
    FIXTURES,
    SwitchableTransport,
    advance,
    cassette_engine,
    fake_payment,
)
from tests.test_reconciliation import evm, evm_session  # noqa: F401  (the local EVM chain)
from verifier.services import audit, discovery, proofs, rails_admin
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Entitlement, Proof, Receipt
from verifier.storage.reconciliation_models import DiscoveryCursor
from verifier.worker import loop as worker

INFLOWS = FIXTURES / "solana" / "generated" / "inflows" / "treasury_inflows.json"
DOC = json.loads(INFLOWS.read_text())
EXPECT = DOC["expect"]


def _paying_elsewhere(engine, exp: dict):
    """Alice's session paying the recorded transfer's recipient (not the treasury): watched by
    its reference."""
    return _alices(engine, exp["amount"], exp["reference"], exp["recipient"])


def make_engine(db_url, **kw):
    opts = {
        "discovery": True,
        "auto_apply": True,
        "live_apply": True,
        "discovery_page_limit": DOC["page"],
        "env": {"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]},
        **kw,
    }
    return cassette_engine(db_url, **opts)


def session_for(engine, case: str, reference: str | None = None, amount: int | None = None):
    exp = EXPECT[case]
    return _alices(engine, amount or exp["amount"], reference or exp["reference"])


def _alices(engine, amount: int, reference: str, recipient: str | None = None):
    """Alice's Solana USDC session for `amount`, by `reference` (paying the treasury unless
    `recipient` is given)."""
    terms = {"recipient": recipient} if recipient is not None else {}
    return open_session(
        engine,
        NewSession(
            owner_id="alice",
            rail_id="solana_usdc",
            access_product_id="pro",
            amount=amount,
            reference=reference,
            **terms,
        ),
        actor="svc",
    )


def test_discovery_pays_a_session_nobody_submitted_end_to_end(db_url):
    e = make_engine(db_url)
    try:
        paid = session_for(e, "discovered")
        waiting = session_for(e, "bound", reference=str(Keypair().pubkey()))  # never paid
        out = worker.sweep(e, "w1")
        assert out["discovered"] == 1 and out["applied"] == 1
        with e.db.tx() as s:
            [p] = s.scalars(select(Proof).where(Proof.session_id == paid["id"])).all()
            assert p.status == "verified" and p.ref == EXPECT["discovered"]["signature"]
            ent = s.scalar(select(Entitlement).where(Entitlement.session_id == paid["id"]))
            assert ent.status == "active"
            assert s.scalars(select(Proof).where(Proof.session_id == waiting["id"])).all() == []
        from verifier.storage.models import AuditEvent

        with e.db.tx() as s:
            actor = s.scalar(
                select(AuditEvent.actor).where(
                    AuditEvent.subject_id == p.id, AuditEvent.action == "proof.submitted"
                )
            )
        assert actor == "discovery"
        # The next cycle submits nothing twice.
        again = worker.sweep(e, "w1")
        assert "discovered" not in again
    finally:
        e.db.dispose()


def test_discovery_is_off_without_setting_on_recorded_chains(db_url):
    e = cassette_engine(db_url, env={"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]})
    try:
        session_for(e, "discovered")
        assert "discovered" not in worker.sweep(e, "w1")
    finally:
        e.db.dispose()


def synthetic_chain(n: int) -> tuple[SwitchableTransport, list[tuple[str, str]]]:
    """n copies of the recorded "discovered" transfer, each with a fresh signature and
    reference (swapped as text), listed in one page of the treasury's token account."""
    calls = {c["method"] + ":" + json.dumps(c["params"][0]): c for c in DOC["calls"]}
    sig, ref = EXPECT["discovered"]["signature"], EXPECT["discovered"]["reference"]
    tx = calls["getTransaction:" + json.dumps(sig)]
    status = calls["getSignatureStatuses:" + json.dumps([sig])]
    blob = orjson.dumps(tx["result"]).decode()
    out, pairs, entries = [], [], []
    for _ in range(n):
        kp = Keypair()
        new_sig, new_ref = str(kp.sign_message(b"railproof-discovery")), str(Keypair().pubkey())
        result = json.loads(blob.replace(sig, new_sig).replace(ref, new_ref))
        out.append(
            {"method": "getTransaction", "params": [new_sig, tx["params"][1]], "result": result}
        )
        out.append(
            {
                "method": "getSignatureStatuses",
                "params": [[new_sig], status["params"][1]],
                "result": status["result"],
            }
        )
        entries.append(
            {
                "blockTime": EXPECT["discovered"]["block_time"],
                "confirmationStatus": "finalized",
                "err": None,
                "memo": None,
                "signature": new_sig,
                "slot": result["slot"],
            }
        )
        pairs.append((new_sig, new_ref))
    page = {
        "method": "getSignaturesForAddress",
        "params": [DOC["token_account"], {"limit": 1000}],
        "result": list(reversed(entries)),
    }
    return SwitchableTransport([page, *out]), pairs


@pytest.mark.parametrize("n", [200])
def test_one_shared_watch_per_cycle_not_one_poll_per_session(db_url, n):
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        chain, pairs = synthetic_chain(n)
        e.chains.set_transport("solana-mainnet", chain)
        for _, ref in pairs:
            session_for(e, "discovered", reference=ref)
        for _ in range(n // 2):  # open sessions nobody pays in this window
            session_for(e, "discovered", reference=str(Keypair().pubkey()))
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert out["submitted"] == n
        assert chain.by_method["getSignaturesForAddress"] == 1
        # Discovery's own calls: one listing + one transaction fetch per new inflow.
        assert out["rpc_calls"] / out["submitted"] <= 1.2
        with e.db.tx() as s:
            assert s.scalar(select(Proof.id).where(Proof.status != "verified")) is None
    finally:
        e.db.dispose()


def test_evm_discovery_watches_the_treasury_logs_from_the_last_block(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    s5 = evm_session(e, evm["payer"], 5_000_000)
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.transfer(token, evm["other"], evm["treasury"], 5_000_000)  # not the session's payer
    chain.mine(1)
    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 1 and out["inflows"] == 2
    [p] = [p for p in _proofs(e) if p.session_id == s5["id"]]
    assert p.ref == tx.lower() and p.status == "verified"
    # The next watch reads from the block after the last one read: nothing is submitted twice.
    again = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert again["submitted"] == 0 and again["rpc_calls"] == 0  # the session is paid: no poll
    s7 = evm_session(e, evm["payer"], 7_000_000)
    chain.transfer(token, evm["payer"], evm["treasury"], 7_000_000)
    third = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert third["submitted"] == 1 and third["inflows"] == 1  # only the new block's transfer
    assert [p.session_id for p in _proofs(e) if p.session_id == s7["id"]] == [s7["id"]]


def _proofs(e):
    with e.db.tx() as s:
        return list(s.scalars(select(Proof)).all())


class _Quiet:
    """A node whose treasury sees nothing new: every listing is empty."""

    source = "cassette"

    def __init__(self):
        self.calls = 0

    def call(self, method, params):
        assert method == "getSignaturesForAddress"
        self.calls += 1
        return []


def test_watch_backs_off_while_nothing_arrives_and_stops_after_expiry(db_url):
    e = make_engine(db_url)
    try:
        session_for(e, "bound", reference=str(Keypair().pubkey()))  # nobody pays it
        node = _Quiet()
        e.chains.set_transport("solana-mainnet", node)
        rail = e.rail("solana_usdc")
        polls = []
        for step in (0, 0, 2, 1, 1, 2, 2):  # seconds the clock moves before each cycle
            e.settings.clock = e.settings.now() + timedelta(seconds=step)
            before = node.calls
            discovery.watch_solana(e, rail)
            polls.append(node.calls - before)
        # Polled at once, then after 2 s, then after 4 s (backoff doubles while idle).
        assert polls == [1, 0, 1, 0, 0, 1, 0]
        # Past expiry plus the not-found grace the session is no longer watched at all.
        e.settings.clock = e.settings.now() + timedelta(
            seconds=3600 + e.settings.tx_not_found_grace_seconds + 1
        )
        before = node.calls
        assert discovery.watch_solana(e, rail)["rpc_calls"] == 0 and node.calls == before
    finally:
        e.db.dispose()


def test_bench_figures_of_discovery_and_reconciliation():
    from verifier.tools.bench_discovery import discovery_figures

    out = discovery_figures(sessions=50, inflows=1200)  # more than one page of 1,000
    assert out["discovery_payments"] == 50
    assert out["discovery_rpc_calls_per_payment"] <= 1.2
    assert out["reconcile_status"] == "complete" and out["reconcile_inflows_checked"] == 1200
    assert out["reconcile_inflows_per_s"] > 0


def test_a_session_paying_another_recipient_is_looked_up_by_its_reference(db_url):
    # The recorded transfer to a merchant's wallet (its token account created in the same
    # transaction): not the treasury, so the watch asks for the reference's signatures.
    path = FIXTURES / "solana" / "generated" / "ata_created_same_tx.json"
    doc = json.loads(path.read_text())
    exp = doc["expect"]
    sig = doc["calls"][0]["params"][0]
    listing = {
        "method": "getSignaturesForAddress",
        "params": [exp["reference"], {"limit": 10}],
        "result": [
            {
                "signature": sig,
                "slot": doc["calls"][0]["result"]["slot"],
                "blockTime": doc["calls"][0]["result"]["blockTime"],
                "err": None,
                "memo": None,
                "confirmationStatus": "finalized",
            }
        ],
    }
    e = make_engine(db_url)
    try:
        chain = SwitchableTransport([listing, *doc["calls"]])
        e.chains.set_transport("solana-mainnet", chain)
        s = _paying_elsewhere(e, exp)
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert out["submitted"] == 1 and chain.by_method["getSignaturesForAddress"] == 1
        [p] = [p for p in _proofs(e) if p.session_id == s["id"]]
        assert (p.ref, p.status) == (sig, "verified")
    finally:
        e.db.dispose()


class _Counting(_Quiet):
    """A quiet node that also answers an EVM head (no transfers anywhere)."""

    def call(self, method, params):
        self.calls += 1
        return "0x10" if method == "eth_blockNumber" else []


@pytest.mark.parametrize(
    ("chain", "setting", "treasury", "polls"),
    [
        ("live", None, True, 1),  # the default on a live chain with a treasury: watched
        ("live", None, False, 0),  # no treasury: nothing watched, no call at all
        ("live", False, True, 0),  # RAILPROOF_DISCOVERY=0 turns it off
        ("cassette", None, True, 0),  # off by default on recorded chains
        ("cassette", True, True, 1),  # RAILPROOF_DISCOVERY=1 turns it on
    ],
)
def test_discovery_default_follows_the_chain_and_the_treasury(
    db_url, chain, setting, treasury, polls
):
    from tests.conftest import make_settings
    from tests.fake_rail import catalog_with_fake
    from verifier.core.engine import Engine

    env = {"RAILPROOF_TREASURY_SOLANA_USDC": DOC["treasury"]} if treasury else {}
    e = Engine(
        # (a live chain runs on the real clock)
        make_settings(
            db_url,
            chain=chain,
            discovery=setting,
            env=env,
            **({"clock": None} if chain == "live" else {}),
        ),
        catalog=catalog_with_fake(),
    )
    try:
        e.ensure_rail_states()
        # A session paying the treasury (or, without one configured, that same wallet).
        s = open_session(
            e,
            NewSession(
                owner_id="alice",
                rail_id="solana_usdc",
                access_product_id="pro",
                amount=EXPECT["bound"]["amount"],
                recipient=DOC["treasury"],
                reference=str(Keypair().pubkey()),
            ),
            actor="svc",
        )
        assert s["status"] == "open"
        node = _Counting()
        assert discovery.enabled(e) is (setting if setting is not None else chain == "live")
        assert discovery.cycle(e, chain=node) == 0
        assert node.calls == polls
    finally:
        e.db.dispose()


# -- a watch's position moves only past what is done with ----------------------------------

OP = audit.Operator("ops1", "INC-1", "incident drill")


class _Node:
    """A node in front of the recorded (or local) chain: it lists the treasury's signatures
    as a real node does (newest first, with `limit`, `before` and `until`: the cassette
    ignores them), and runs `hooks[method]` before the first call of that method (something
    that happens while a watch reads the chain)."""

    source = "cassette"

    def __init__(self, inner, listing=None, hooks=None):
        self.inner, self.listing, self.hooks = inner, listing, dict(hooks or {})
        self.listed: list[list[str]] = []  # the signatures of each listing answered

    def call(self, method, params):
        if method in self.hooks:
            self.hooks.pop(method)()
        if method == "getSignaturesForAddress" and self.listing is not None:
            opts = params[1]
            sigs = [x["signature"] for x in self.listing]
            lo = sigs.index(opts["before"]) + 1 if opts.get("before") else 0
            hi = sigs.index(opts["until"]) if opts.get("until") in sigs else len(sigs)
            page = self.listing[lo:hi][: opts["limit"]]
            self.listed.append([x["signature"] for x in page])
            return page
        return self.inner.call(method, params)


def _treasury_node(n: int, hooks=None):
    chain, pairs = synthetic_chain(n)
    listing = chain.call("getSignaturesForAddress", [DOC["token_account"], {"limit": 1000}])
    return _Node(chain, listing, hooks), pairs


def _refs(e, session_id):
    return [(p.ref, p.status) for p in _proofs(e) if p.session_id == session_id]


def test_evm_payment_made_while_the_rail_is_paused_is_discovered_after_resume(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    s5 = evm_session(e, evm["payer"], 5_000_000)
    rails_admin.set_paused(e, "evm_usdc", True, OP)
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(1)
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["rpc_calls"] == 0  # paused: not read
    rails_admin.set_paused(e, "evm_usdc", False, OP)
    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert _refs(e, s5["id"]) == [(tx.lower(), "verified")], out


def test_solana_payment_made_while_the_rail_is_paused_is_discovered_after_resume(db_url):
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        node, [(sig, ref)] = _treasury_node(1)
        e.chains.set_transport("solana-mainnet", node)
        ps = session_for(e, "discovered", reference=ref)
        rails_admin.set_paused(e, "solana_usdc", True, OP)
        assert discovery.watch_solana(e, e.rail("solana_usdc"))["rpc_calls"] == 0
        rails_admin.set_paused(e, "solana_usdc", False, OP)
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert _refs(e, ps["id"]) == [(sig, "verified")], out
    finally:
        e.db.dispose()


def test_evm_transfer_refused_by_a_pause_during_the_watch_is_read_again(evm):  # noqa: F811
    # The rail is paused while the watch reads the logs: the submission is refused
    # (`rail_paused`), and the watch's position stays before that transfer's block.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    rail = e.rail("evm_usdc")
    s5 = evm_session(e, evm["payer"], 5_000_000)
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(1)
    pause = {"eth_getLogs": lambda: rails_admin.set_paused(e, "evm_usdc", True, OP)}
    node = _Node(e.chains.transport(rail.family, rail.network), hooks=pause)
    assert discovery.watch_evm(e, rail, node)["submitted"] == 0
    assert _refs(e, s5["id"]) == []
    rails_admin.set_paused(e, "evm_usdc", False, OP)
    discovery.watch_evm(e, rail)
    assert _refs(e, s5["id"]) == [(tx.lower(), "verified")]


def test_solana_transfer_refused_by_a_pause_during_the_watch_is_read_again(db_url):
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        pause = {"getTransaction": lambda: rails_admin.set_paused(e, "solana_usdc", True, OP)}
        node, [(sig, ref)] = _treasury_node(1, pause)
        e.chains.set_transport("solana-mainnet", node)
        ps = session_for(e, "discovered", reference=ref)
        assert discovery.watch_solana(e, e.rail("solana_usdc"))["submitted"] == 0
        assert _refs(e, ps["id"]) == []
        rails_admin.set_paused(e, "solana_usdc", False, OP)
        discovery.watch_solana(e, e.rail("solana_usdc"))
        assert _refs(e, ps["id"]) == [(sig, "verified")]
    finally:
        e.db.dispose()


# -- every open session is a candidate, however many are open -------------------------------


def test_many_open_evm_sessions_never_hide_a_newer_sessions_payment(evm, monkeypatch):  # noqa: F811
    # A tenant holds open (never paid) more sessions than a bounded list of them would hold
    # (3 here for 5,000): the payment of a session opened after them is still discovered.
    monkeypatch.setattr(discovery, "SESSIONS_PER_CYCLE", 3)
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    for i in range(3):
        open_session(
            e,
            NewSession(
                owner_id="mallory",
                rail_id="evm_usdc",
                access_product_id="pro",
                amount=1_000_000 + i,
                payer="0x" + f"{i + 1:040x}",
            ),
            actor="svc",
        )
        e.settings.clock = e.settings.now() + timedelta(seconds=1)
    victim = evm_session(e, evm["payer"], 5_000_000)
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(1)
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["submitted"] == 1
    assert _refs(e, victim["id"]) == [(tx.lower(), "verified")]


def test_many_open_solana_sessions_never_hide_a_newer_sessions_payment(db_url, monkeypatch):
    monkeypatch.setattr(discovery, "SESSIONS_PER_CYCLE", 3)
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        chain, [(sig, ref)] = synthetic_chain(1)
        e.chains.set_transport("solana-mainnet", chain)
        for _ in range(3):
            session_for(e, "discovered", reference=str(Keypair().pubkey()))
            e.settings.clock = e.settings.now() + timedelta(seconds=1)
        victim = session_for(e, "discovered", reference=ref)
        assert discovery.watch_solana(e, e.rail("solana_usdc"))["submitted"] == 1
        assert _refs(e, victim["id"]) == [(sig, "verified")]
    finally:
        e.db.dispose()


# -- a treasury change leaves the sessions opened before it watched ------------------------


def _change_treasury(e, rail_id: str, treasury: str) -> None:
    """An approved treasury change (two staff members)."""
    e.settings.staff_tokens = {"tok-ops1": "ops1", "tok-ops2": "ops2"}
    a = rails_admin.request_change(e, rail_id, "treasury", treasury, OP)
    rails_admin.approve(e, a["approval_id"], audit.Operator("ops2", "INC-1", "second pair of eyes"))


def test_evm_session_opened_before_a_treasury_change_is_still_watched(evm):  # noqa: F811
    # A session's recipient is fixed when it opens: after an approved treasury change, its
    # payer still pays the old treasury, as the payment request said. The watch read only
    # the current treasury, so that payment was never discovered.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    old, new = evm["treasury"], chain.accounts[4]
    before = evm_session(e, evm["payer"], 5_000_000)
    assert before["recipient"].lower() == old.lower()
    discovery.watch_evm(e, e.rail("evm_usdc"))  # the old treasury's watch has a position
    _change_treasury(e, "evm_usdc", new)
    after = evm_session(e, evm["other"], 7_000_000)
    assert after["recipient"].lower() == new.lower()
    paid_old = chain.transfer(token, evm["payer"], old, 5_000_000).lower()
    paid_new = chain.transfer(token, evm["other"], new, 7_000_000).lower()
    chain.mine(1)
    advance(e, 60)  # past the old treasury's watch's back-off
    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 2, out
    assert _refs(e, before["id"]) == [(paid_old, "verified")]
    assert _refs(e, after["id"]) == [(paid_new, "verified")]
    # Once paid, the old treasury is no longer watched: no poll at all.
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["rpc_calls"] == 0


def test_evm_recipients_a_tenant_names_never_keep_the_old_treasury_unwatched(
    evm,  # noqa: F811
    monkeypatch,
):
    # A tenant opens sessions paying addresses of its own (before the change, so first in
    # turn): the recipients other than the treasury are watched in turn within the cycle's
    # budget (one here), and the old treasury's comes all the same.
    ticks = iter(range(0, 10**6, 100))
    monkeypatch.setattr(discovery, "_clock", lambda: next(ticks))  # each look: over budget
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    old = evm["treasury"]
    for i in range(2):
        open_session(
            e,
            NewSession(
                owner_id="mallory",
                rail_id="evm_usdc",
                access_product_id="pro",
                amount=1_000_000,
                payer="0x" + f"{i + 1:040x}",
                recipient=chain.accounts[5 + i],
            ),
            actor="svc",
        )
    advance(e, 1)
    victim = evm_session(e, evm["payer"], 5_000_000)
    _change_treasury(e, "evm_usdc", chain.accounts[4])
    tx = chain.transfer(token, evm["payer"], old, 5_000_000).lower()
    chain.mine(1)
    for _ in range(3):  # the treasury, then one other recipient a cycle
        discovery.watch_evm(e, e.rail("evm_usdc"))
        advance(e, 1)
    assert _refs(e, victim["id"]) == [(tx, "verified")]


# -- a backlog longer than one scan ---------------------------------------------------------


def test_a_backlog_longer_than_one_scan_is_walked_over_the_next_cycles(db_url):
    # One scan reads 2 pages of 1 signature here (50 of 1,000 by default); 3 transfers
    # arrived since the last one done with (dust transfers to the treasury are enough).
    e = make_engine(db_url, discovery_page_limit=1, reconcile_max_pages=2)
    try:
        node, pairs = _treasury_node(3)
        e.chains.set_transport("solana-mainnet", node)
        sessions = [session_for(e, "discovered", reference=ref) for _, ref in pairs]
        newest_first = [sig for sig, _ in reversed(pairs)]
        rail = e.rail("solana_usdc")
        assert discovery.watch_solana(e, rail)["submitted"] == 2
        # The next cycle goes on from the oldest signature done with, not from the newest.
        assert discovery.watch_solana(e, rail)["submitted"] == 1
        assert node.listed == [newest_first[:1], newest_first[1:2], newest_first[2:], []]
        assert [_refs(e, ps["id"]) for ps in sessions] == [[(s, "verified")] for s, _ in pairs]
        # The walk is over: the newest signature is the cursor, from which the next one reads.
        discovery.watch_solana(e, rail)
        assert node.listed[-1] == []
        with e.db.tx() as s:
            [c] = s.scalars(select(DiscoveryCursor)).all()
            assert (c.last_signature, c.walk_before, c.walk_newest) == (newest_first[0], None, None)
    finally:
        e.db.dispose()


class _Slow(_Node):
    """A `_Node` each of whose getTransaction answers takes a second on the cycle's clock
    (`discovery._clock`), counted by signature."""

    def __init__(self, inner, listing, clock: list[float]):
        super().__init__(inner, listing)
        self.clock = clock
        self.fetched: dict[str, int] = {}

    def call(self, method, params):
        if method == "getTransaction":
            self.clock[0] += 1.0
            self.fetched[params[0]] = self.fetched.get(params[0], 0) + 1
        return super().call(method, params)


def _flooded(e, monkeypatch, n: int) -> tuple[_Slow, list[tuple[str, str]], list[float]]:
    """The treasury listing n transfers (oldest first in the pairs), read by a `_Slow` node,
    with the cycle's clock it counts on."""
    clock = [0.0]
    monkeypatch.setattr(discovery, "_clock", lambda: clock[0])
    chain, pairs = synthetic_chain(n)
    listing = chain.call("getSignaturesForAddress", [DOC["token_account"], {"limit": 1000}])
    node = _Slow(chain, listing, clock)
    e.chains.set_transport("solana-mainnet", node)
    return node, pairs, clock


def test_a_dust_flood_is_walked_within_the_budget_and_no_transfer_is_passed_over(
    db_url, monkeypatch
):
    # 12 transfers arrived since the last one done with, the oldest Alice's payment, the rest
    # dust naming nobody's reference (anyone can send them). One scan lists them all; the
    # walk reads them for the cycle's budget (2 s, a second a transaction here) and goes on
    # from where it stopped, cycle after cycle, each read once, to the end of the walk.
    e = make_engine(db_url, discovery_page_limit=5, reconcile_max_pages=50)
    e.settings.discovery_cycle_budget_s = 2.0
    try:
        node, pairs, clock = _flooded(e, monkeypatch, 12)
        (paid, ref), dust = pairs[0], [sig for sig, _ in pairs[1:]]
        ps = session_for(e, "discovered", reference=ref)
        rail = e.rail("solana_usdc")
        cycles = 0
        while not _refs(e, ps["id"]):
            started = clock[0]
            discovery.watch_solana(e, rail)
            cycles += 1
            # The budget, then the transaction under way when it ran out; and the payment's
            # verification in the cycle that finds it.
            assert clock[0] - started <= e.settings.discovery_cycle_budget_s + 2
            assert cycles < 12
        assert cycles > 1
        assert _refs(e, ps["id"]) == [(paid, "verified")]
        assert {sig: node.fetched.get(sig) for sig in dust} == dict.fromkeys(dust, 1)
        # The walk is over: the newest signature is the cursor.
        assert _cursor(e)[:3] == (pairs[-1][0], None, None)
    finally:
        e.db.dispose()


def test_a_dust_flood_in_the_treasury_never_holds_another_tenants_apply(db_url, monkeypatch, chain):
    # Bob's payment, submitted by his backend, is verified and final while the treasury's
    # watch has a flood of dust to read: the sweep applies it before discovery reads any,
    # and discovery reads the flood for its budget only.
    e = make_engine(db_url, discovery_page_limit=100, reconcile_max_pages=50)
    e.settings.discovery_cycle_budget_s = 2.0
    try:
        node, _, clock = _flooded(e, monkeypatch, 40)
        e.chains.set_transport("fakenet", chain)
        _alices(e, 1_000, str(Keypair().pubkey()))  # an open session at the treasury: watched
        bob = open_session(e, NewSession(**{**FAKE_SESSION, "owner_id": "bob"}), actor="svc")
        fake_payment(chain, bob, "fx0b0b0b0b01")
        view, _ = proofs.submit_proof(e, bob["id"], "fx0b0b0b0b01", None)
        assert view["status"] == "verified", view
        applied_at: list[float] = []
        real = worker.auto_apply

        def auto_apply(engine, batch):
            applied_at.append(clock[0])
            return real(engine, batch)

        monkeypatch.setattr(worker, "auto_apply", auto_apply)
        assert worker.sweep(e, "w1", deliveries=False)["applied"] == 1
        with e.db.tx() as s:
            assert s.scalar(select(Receipt.id).where(Receipt.session_id == bob["id"]))
        assert applied_at[0] == 0.0  # before the watch read anything
        assert sum(node.fetched.values()) <= e.settings.discovery_cycle_budget_s + 1
    finally:
        e.db.dispose()


class _Forgetting(_Node):
    """A node that, while `forgotten` is set, does not know that signature: asked for the
    signatures before it, it answers an empty page (as a node does for a signature it does not
    have: its block dropped, or another node of a pool, behind), and has no status for it."""

    forgotten: str | None = None

    def call(self, method, params):
        if self.forgotten is not None:
            if method == "getSignaturesForAddress" and params[1].get("before") == self.forgotten:
                self.listed.append([])
                return []
            if method == "getSignatureStatuses" and params[0] == [self.forgotten]:
                return {"context": {"slot": 1}, "value": [None]}
        return super().call(method, params)


def _forgetting_treasury(db_url):
    """Three transfers s0..s2 (oldest first) paying three sessions, listed by a `_Forgetting`
    node one signature a page, two pages a scan. Returns (engine, node, pairs, sessions)."""
    e = make_engine(db_url, discovery_page_limit=1, reconcile_max_pages=2)
    chain, pairs = synthetic_chain(3)
    listing = chain.call("getSignaturesForAddress", [DOC["token_account"], {"limit": 1000}])
    node = _Forgetting(chain, listing)
    e.chains.set_transport("solana-mainnet", node)
    sessions = [session_for(e, "discovered", reference=ref) for _, ref in pairs]
    return e, node, pairs, sessions


def test_a_walk_the_node_does_not_know_the_position_of_starts_again(db_url):
    # The walk stopped at a signature the next node asked does not know: its empty page is
    # not the history's end. Taken as one, the cursor moved to the newest signature and the
    # rest of the backlog (here the oldest transfer) was passed over for good.
    e, node, pairs, sessions = _forgetting_treasury(db_url)
    try:
        newest_first = [sig for sig, _ in reversed(pairs)]
        rail = e.rail("solana_usdc")
        assert discovery.watch_solana(e, rail)["submitted"] == 2
        node.forgotten = newest_first[1]  # where the walk goes on from
        assert _later(e, rail)["submitted"] == 0
        with e.db.tx() as s:
            [c] = s.scalars(select(DiscoveryCursor)).all()
            assert (c.last_signature, c.walk_before, c.walk_newest) == (None, None, None)
        node.forgotten = None  # the node has caught up
        node.listed.clear()
        for _ in range(3):
            _later(e, rail)
        # From the top again (two pages a cycle here), then on from where that stopped, with
        # no read of what is newer than the walk first (that is for a walk stuck at a
        # transaction the node does not return), to the end of the history.
        s2, s1, s0 = newest_first
        assert node.listed == [[s2], [s1], [s0], []]
        oldest = sessions[0]
        assert _refs(e, oldest["id"]) == [(pairs[0][0], "verified")]
        assert [len(_refs(e, ps["id"])) for ps in sessions] == [1, 1, 1]  # nothing twice
    finally:
        e.db.dispose()


def test_a_walk_started_again_without_end_ends_after_the_stuck_limit(db_url, caplog):
    # A node that never knows where the walk stopped (a pool whose nodes keep different spans
    # of history): each restart re-reads the stretch before it. After STUCK_LIMIT restarts in
    # a row the walk ends there, said, rather than re-reading it every cycle for good.
    e, node, pairs, _ = _forgetting_treasury(db_url)
    try:
        newest_first = [sig for sig, _ in reversed(pairs)]
        rail = e.rail("solana_usdc")
        node.forgotten = newest_first[1]
        discovery.watch_solana(e, rail)
        cycles, restarts = 0, []
        while _cursor(e)[0] is None:
            assert cycles < 3 * discovery.STUCK_LIMIT, "the walk never ended"
            _later(e, rail)
            cycles += 1
            if _cursor(e)[3]:
                restarts.append(_cursor(e)[4])
        # Each restart reads the stretch again down to the unknown signature (two cycles
        # here), and counts one more in a row; the last one ends the walk.
        assert sorted(set(restarts)) == list(range(1, discovery.STUCK_LIMIT))
        assert _cursor(e) == (newest_first[0], None, None, None, None)
        assert "did not know" in caplog.text
    finally:
        e.db.dispose()


# -- a transaction that merely names a reference --------------------------------------------


def _grief_listing(reference: str, real_sig: str, real: dict) -> tuple[str, list[dict]]:
    """A recorded transfer to the treasury (not the session's recipient) rewritten to name
    `reference` as one more read-only key, sent after the payment, and the reference's
    listing naming both, newest first. Returns (its signature, the calls)."""
    calls = {c["method"] + ":" + json.dumps(c["params"][0]): c for c in DOC["calls"]}
    usig, uref = EXPECT["unbound"]["signature"], EXPECT["unbound"]["reference"]
    utx = calls["getTransaction:" + json.dumps(usig)]
    ustat = calls["getSignatureStatuses:" + json.dumps([usig])]
    gsig = str(Keypair().sign_message(b"grief"))
    gtx = json.loads(
        orjson.dumps(utx["result"]).decode().replace(usig, gsig).replace(uref, reference)
    )
    gtx["blockTime"], gtx["slot"] = real["blockTime"] + 5, real["slot"] + 5

    def entry(sig: str, result: dict) -> dict:
        return {
            "signature": sig,
            "slot": result["slot"],
            "blockTime": result["blockTime"],
            "err": None,
            "memo": None,
            "confirmationStatus": "finalized",
        }

    return gsig, [
        {
            "method": "getSignaturesForAddress",
            "params": [reference, {"limit": 10}],
            "result": [entry(gsig, gtx), entry(real_sig, real)],
        },
        {"method": "getTransaction", "params": [gsig, utx["params"][1]], "result": gtx},
        {
            "method": "getSignatureStatuses",
            "params": [[gsig], ustat["params"][1]],
            "result": ustat["result"],
        },
    ]


def test_a_transaction_naming_the_reference_never_hides_the_payment(db_url):
    # A session paying a merchant's wallet is watched through its reference: anyone can add a
    # transaction naming that public key. The payment is still submitted, and the other
    # transaction (the rail's checks fail it for the session) leaves no failed proof.
    doc = json.loads((FIXTURES / "solana" / "generated" / "ata_created_same_tx.json").read_text())
    exp, sig, real = doc["expect"], doc["calls"][0]["params"][0], doc["calls"][0]["result"]
    _, extra = _grief_listing(exp["reference"], sig, real)
    e = make_engine(db_url)
    try:
        e.chains.set_transport("solana-mainnet", SwitchableTransport([*extra, *doc["calls"]]))
        s = _paying_elsewhere(e, exp)
        assert discovery.watch_solana(e, e.rail("solana_usdc"))["submitted"] == 1
        assert _refs(e, s["id"]) == [(sig, "verified")]
    finally:
        e.db.dispose()


def test_a_transfer_into_the_treasury_the_checks_fail_leaves_no_failed_proof(db_url):
    # Dust naming an open session's reference (here: the recorded transfer, for a session
    # asking one base unit more) is left aside; nothing is stored for it.
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        chain, [(_, ref)] = synthetic_chain(1)
        e.chains.set_transport("solana-mainnet", chain)
        ps = session_for(e, "discovered", reference=ref, amount=EXPECT["discovered"]["amount"] + 1)
        out = discovery.watch_solana(e, e.rail("solana_usdc"))
        assert (out["inflows"], out["submitted"]) == (1, 0)
        assert _refs(e, ps["id"]) == []
    finally:
        e.db.dispose()


# -- a listed transaction the node does not return ------------------------------------------


class _Unreadable(_Node):
    """The node lists `bad` for the treasury but does not return it (getTransaction: null, as
    a node answers for a transaction it does not serve) the first `times` times it is asked
    (None: never)."""

    def __init__(self, inner, listing, bad, times=None):
        super().__init__(inner, listing)
        self.bad, self.times, self.refused = bad, times, 0

    def call(self, method, params):
        if method == "getTransaction" and params[0] == self.bad:
            if self.times is None or self.refused < self.times:
                self.refused += 1
                return None
        return super().call(method, params)


def _stuck_treasury(db_url, times=None):
    """Four transfers s0..s3 (oldest first) paying sessions a..d (in that order); the node lists s2..s0 (s3
    is not made yet) and does not return s1 (`_Unreadable`). Returns (engine, node, the
    signatures newest first, the sessions a..d)."""
    e = make_engine(db_url, discovery_page_limit=1000)
    chain, pairs = synthetic_chain(4)
    full = chain.call("getSignaturesForAddress", [DOC["token_account"], {"limit": 1000}])
    newest_first = [x["signature"] for x in full]
    assert newest_first == [sig for sig, _ in reversed(pairs)]
    node = _Unreadable(chain, full[1:], pairs[1][0], times)
    node.full = full
    e.chains.set_transport("solana-mainnet", node)
    sessions = [session_for(e, "discovered", reference=ref) for _, ref in pairs]
    return e, node, newest_first, sessions


def _later(e, rail, seconds=120):
    e.settings.clock = e.settings.now() + timedelta(seconds=seconds)  # past any backoff
    return discovery.watch_solana(e, rail)


def _cursor(e):
    with e.db.tx() as s:
        [c] = s.scalars(select(DiscoveryCursor)).all()
        return c.last_signature, c.walk_before, c.walk_newest, c.stuck_signature, c.stuck_failures


def test_a_transaction_the_node_does_not_return_never_hides_later_payments(db_url):
    # A walk stopped at a listed transaction the node does not return went on from it every
    # later cycle, stopped at it again, and never read the newest signatures: no payment made
    # after it (any tenant's) was ever discovered. The next cycle reads what is newer first.
    e, node, [s3, s2, s1, s0], [a, _, c, d] = _stuck_treasury(db_url)
    try:
        rail = e.rail("solana_usdc")
        discovery.watch_solana(e, rail)
        assert _refs(e, c["id"]) == [(s2, "verified")] and _refs(e, a["id"]) == []
        assert _cursor(e) == (None, s2, s2, s1, 1)
        node.listing = node.full  # s3, paying session d, is made now
        _later(e, rail)
        assert _refs(e, d["id"]) == [(s3, "verified")], node.listed
        # What arrived since the walk started is done with; the walk still waits at s1.
        assert node.listed[-2:] == [[s3], [s1, s0]]
        assert _cursor(e) == (None, s2, s3, s1, 2)
        _later(e, rail)
        assert node.listed[-2:] == [[], [s1, s0]]  # read down to s3 only
    finally:
        e.db.dispose()


def test_a_transaction_the_node_returns_again_is_read_on_a_later_cycle(db_url, caplog):
    # The node does not return s1 twice (it lags, it fails for a while), then does: the walk
    # reads it again on the next cycles, pays its session and the one behind it, and ends.
    e, node, [s3, s2, s1, s0], [a, b, c, d] = _stuck_treasury(db_url, times=2)
    try:
        rail = e.rail("solana_usdc")
        discovery.watch_solana(e, rail)
        node.listing = node.full
        _later(e, rail)
        assert _refs(e, d["id"]) == [(s3, "verified")] and _refs(e, b["id"]) == []
        _later(e, rail)
        assert node.refused == 2
        assert [_refs(e, ps["id"]) for ps in (a, b, c, d)] == [
            [(s, "verified")] for s in (s0, s1, s2, s3)
        ]
        assert _cursor(e) == (s3, None, None, None, None)
        assert "passed over" not in caplog.text
        session_for(e, "bound", reference=str(Keypair().pubkey()))  # one still watched
        _later(e, rail)
        assert node.listed[-1] == []  # from the cursor: nothing new, nothing read twice
    finally:
        e.db.dispose()


def test_a_transaction_the_node_never_returns_is_passed_over_after_a_bound(db_url, caplog):
    # One the node never returns is tried STUCK_LIMIT cycles in a row, then passed over with
    # a warning naming it (reconciliation's chain_inflows still reports it): the payment
    # behind it is discovered, and the walk ends instead of stalling for good.
    e, node, [s3, s2, s1, s0], [a, b, c, d] = _stuck_treasury(db_url)
    try:
        rail = e.rail("solana_usdc")
        discovery.watch_solana(e, rail)
        for _ in range(discovery.STUCK_LIMIT - 2):
            _later(e, rail)
        assert _refs(e, a["id"]) == [] and "passed over" not in caplog.text
        assert _cursor(e) == (None, s2, s2, s1, discovery.STUCK_LIMIT - 1)
        with caplog.at_level("WARNING", logger="railproof.discovery"):
            _later(e, rail)
        assert node.refused == discovery.STUCK_LIMIT
        [warning] = [r for r in caplog.records if "passed over" in r.getMessage()]
        assert warning.levelname == "WARNING" and s1 in warning.getMessage()
        assert b'kind="discovery_passed_over"' in e.metrics.render()
        assert _refs(e, a["id"]) == [(s0, "verified")] and _refs(e, b["id"]) == []
        assert _cursor(e) == (s2, None, None, None, None)
        # It is not read again: the next payment is discovered from the cursor.
        node.listing = node.full
        _later(e, rail)
        assert _refs(e, d["id"]) == [(s3, "verified")] and node.refused == discovery.STUCK_LIMIT
        assert node.listed[-1] == [s3]
    finally:
        e.db.dispose()


class _Garbled(_Node):
    """The node lists `bad` for the treasury and returns it with one token balance entry that
    is not an object (a provider's broken rendering of one transaction)."""

    def __init__(self, inner, listing, bad):
        super().__init__(inner, listing)
        self.bad, self.garbled = bad, 0

    def call(self, method, params):
        out = super().call(method, params)
        if method == "getTransaction" and params[0] == self.bad and out is not None:
            self.garbled += 1
            out = copy.deepcopy(out)
            out["meta"]["preTokenBalances"] = [None, *out["meta"]["preTokenBalances"]]
        return out


def test_a_transaction_the_node_returns_garbled_is_passed_over_as_one_not_returned(db_url):
    # An answer the transaction parser tripped over (a null token balance) raised out of the
    # watch: the cursor never moved, the pass-over bound never applied, and no payment behind
    # it (any tenant's) was discovered again. It is a malformed answer, read again and then
    # passed over as one the node does not return.
    e = make_engine(db_url, discovery_page_limit=1000)
    try:
        chain, pairs = synthetic_chain(3)
        listing = chain.call("getSignaturesForAddress", [DOC["token_account"], {"limit": 1000}])
        s2, s1, s0 = (x["signature"] for x in listing)
        node = _Garbled(chain, listing, s1)
        e.chains.set_transport("solana-mainnet", node)
        a, b, c = (session_for(e, "discovered", reference=ref) for _, ref in pairs)
        rail = e.rail("solana_usdc")
        discovery.watch_solana(e, rail)
        assert _refs(e, c["id"]) == [(s2, "verified")]
        assert _cursor(e) == (None, s2, s2, s1, 1)
        for _ in range(discovery.STUCK_LIMIT - 1):
            _later(e, rail)
        assert node.garbled == discovery.STUCK_LIMIT
        assert _refs(e, a["id"]) == [(s0, "verified")] and _refs(e, b["id"]) == []
        assert _cursor(e) == (s2, None, None, None, None)
    finally:
        e.db.dispose()
