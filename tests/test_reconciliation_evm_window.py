"""EVM chain_inflows binds a treasury transfer to the one open session naming its sender and
amount only when the transfer's block time is inside that session's window: a payer and an
amount can be read off the chain, so a session opened after the transfer (by anyone) used to
be proposed to take it; apply then submitted it there, the proof failed (`session_not_open`)
and the finding still said `applied`, so the payment left the drift. A repair whose proof
failed now stays a finding to resolve. And EVM discovery skips a transfer a proof already
holds, so a repeat payer's new payment is found.

The window an EVM run reads: without `--since`, back to the rail's first session (a run that
read less said `complete` and stood for the whole history); a block the node does not return
leaves the run `incomplete`; and every treasury a session in the window pays is read, not
only the current one. A whole-history run after a complete one reads on from where that one
ended (less the lookback) and carries what it found that still needs a person: each run
re-read the rail's whole history, so once that was longer than a run reads every scheduled
run ended `incomplete`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from tests.helpers import advance
from tests.test_reconciliation import by_kind, evm, evm_session, proofs_of, req  # noqa: F401
from tests.test_reconciliation_resolve import OP
from verifier.services import discovery, proofs, reconciliation
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Entitlement


def _setup(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    # The payer's transfer, with no session waiting for it (paid before one was opened, or a
    # second payment): a person must refund it or attach it.
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(2)
    # Later, another tenant opens a session naming that payer and amount (both public).
    advance(e, 600)
    x = open_session(
        e,
        NewSession(
            owner_id="mallory",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            payer=evm["payer"],
            reference=None,
        ),
        actor="svc",
    )
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [f for f in dry["findings"] if f["subjects"]["transfer"] == tx]
    bound_to_x = f["kind"] == "orphan_bound" and f["subjects"].get("session_id") == x["id"]

    return e, tx, x, f, bound_to_x


def test_transfer_mined_before_a_session_is_not_bound_to_it(evm):  # noqa: F811
    e, tx, x, f, bound_to_x = _setup(evm)
    assert not bound_to_x, f"dry run binds the earlier transfer to mallory's later session: {f}"


def test_apply_whose_proof_failed_leaves_the_transfer_as_drift(evm):  # noqa: F811
    e, tx, x, f, bound_to_x = _setup(evm)
    run = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    [g] = [g for g in run["findings"] if g["subjects"]["transfer"] == tx]
    statuses = [p.status for p in proofs_of(e, x["id"])]
    # Expected: never reported as mallory's session's transfer (it was mined before that
    # session existed), and, nothing having credited it, still drift after apply.
    assert reconciliation.is_drift(g), (
        f"apply reports {g['repair_status']} (proof {statuses}); drift {run['summary']['unresolved']}"
    )


def test_apply_hides_it_on_every_later_run_too(evm):  # noqa: F811
    e, tx, x, f, bound_to_x = _setup(evm)
    reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    again = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    [g] = [g for g in again["findings"] if g["subjects"]["transfer"] == tx]
    assert reconciliation.is_drift(g), (g["repair_status"], g["repair_result"])


# -- discovery: a repeat payer's earlier transfer is not the new session's match -------------


def test_evm_discovery_finds_a_repeat_payers_new_payment(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    v0 = evm_session(e, evm["payer"], 5_000_000)
    t0 = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(1)
    assert proofs.submit_proof(e, v0["id"], t0, ["alice"])[0]["status"] == "verified"
    # The same payer's next purchase at the same price (allowed: the first session is paid).
    advance(e, 60)
    v1 = evm_session(e, evm["payer"], 5_000_000)
    advance(e, 60)
    chain.mine(10)
    t1 = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(1)
    discovery.watch_evm(e, e.rail("evm_usdc"))  # the first watch: the lookback covers both
    discovery.watch_evm(e, e.rail("evm_usdc"))
    got = [(p.ref, p.status) for p in proofs_of(e, v1["id"])]
    # (control: the transfer does pay v1 when submitted)
    direct = None if got else proofs.submit_proof(e, v1["id"], t1, ["alice"])[0]["status"]
    assert (t1, "verified") in got, f"v1's payment not discovered: {got}; submitted: {direct}"


# -- a refunded payment in a transaction of several logs ---------------------------------------


def _wallet_session(e, wallet: str) -> dict:
    """Alice's 5 USDC session paid by the contract wallet `wallet`."""
    return open_session(
        e,
        NewSession(
            owner_id="alice",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            payer=wallet,
            reference=None,
        ),
        actor="svc",
    )


