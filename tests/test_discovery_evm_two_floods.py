"""EVM discovery with two different stuck blocks in the re-read window (confirmations, 64).

A watched payer floods block B (refused even payer by payer): the watch stops before it for
STUCK_LIMIT cycles, then passes it over, and passes it over again at once while the blocks
read again each cycle reach it. A second flood, in block C a few blocks later, is passed over
in the same way after STUCK_LIMIT cycles of its own (B staying passed over meanwhile), so a
payment made after C is found. Local py-evm chain (tests/test_reconciliation's `evm` world),
loopback only.
"""

from __future__ import annotations

from sqlalchemy import select

from tests.helpers import advance
from tests.test_discovery_evm_flood import RESULTS_CAP, CappedNode, dust_block
from tests.test_discovery_evm_passed_over_again import _session
from tests.test_reconciliation import evm  # noqa: F401  (the local EVM chain)
from verifier.services import discovery
from verifier.storage.models import Proof
from verifier.storage.reconciliation_models import DiscoveryCursor


def _cycle(e, chain) -> None:
    discovery.watch_evm(e, e.rail("evm_usdc"))
    advance(e, 120)
    chain.mine(1)  # the head moves on, as it does between worker cycles


def test_a_second_stuck_block_in_the_reread_window_is_passed_over_too(evm):  # noqa: F811
    e, chain, token = evm["engine"], evm["chain"], evm["token"]
    e.settings.discovery = True
    e.chains.set_transport("ethereum", CappedNode(chain, RESULTS_CAP))
    _session(e, "mallory", evm["other"], 5_000_000)
    later = _session(e, "bob", evm["payer"], 7_000_000)
    chain.mine(1)
    dust_block(evm, evm["other"], RESULTS_CAP + 1)  # block B: a watched payer's own flood
    chain.mine(2)
    dust_block(evm, evm["other"], RESULTS_CAP + 1)  # block C, a few blocks later
    paid = chain.transfer(token, evm["payer"], evm["treasury"], 7_000_000)  # after C
    chain.mine(1)
    cursors = []
    # B: STUCK_LIMIT cycles, then C: STUCK_LIMIT cycles of its own, and a few to spare. The
    # head moves one block a cycle: B stays well within the 64 blocks read again.
    for _ in range(3 * discovery.STUCK_LIMIT):
        _cycle(e, chain)
        with e.db.tx() as s:
            cursors.append(
                s.execute(
                    select(
                        DiscoveryCursor.stuck_signature,
                        DiscoveryCursor.stuck_failures,
                        DiscoveryCursor.last_block,
                    )
                ).one()
            )
    with e.db.tx() as s:
        refs = s.scalars(select(Proof.ref).where(Proof.session_id == later["id"])).all()
    assert refs == [paid.lower()], (
        f"a payment after a second stuck block was not found in {3 * discovery.STUCK_LIMIT} "
        f"cycles: (stuck, failures, last_block) each cycle: {[tuple(c) for c in cursors]}"
    )
