"""A transfer staff resolved in reconciliation (refunded, not ours) is never credited
afterwards, whichever kind of finding it was resolved under: `reconcile --apply` finding it
bound once the session it names is free, and the worker's discovery, both used to attach it
(the payer had the refund and the entitlement)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import advance
from tests.test_discovery import make_engine
from tests.test_reconciliation import EXPECT, by_kind, proofs_of, req, session_for
from tests.test_reconciliation_resolve import OP, eng  # noqa: F401
from verifier.services import discovery, proofs, reconciliation
from verifier.storage.models import Entitlement
from verifier.worker import loop as worker


@pytest.mark.parametrize("resolution", ["refunded", "not_ours"])
def test_refunded_unbound_transfer_is_never_attached_once_it_becomes_bound(eng, resolution):  # noqa: F811
    sig = EXPECT["bound"]["signature"]
    bound = session_for(eng, "bound")
    # The tenant's earlier claim (another transfer) waits for its node: the session is held.
    pend, _ = proofs.submit_proof(
        eng, bound["id"], EXPECT["matched"]["signature"], ["alice"], verify=False
    )
    assert pend["status"] == "pending"

    run1 = reconciliation.run(eng, req(), "ops1")
    [f] = [x for x in by_kind(run1)["orphan_unbound"] if x["subjects"]["transfer"] == sig]
    # Staff follow the proposed repair: refund the sender, and record it.
    out = reconciliation.resolve_finding(eng, f["id"], resolution, OP)
    assert out["repair_status"] == "resolved"

    # The pending claim is checked: it was not this session's transfer.
    proofs.verify_proof(eng, pend["id"])
    assert [p.status for p in proofs_of(eng, bound["id"])] == ["failed"]

    advance(eng, 1)
    run2 = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    attached = [p for p in proofs_of(eng, bound["id"]) if p.ref == sig]
    kinds = {x["kind"]: x for x in run2["findings"] if x["subjects"].get("transfer") == sig}
    assert attached == [], (
        f"refunded transfer attached by apply: {[(p.status) for p in attached]}; finding {kinds}"
    )


# -- discovery --------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", ["refunded", "not_ours"])
def test_discovery_never_submits_a_transfer_staff_resolved_as_refunded(db_url, resolution):
    """A dry run reports the transfer `orphan_bound`; staff refund it (or decide it is not
    ours) and record that. The worker's discovery, polling later, must not attach it."""
    e = make_engine(db_url)
    try:
        sig = EXPECT["bound"]["signature"]
        bound = session_for(e, "bound")
        dry = reconciliation.run(e, req(), "ops1")
        [f] = [x for x in by_kind(dry)["orphan_bound"] if x["subjects"]["transfer"] == sig]
        reconciliation.resolve_finding(e, f["id"], resolution, OP)

        worker.sweep(e, "w1")  # the worker's cycle: discovery, verification, auto-apply
        attached = [p for p in proofs_of(e, bound["id"]) if p.ref == sig]
        with e.db.tx() as s:
            ents = [
                x.status
                for x in s.scalars(select(Entitlement).where(Entitlement.session_id == bound["id"]))
            ]
        assert attached == [], (
            f"discovery attached a {resolution} transfer: {[p.status for p in attached]}; "
            f"entitlements {ents}"
        )
    finally:
        e.db.dispose()


def test_discovery_never_submits_a_refunded_transfer_once_the_session_is_free(db_url):
    """As the reconcile case: held while its earlier claim was pending, refunded and
    recorded, then the claim fails; discovery's next cycle must not attach it."""
    e = make_engine(db_url)
    try:
        sig = EXPECT["bound"]["signature"]
        bound = session_for(e, "bound")
        pend, _ = proofs.submit_proof(
            e, bound["id"], EXPECT["matched"]["signature"], ["alice"], verify=False
        )
        assert discovery.cycle(e) == 0  # held: not watched
        run1 = reconciliation.run(e, req(), "ops1")
        [f] = [x for x in by_kind(run1)["orphan_unbound"] if x["subjects"]["transfer"] == sig]
        reconciliation.resolve_finding(e, f["id"], "refunded", OP)
        proofs.verify_proof(e, pend["id"])
        discovery.cycle(e)
        attached = [p for p in proofs_of(e, bound["id"]) if p.ref == sig]
        assert attached == [], (
            f"discovery attached a refunded transfer: {[p.status for p in attached]}"
        )
    finally:
        e.db.dispose()


# -- `accepted` holds for the state it was given on -------------------------------------------
# Reviewed while unbound (the session was held by another, pending claim): once the session is
# free, its own transfer is still discovered and applied.


def test_accepted_unbound_transfer_is_still_discovered_once_session_is_free(db_url):
    e = make_engine(db_url)
    try:
        sig = EXPECT["bound"]["signature"]
        bound = session_for(e, "bound")
        pend, _ = proofs.submit_proof(
            e, bound["id"], EXPECT["matched"]["signature"], ["alice"], verify=False
        )
        run1 = reconciliation.run(e, req(), "ops1")
        [f] = [x for x in by_kind(run1)["orphan_unbound"] if x["subjects"]["transfer"] == sig]
        reconciliation.resolve_finding(e, f["id"], "accepted", OP)
        proofs.verify_proof(e, pend["id"])  # the pending claim fails: the session is free
        discovery.cycle(e)
        got = [(p.ref, p.status) for p in proofs_of(e, bound["id"]) if p.ref == sig]
        assert got, "the session's own transfer is never discovered after an `accepted` review"
    finally:
        e.db.dispose()


def test_accepted_unbound_transfer_is_still_applied_once_bound(eng):  # noqa: F811
    sig = EXPECT["bound"]["signature"]
    bound = session_for(eng, "bound")
    pend, _ = proofs.submit_proof(
        eng, bound["id"], EXPECT["matched"]["signature"], ["alice"], verify=False
    )
    run1 = reconciliation.run(eng, req(), "ops1")
    [f] = [x for x in by_kind(run1)["orphan_unbound"] if x["subjects"]["transfer"] == sig]
    reconciliation.resolve_finding(eng, f["id"], "accepted", OP)
    proofs.verify_proof(eng, pend["id"])
    advance(eng, 1)
    run2 = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    kinds = {
        x["kind"]: x["repair_status"]
        for x in run2["findings"]
        if x["subjects"].get("transfer") == sig
    }
    attached = [p.status for p in proofs_of(eng, bound["id"]) if p.ref == sig]
    assert attached, (
        f"bound transfer never attached after `accepted` on its unbound finding: {kinds}"
    )