def _batcher(chain, token: str, treasury: str, amounts: list[int]) -> str:
    """Deploy a contract that, when called, transfers each amount of `token` to `treasury`: a
    smart wallet paying in one transaction with several Transfer logs."""
    code = b""
    for amt in amounts:
        code += (
            bytes([0x63]) + bytes.fromhex("a9059cbb") + bytes([0x60, 0xE0, 0x1B, 0x60, 0x00, 0x52])
        )
        code += bytes([0x73]) + bytes.fromhex(treasury[2:]) + bytes([0x60, 0x04, 0x52])
        code += bytes([0x7F]) + amt.to_bytes(32, "big") + bytes([0x60, 0x24, 0x52])
        code += bytes([0x60, 0x20, 0x60, 0x00, 0x60, 0x44, 0x60, 0x00, 0x60, 0x00])
        code += bytes([0x73]) + bytes.fromhex(token[2:]) + bytes([0x5A, 0xF1, 0x50])
    code += b"\x00"
    n = len(code)
    init = bytes([0x61]) + n.to_bytes(2, "big") + bytes([0x60, 14, 0x60, 0x00, 0x39])
    init += bytes([0x61]) + n.to_bytes(2, "big") + bytes([0x60, 0x00, 0xF3])
    assert len(init) == 14
    w3 = chain.w3
    h = w3.eth.send_transaction(
        {"from": chain.accounts[0], "data": (init + code).hex(), "gas": 1_000_000}
    )
    return w3.eth.wait_for_transaction_receipt(h).contractAddress


