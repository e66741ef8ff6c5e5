"""EVM discovery's passed-over block and the blocks each watch reads again (reorg window).

A watched payer's own flood block is refused even payer by payer; the watch stops before it
for STUCK_LIMIT cycles, then passes that payer's transfers there over and reads on. Every
watch reads the last `confirmations` (64) blocks again, so later cycles meet the same block:
it is passed over again at once, not after another STUCK_LIMIT cycles of stopping there (a
payment made by anyone after the pass-over would otherwise wait again, for every payer of the
treasury, while the block is within 64 blocks of the head).
Local py-evm chain (tests/test_reconciliation's `evm` world), loopback only.
"""

from __future__ import annotations

from sqlalchemy import select

from tests.helpers import advance
from tests.test_discovery_evm_flood import RESULTS_CAP, CappedNode, dust_block
from tests.test_reconciliation import evm  # noqa: F401  (the local EVM chain)
from verifier.services import discovery
from verifier.services.sessions import NewSession, open_session
from verifier.storage.models import Proof
from verifier.storage.reconciliation_models import DiscoveryCursor


def _session(e, owner: str, payer: str, amount: int) -> dict:
    return open_session(
        e,
        NewSession(
            owner_id=owner,
            rail_id="evm_usdc",
            access_product_id="pro",
            amount=amount,
            payer=payer,
            reference=None,
        ),
        actor="svc",
    )


def test_a_block_passed_over_does_not_stall_the_watch_again_in_the_reread_window(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    e.chains.set_transport("ethereum", CappedNode(chain, RESULTS_CAP))
    _session(e, "mallory", evm["other"], 5_000_000)
    _session(e, "bob", evm["payer"], 5_000_000)
    # Bob's next order, open from the start (its window holds the chain's later blocks).
    later = _session(e, "bob", evm["payer"], 7_000_000)
    chain.mine(1)
    dust_block(evm, evm["other"], RESULTS_CAP + 1)  # a watched payer's own flood
    first = chain.transfer(token, evm["payer"], evm["treasury"], 5_000_000)
    chain.mine(2)
    for _ in range(discovery.STUCK_LIMIT + 1):  # stuck, then passed over (the shipped test)
        discovery.watch_evm(e, e.rail("evm_usdc"))
        advance(e, 120)
        chain.mine(1)  # the head moves on, as it does between worker cycles
    with e.db.tx() as s:
        assert s.scalars(select(Proof.ref)).all() == [first.lower()]

    # Bob's next order, paid after the flood block was passed over.
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 7_000_000)
    chain.mine(1)
    for _ in range(3):
        discovery.watch_evm(e, e.rail("evm_usdc"))
        advance(e, 120)
        chain.mine(1)
    with e.db.tx() as s:
        refs = s.scalars(select(Proof.ref).where(Proof.session_id == later["id"])).all()
        stuck = s.execute(
            select(DiscoveryCursor.stuck_signature, DiscoveryCursor.stuck_failures)
        ).all()
    if not refs:  # the reason: it is found once the block is passed over once more
        for _ in range(discovery.STUCK_LIMIT):
            discovery.watch_evm(e, e.rail("evm_usdc"))
            advance(e, 120)
        with e.db.tx() as s:
            eventually = s.scalars(select(Proof.ref).where(Proof.session_id == later["id"])).all()
        assert eventually == [paid.lower()], "not found at all (set-up?)"
    assert refs == [paid.lower()], (
        "a payment made after the flood block was passed over was not found in 3 cycles: the "
        f"watch stopped before the same block again (stuck_signature, stuck_failures: {stuck})"
    )
