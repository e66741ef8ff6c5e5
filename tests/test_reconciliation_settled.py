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
from verifier.services import discovery, proofs, reconciliation, reviews
from verifier.storage.models import Entitlement, Proof
from verifier.worker import loop as worker


def _resolved_while_held(e, resolution: str) -> tuple[dict, str]:
    """The `bound` session held by its tenant's earlier claim (another transfer, held for
    review), so a run reports the session's own transfer unbound; staff resolve that finding;
    then the review is released, and the session is free. Returns the session and its
    transfer's signature."""
    sig = EXPECT["bound"]["signature"]
    bound = session_for(e, "bound")
    held, _ = proofs.submit_proof(
        e, bound["id"], EXPECT["matched"]["signature"], ["alice"], verify=False
    )
    with e.db.tx() as s:
        p = s.get(Proof, held["id"])
        p.status, p.failure_code = "requires_review", "ambiguous_transfer"
    run1 = reconciliation.run(e, req(), "ops1")
    [f] = [x for x in by_kind(run1)["orphan_unbound"] if x["subjects"]["transfer"] == sig]
    out = reconciliation.resolve_finding(e, f["id"], resolution, OP)
    assert out["repair_status"] == "resolved"
    reviews.resolve_review(e, held["id"], reviews.Decision.release, OP)
    assert [p.status for p in proofs_of(e, bound["id"])] == ["failed"]
    advance(e, 1)
    return bound, sig


def _attached(e, session: dict, sig: str) -> list[str]:
    return [p.status for p in proofs_of(e, session["id"]) if p.ref == sig]


@pytest.mark.parametrize("resolution", ["refunded", "not_ours"])
def test_refunded_unbound_transfer_is_never_attached_once_it_becomes_bound(eng, resolution):  # noqa: F811
    bound, sig = _resolved_while_held(eng, resolution)
    run2 = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    [f] = [x for x in run2["findings"] if x["subjects"].get("transfer") == sig]
    assert (f["kind"], f["repair_status"]) == ("orphan_bound", "resolved")
    assert _attached(eng, bound, sig) == []


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
        bound, sig = _resolved_while_held(e, "refunded")
        discovery.cycle(e)
        assert _attached(e, bound, sig) == []
    finally:
        e.db.dispose()


# -- `accepted` holds for the state it was given on -------------------------------------------
# Reviewed while unbound (the session was held by another claim, in review): once the session
# is free, its own transfer is still discovered and applied.


def test_accepted_unbound_transfer_is_still_discovered_once_session_is_free(db_url):
    e = make_engine(db_url)
    try:
        bound, sig = _resolved_while_held(e, "accepted")
        discovery.cycle(e)
        assert _attached(e, bound, sig) == ["verified"]
    finally:
        e.db.dispose()


def test_accepted_unbound_transfer_is_still_applied_once_bound(eng):  # noqa: F811
    bound, sig = _resolved_while_held(eng, "accepted")
    run2 = reconciliation.run(eng, req(apply=True, confirm=True), "ops1")
    [f] = [x for x in run2["findings"] if x["subjects"].get("transfer") == sig]
    assert (f["kind"], f["repair_status"]) == ("orphan_bound", "applied")
    assert _attached(eng, bound, sig) == ["verified"]


def test_accepted_as_bound_is_not_submitted_by_discovery(db_url):
    # Reviewed while bound (the state stands: not credited): reconciliation's apply skips it,
    # and so does discovery.
    e = make_engine(db_url)
    try:
        sig = EXPECT["bound"]["signature"]
        bound = session_for(e, "bound")
        dry = reconciliation.run(e, req(), "ops1")
        [f] = [x for x in by_kind(dry)["orphan_bound"] if x["subjects"]["transfer"] == sig]
        reconciliation.resolve_finding(e, f["id"], "accepted", OP)
        again = reconciliation.run(e, req(), "ops1")
        [g] = [x for x in again["findings"] if x["subjects"].get("transfer") == sig]
        assert (g["kind"], g["repair_status"]) == ("orphan_bound", "resolved")
        worker.sweep(e, "w1")
        assert _attached(e, bound, sig) == []
    finally:
        e.db.dispose()