def test_refunded_smart_wallet_payment_is_not_credited_by_discovery(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    wallet = _batcher(chain, token.address, evm["treasury"], [5_000_000, 0])
    token.functions.mint(wallet, 1_000 * 10**6).transact({"from": chain.accounts[0]})
    v = _wallet_session(e, wallet)
    advance(e, 60)
    chain.mine(5)
    tx = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": wallet, "gas": 300_000})
    rcpt = chain.w3.eth.wait_for_transaction_receipt(tx)
    assert rcpt.status == 1 and len(rcpt.logs) == 2
    tx = tx.to_0x_hex().lower()
    chain.mine(2)

    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [x for x in by_kind(dry).get("orphan_bound", []) if x["subjects"]["transfer"] == tx]
    assert f["subjects"]["session_id"] == v["id"]
    # Staff refund the wallet and record it.
    reconciliation.resolve_finding(e, f["id"], "refunded", OP)

    discovery.watch_evm(e, e.rail("evm_usdc"))
    got = [(p.ref, p.status) for p in proofs_of(e, v["id"])]
    with e.db.tx() as s:
        ents = [
            x.status
            for x in s.scalars(select(Entitlement).where(Entitlement.session_id == v["id"]))
        ]
    assert got == [], f"discovery submitted the refunded transfer: {got}; entitlements {ents}"


# -- a payment split over two logs of one transaction ------------------------------------------


def _split_payment(evm) -> tuple:  # noqa: F811
    """A smart wallet pays its 5 USDC session in one transaction of two Transfer logs
    (2 + 3 USDC): verification sums the payer's transfers to the recipient."""
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    wallet = _batcher(chain, token.address, evm["treasury"], [2_000_000, 3_000_000])
    token.functions.mint(wallet, 1_000 * 10**6).transact({"from": chain.accounts[0]})
    v = _wallet_session(e, wallet)
    advance(e, 60)
    chain.mine(5)
    h = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": wallet, "gas": 300_000})
    rcpt = chain.w3.eth.wait_for_transaction_receipt(h)
    assert rcpt.status == 1 and len(rcpt.logs) == 2
    chain.mine(2)
    return e, v, h.to_0x_hex().lower()


def test_payment_split_over_two_logs_is_bound_to_its_session_not_refunded(evm):  # noqa: F811
    # Matched log by log (2 and 3 against a session of 5), it was two `orphan_unbound`
    # transfers, "refund the sender": staff following that refund a valid payment.
    e, v, tx = _split_payment(evm)
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert dry["status"] == "complete", dry["detail"]
    mine = [f for f in dry["findings"] if f["subjects"]["transfer"] == tx]
    assert [(f["kind"], f["subjects"].get("session_id")) for f in mine] == [
        ("orphan_bound", v["id"])
    ], mine
    [f] = mine
    assert f["subjects"]["amount"] == "5000000" and len(f["subjects"]["log_indexes"]) == 2
    # Apply submits it as the session's proof: verified, as its tenant's submission would be.
    reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    assert [(p.ref, p.status) for p in proofs_of(e, v["id"])] == [(tx, "verified")]
    assert dry["summary"]["inflows"] == 2  # (counted in logs, as read)


def test_payment_split_over_two_logs_is_discovered(evm):  # noqa: F811
    e, v, tx = _split_payment(evm)
    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 1 and out["inflows"] == 2, out
    assert [(p.ref, p.status) for p in proofs_of(e, v["id"])] == [(tx, "verified")]


def test_another_senders_log_is_never_added_to_the_payers(evm):  # noqa: F811
    # 2 from the payer and 3 from someone else in one transaction (a bundle anyone can add
    # to) make no 5 USDC payment of the payer's: verification would not count the other's.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    v = evm_session(e, evm["payer"], 5_000_000)
    advance(e, 60)
    chain.mine(5)
    chain.transfer(token, evm["payer"], evm["treasury"], 2_000_000)
    chain.transfer(token, evm["other"], evm["treasury"], 3_000_000)
    chain.mine(2)
    assert discovery.watch_evm(e, e.rail("evm_usdc"))["submitted"] == 0
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert "orphan_bound" not in by_kind(dry)
    assert proofs_of(e, v["id"]) == []


# -- discovery: only a transfer made while the session was open is its payment -----------------


def test_evm_discovery_finds_the_payment_behind_the_payers_older_same_amount_transfer(evm):  # noqa: F811
    # The payer's earlier 5 USDC (a late payment to an expired session, or one made outside
    # railproof: no proof holds it) used to be matched by payer and amount alone: it took the
    # new session's turn, was submitted (failed session_not_open), and the session's real
    # payment in the same scan was skipped for good as the cursor moved past both.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    old = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    mined = chain.w3.eth.get_block(chain.w3.eth.get_transaction_receipt(old).blockNumber)
    e.settings.clock = datetime.fromtimestamp(mined.timestamp + 1, tz=UTC)
    v = evm_session(e, evm["payer"], 5_000_000)  # opened just after that transfer's block
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(1)
    advance(e, 60)

    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 1 and out["inflows"] == 2
    assert [(p.ref, p.status) for p in proofs_of(e, v["id"])] == [(paid, "verified")]
    # The older transfer is nobody's proof: it stays for reconciliation to report.
    dry = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    [f] = [f for f in dry["findings"] if f["subjects"]["transfer"] == old]
    assert f["kind"] == "orphan_unbound"


def test_evm_discovery_tries_the_next_transfer_when_one_fails_the_session(evm):  # noqa: F811
    # A smart wallet's first payment carries its 5 USDC and 1 unit more in one transaction
    # (amount_mismatch); its next one pays exactly. The first, matched by its 5 USDC log
    # alone, was submitted and failed, and used to mark the session taken, so the exact
    # payment, in the same scan, was never submitted. Its logs summed (5_000_001, as
    # verification sums them), it is no candidate at all now.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    wallet = _batcher(chain, token.address, evm["treasury"], [5_000_000, 1])
    v = _wallet_session(e, wallet)
    advance(e, 60)
    chain.mine(5)
    calls = []
    for balance in (5_000_001, 5_000_000):  # the second time, the extra unit's call reverts
        token.functions.mint(wallet, balance).transact({"from": chain.accounts[0]})
        h = chain.w3.eth.send_transaction({"from": chain.accounts[0], "to": wallet, "gas": 300_000})
        calls.append(chain.w3.eth.wait_for_transaction_receipt(h))
    assert [len(r.logs) for r in calls] == [2, 1]
    wrong, exact = (r.transactionHash.to_0x_hex().lower() for r in calls)
    chain.mine(2)

    out = discovery.watch_evm(e, e.rail("evm_usdc"))
    assert out["submitted"] == 1
    got = {p.ref: (p.status, p.failure_code) for p in proofs_of(e, v["id"])}
    assert got == {exact: ("verified", None)}
    # (the first does not pay the session: its tenant's submission of it fails)
    assert proofs.submit_proof(e, v["id"], wrong, ["alice"])[0]["failure_code"] == "amount_mismatch"


# -- the window a run reads: back to what a session could take, never silently less ------------


def _orphan(evm) -> str:  # noqa: F811
    """Money into the treasury that no session can take: a person must refund it."""
    tx = evm["chain"].transfer(evm["token"], evm["other"], evm["treasury"], 7_000_000)
    evm["chain"].mine(2)
    return tx.lower()


def _transfers(run) -> set[str]:
    return {f["subjects"]["transfer"] for f in run["findings"]}


def test_a_whole_history_run_reads_back_to_the_rails_first_session(evm):  # noqa: F811
    # It used to start 10 x RAILPROOF_RECONCILE_EVM_MAX_RANGE blocks (here 80) before the
    # head and still say `complete`: the run drift stands on, so an orphan older than that,
    # refunded by nobody, left the drift and assurance.
    e = evm["engine"]
    evm_session(e, evm["payer"], 5_000_000)
    tx = _orphan(evm)
    first = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert first["status"] == "complete", first["detail"]
    assert [f["subjects"]["transfer"] for f in by_kind(first)["orphan_unbound"]] == [tx]

    evm["chain"].mine(200)
    second = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert second["status"] == "complete", second["detail"]
    assert tx in _transfers(second) and second["summary"]["from_block"] == 0
    issues = reconciliation.assurance_issues(e)
    assert any(i["category"] == "reconciliation_orphan_unbound" for i in issues), issues


def test_with_no_session_a_run_reads_from_where_the_last_whole_history_run_did(evm):  # noqa: F811
    e = evm["engine"]
    tx = _orphan(evm)
    first = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert first["status"] == "complete" and tx in _transfers(first), first["detail"]
    evm["chain"].mine(200)
    second = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert second["status"] == "complete", second["detail"]
    assert tx in _transfers(second), second["summary"]


def test_a_window_longer_than_a_run_reads_is_incomplete_naming_what_was_read(evm):  # noqa: F811
    e = evm["engine"]
    evm_session(e, evm["payer"], 5_000_000)
    evm["chain"].mine(100)
    tx = _orphan(evm)
    e.settings.reconcile_evm_max_blocks = 50
    run = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    # The newest blocks are read (a payment made since is found), the older ones named.
    head = run["summary"]["to_block"]
    assert run["status"] == "incomplete" and tx in _transfers(run), run
    assert "RAILPROOF_RECONCILE_EVM_MAX_BLOCKS" in run["detail"], run["detail"]
    assert f"the newest, {head - 49}..{head}, were read, 0..{head - 50}" in run["detail"]
    assert run["summary"]["from_block"] == head - 49
    # Every such run reads the newest blocks: a payment made since is found by the next.
    later = _orphan(evm)
    again = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert later in _transfers(again) and again["summary"]["from_block"] > head - 49


def test_a_run_with_only_until_reads_everything_before_it(evm):  # noqa: F811
    # The start was the head less the lookback whatever --until said: an --until older than
    # that read no block at all and said `complete`, no drift.
    e, chain = evm["engine"], evm["chain"]
    evm_session(e, evm["payer"], 5_000_000)
    tx = _orphan(evm)
    until = datetime.fromtimestamp(chain.w3.eth.get_block("latest")["timestamp"] + 1, UTC)
    chain.mine(200)
    run = reconciliation.run(e, req(rail_id="evm_usdc", until=until), "ops1")
    assert run["status"] == "complete", run["detail"]
    assert tx in _transfers(run) and run["summary"]["from_block"] == 0


def test_a_window_between_two_blocks_says_it_read_none(evm):  # noqa: F811
    e, chain = evm["engine"], evm["chain"]
    _orphan(evm)
    chain.mine(5)
    at = chain.w3.eth.get_block("latest")["timestamp"] - 12 * 3  # blocks are 12 s apart
    since, until = (datetime.fromtimestamp(at + d, UTC) for d in (1, 5))
    run = reconciliation.run(e, req(rail_id="evm_usdc", since=since, until=until), "ops1")
    assert run["findings"] == [] and run["detail"].startswith("no block was read"), run["detail"]


class _Lagging:
    """A node whose block reads lag its head (a load-balanced provider's backend behind the
    one that answered eth_blockNumber): the newest blocks are null."""

    def __init__(self, inner, lag_from: int):
        self.inner, self.lag_from = inner, lag_from
        self.source = inner.source

    def call(self, method, params):
        if method == "eth_getBlockByNumber" and params[0] not in ("latest", "finalized"):
            if int(params[0], 16) >= self.lag_from:
                return None
        return self.inner.call(method, params)


def test_a_block_the_node_does_not_return_leaves_the_run_incomplete(evm):  # noqa: F811
    # The search for --since's block took a null block as older than the window and moved
    # the window's start past every block not returned: their transfers went unread, and the
    # run said `complete`.
    from scripts.make_evm_inflow_cassettes import LogsNode

    e, chain = evm["engine"], evm["chain"]
    chain.mine(20)
    start = chain.w3.eth.get_block("latest")
    tx = _orphan(evm)
    e.chains.set_transport("ethereum", _Lagging(LogsNode(chain, cap=2), start["number"] + 1))
    since = datetime.fromtimestamp(start["timestamp"], UTC)
    run = reconciliation.run(e, req(rail_id="evm_usdc", since=since), "ops1")
    assert tx in _transfers(run) or run["status"] == "incomplete", run["summary"]
    assert run["status"] == "incomplete" and "eth_getBlockByNumber" in run["detail"]


# -- every treasury a session in the window pays ----------------------------------------------


def _change_treasury(e, address: str) -> None:
    from verifier.services import rails_admin

    a = rails_admin.request_change(e, "evm_usdc", "treasury", address, OP)
    rails_admin.approve(e, a["approval_id"], OP.__class__("ops2", "INC-21", "second person"))


def test_sessions_opened_before_a_treasury_change_are_reconciled_at_their_recipient(evm):  # noqa: F811
    # A session's recipient is the treasury when it opened; the run read only the current
    # treasury, so a payment made as the session asked was neither matched nor reported.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    configured, approved = evm["treasury"], chain.accounts[4]
    s0 = evm_session(e, evm["payer"], 5_000_000)  # pays the configured treasury
    _change_treasury(e, approved)
    s1 = evm_session(e, evm["payer"], 6_000_000)  # pays the approved one
    _change_treasury(e, chain.accounts[5])
    assert (s0["recipient"].lower(), s1["recipient"].lower()) == (
        configured.lower(),
        approved.lower(),
    )
    advance(e, 60)
    chain.mine(5)
    t0 = chain.transfer(token, evm["payer"], configured, 5_000_000).lower()
    t1 = chain.transfer(token, evm["payer"], approved, 6_000_000).lower()
    chain.mine(2)
    run = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert run["status"] == "complete", run["detail"]
    got = {
        f["subjects"]["transfer"]: (f["subjects"]["session_id"], f["subjects"]["recipient"])
        for f in by_kind(run)["orphan_bound"]
    }
    assert got == {
        t0: (s0["id"], configured.lower()),
        t1: (s1["id"], approved.lower()),
    }
    applied = reconciliation.run(e, req(rail_id="evm_usdc", apply=True, confirm=True), "ops1")
    assert applied["summary"]["applied"] == 2
    assert [p.status for p in proofs_of(e, s0["id"]) + proofs_of(e, s1["id"])] == ["verified"] * 2


def test_a_recipient_a_tenant_named_is_not_read(evm):  # noqa: F811
    # A session may name any recipient: read as a treasury, anyone's busy address would fill
    # every run with transfers railproof never received (past --limit: never complete).
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    elsewhere = chain.accounts[5]
    open_session(
        e,
        NewSession(
            owner_id="mallory",
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=5_000_000,
            recipient=elsewhere,
            payer=evm["payer"],
            reference=None,
        ),
        actor="svc",
    )
    tx = chain.transfer(token, evm["other"], elsewhere, 7_000_000).lower()
    chain.mine(2)
    run = reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")
    assert run["status"] == "complete" and tx not in _transfers(run), run["findings"]


# -- a whole-history run follows on from the last complete one ---------------------------------


def _whole(e):
    advance(e, 1)  # runs are ordered by their start: the pinned clock moves on between them
    return reconciliation.run(e, req(rail_id="evm_usdc"), "ops1")


def _drift(e) -> list[dict]:
    return [
        i
        for i in reconciliation.assurance_issues(e)
        if i["category"].startswith("reconciliation_orphan")
    ]


def test_a_rail_longer_than_a_run_reads_completes_its_scheduled_runs_after_one_complete_run(evm):  # noqa: F811
    # Every whole-history run read back to the rail's first session: once the rail was older
    # than RAILPROOF_RECONCILE_EVM_MAX_BLOCKS every scheduled run ended `incomplete` for good.
    e, chain = evm["engine"], evm["chain"]
    evm_session(e, evm["payer"], 5_000_000)
    old = _orphan(evm)
    chain.mine(200)
    # More than the lookback (80 blocks), less than the rail's history.
    e.settings.reconcile_evm_max_blocks = 120
    assert _whole(e)["status"] == "incomplete"
    e.settings.reconcile_evm_max_blocks = 10_000  # raised for one run, as the README says
    first = _whole(e)
    assert first["status"] == "complete" and old in _transfers(first), first["detail"]
    e.settings.reconcile_evm_max_blocks = 120
    for _ in range(3):  # the schedule: each run reads on from the last, less the lookback
        chain.mine(30)
        run = _whole(e)
        assert run["status"] == "complete", run["detail"]
        assert run["summary"]["from_block"] >= first["summary"]["to_block"] + 1 - 80 > 0
        [f] = [f for f in run["findings"] if f["subjects"]["transfer"] == old]
        assert f["kind"] == "orphan_unbound" and f["subjects"]["carried_from"] == first["id"], f
    assert not any(
        i["category"] == "reconciliation_incomplete" for i in reconciliation.assurance_issues(e)
    )
    assert [i["subject"] for i in _drift(e)] == [
        f"reconciliation run {run['id']} finding {f['id']}"
    ]


def test_an_orphan_found_by_an_old_run_stays_drift_until_resolved(evm):  # noqa: F811
    e, chain = evm["engine"], evm["chain"]
    evm_session(e, evm["payer"], 5_000_000)
    tx = _orphan(evm)
    assert tx in _transfers(_whole(e))
    chain.mine(100)
    found = _whole(e)  # the last run that reads the orphan's block (the lookback is 80)
    assert found["status"] == "complete" and tx in _transfers(found), found["detail"]
    e.settings.reconcile_evm_max_blocks = 200  # less than the rail's history will be
    for _ in range(2):
        chain.mine(100)
        run = _whole(e)
        assert run["status"] == "complete", run["detail"]
        [f] = [f for f in run["findings"] if f["subjects"]["transfer"] == tx]
        assert run["summary"]["from_block"] > f["subjects"]["block_number"]
        # Carried, naming the run that read it from the chain, and still drift.
        assert reconciliation.is_drift(f) and f["subjects"]["carried_from"] == found["id"], f
        assert len(_drift(e)) == 1
    reconciliation.resolve_finding(e, f["id"], "refunded", OP)
    assert _drift(e) == []
    chain.mine(10)
    after = _whole(e)
    assert after["status"] == "complete" and _drift(e) == [], after["findings"]
    assert not any(reconciliation.is_drift(g) for g in after["findings"]), after["findings"]


def test_a_carried_orphan_a_proof_now_holds_is_not_drift(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    s = evm_session(e, evm["payer"], 5_000_000)
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(100)
    found = _whole(e)
    [f] = by_kind(found)["orphan_bound"]
    assert f["subjects"]["transfer"] == tx and f["subjects"]["session_id"] == s["id"]
    chain.mine(100)  # past the lookback: the next run does not read it again
    carried = _whole(e)
    [g] = by_kind(carried)["orphan_bound"]
    assert g["subjects"]["carried_from"] == found["id"] and g["repair_status"] == "proposed", g
    view, _ = proofs.submit_proof(e, s["id"], tx, ["alice"])
    assert view["status"] == "verified", view
    run = _whole(e)
    assert run["status"] == "complete", run["detail"]
    assert run["summary"]["from_block"] > f["subjects"]["block_number"]
    assert tx not in _transfers(run) and run["summary"]["carried_matched"] == 1, run
    assert _drift(e) == []


def test_a_transfer_a_pending_proof_waited_for_is_reported_once_the_proof_fails(evm):  # noqa: F811
    # A run counted a transfer a pending proof waited for as matched and kept nothing of it.
    # The proof then failed, and the runs after read on from their lookback: money received
    # for a session left unpaid, and no run ever reported it.
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    s = evm_session(e, evm["payer"], 5_000_000)
    chain.tester.disable_auto_mine_transactions()
    # Her client submits the hash while it waits in the mempool; what is mined pays less.
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 4_000_000, gas=100_000).lower()
    view, _ = proofs.submit_proof(e, s["id"], tx, ["alice"])
    assert view["status"] == "pending", view
    chain.tester.enable_auto_mine_transactions()
    chain.mine(100)  # more than the lookback (80 blocks): the next runs do not read it again
    found = _whole(e)
    assert found["status"] == "complete", found["detail"]
    [f] = [f for f in found["findings"] if f["subjects"]["transfer"] == tx]
    # Information, not drift: the proof's verification decides. Named for the next run.
    assert (f["kind"], f["severity"], f["subjects"]["proof_ids"]) == (
        "inflow_awaiting_proof",
        "info",
        [view["id"]],
    ), f
    assert found["summary"]["awaiting_proof"] == 1 and _drift(e) == []
    chain.mine(10)
    waiting = _whole(e)  # still pending: carried as it is
    [g] = [g for g in waiting["findings"] if g["subjects"]["transfer"] == tx]
    assert g["kind"] == "inflow_awaiting_proof" and g["subjects"]["carried_from"] == found["id"]
    assert proofs.verify_proof(e, view["id"]).status.value == "failed"
    chain.mine(10)
    run = _whole(e)
    assert run["status"] == "complete", run["detail"]
    assert run["summary"]["from_block"] > f["subjects"]["block_number"]
    [h] = [h for h in run["findings"] if h["subjects"]["transfer"] == tx]
    # What a fresh read reports: no session asked for that amount; a refund.
    assert h["kind"] == "orphan_unbound" and reconciliation.is_drift(h), h
    assert h["subjects"]["carried_from"] == found["id"]
    assert [i["subject"] for i in _drift(e)] == [
        f"reconciliation run {run['id']} finding {h['id']}"
    ]


def test_a_transfer_a_narrower_run_found_is_carried_by_the_next_whole_history_run(evm):  # noqa: F811
    # A proof held the transfer for review while a complete whole-history run read it (no
    # finding); staff then released it. The next scheduled run reads on from the last one's
    # end and never reads that block again: a run with --since before it reports the
    # transfer, and what it found is carried by every scheduled run after it, not cleared
    # by the first of them.
    from verifier.services import reviews
    from verifier.storage.models import PaymentSession

    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    s = evm_session(e, evm["payer"], 5_000_000)
    # A twin session for the same payer and amount (stored before such a pair was refused at
    # opening): the transfer is ambiguous, its proof held for review.
    twin = evm_session(e, evm["payer"], 5_000_001)
    with e.db.tx() as db:
        db.get(PaymentSession, twin["id"]).amount = 5_000_000
    tx = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000).lower()
    chain.mine(2)
    view, _ = proofs.submit_proof(e, s["id"], tx, ["alice"])
    assert view["status"] == "requires_review", view
    chain.mine(100)
    first = _whole(e)
    assert first["status"] == "complete" and tx not in _transfers(first)  # held: matched
    reviews.resolve_review(e, view["id"], reviews.Decision.release, OP)
    chain.mine(100)  # past the next run's lookback
    advance(e, 1)  # runs are ordered by their start
    since = reconciliation.run(
        e, req(rail_id="evm_usdc", since=datetime(2000, 1, 1, tzinfo=UTC)), "ops1"
    )
    assert tx in _transfers(since)
    for _ in range(2):
        run = _whole(e)
        assert run["status"] == "complete", run["detail"]
        [f] = [f for f in run["findings"] if f["subjects"]["transfer"] == tx]
        assert reconciliation.is_drift(f) and f["subjects"]["carried_from"] == since["id"]
        assert run["summary"]["from_block"] > f["subjects"]["block_number"]
        assert len(_drift(e)) == 1
