"""Metrics computed from stored state when /metrics is scraped: how long the oldest proof
has waited for review and the oldest two-person approval for its second person, and the setup
blockers of rails enabled for production; and the count of failed readiness checks."""

from __future__ import annotations

import logging

from registry.readiness import StoredState, readiness
from verifier.core.engine import Engine
from verifier.core.errors import EngineError
from verifier.core.timeutil import utc
from verifier.services.rails_admin import deployment
from verifier.storage.repo import observability as repo
from verifier.storage.repo import rail_state as rail_state_repo

log = logging.getLogger("railproof.metrics")
# A pause is deliberate and has its own metric (rail_paused_attempts_total).
_NOT_SETUP = frozenset({"rail_paused"})


def refresh_queue_gauges(engine: Engine) -> None:
    now = engine.now()
    with engine.db.tx() as s:
        review = repo.oldest_review_since(s)
        approval = repo.oldest_pending_approval_since(s)
        unsettled = repo.oldest_unsettled_by_rail(s)
    for name, since in (
        ("pending_review_age_seconds", review),
        ("approval_queue_age_seconds", approval),
    ):
        age = (now - utc(since)).total_seconds() if since is not None else 0.0
        engine.metrics.set(name, max(0.0, age))
    # Every catalog rail, so a rail that settled its backlog drops back to 0.
    for rail_id in engine.catalog.rails:
        since = unsettled.get(rail_id)
        age = (now - utc(since)).total_seconds() if since is not None else 0.0
        engine.metrics.set("unsettled_payment_age_seconds", max(0.0, age), rail_id=rail_id)


def refresh_setup_gauge(engine: Engine) -> None:
    """How many rails can take payments now, and per rail the readiness blockers
    (`railproof rail-production-readiness`) standing on a rail staff enabled for production,
    pause aside: such a rail takes payments it cannot apply. Rails not enabled count 0:
    their blockers are expected."""
    with engine.db.tx() as s:
        states = {
            r.rail_id: StoredState(r.production_enabled, r.paused)
            for r in rail_state_repo.all_states(s)
        }
    try:
        rows = readiness(engine.catalog, states, deployment(engine))
    except EngineError as e:
        # A rail override the catalog refuses: /readyz names it; /metrics still answers.
        log.warning("rail readiness unavailable for metrics: %s", e.message)
        return
    for row in rows:
        blockers = [b for b in row["blockers"] if b.split(":", 1)[0] not in _NOT_SETUP]
        engine.metrics.set(
            "rail_setup_blockers",
            len(blockers) if row["production_enabled"] else 0,
            rail_id=row["rail_id"],
        )
    # Ready: enabled, not paused, no blocker: a payment on it can be verified and applied.
    engine.metrics.set("available_rails", sum(1 for row in rows if row["ready"]))


def count_readiness(engine: Engine, checks: list[dict[str, object]]) -> None:
    """Each failed /readyz check, by name (database, schema, rpc:<rail>: from the code and
    the catalog, never from the caller)."""
    for c in checks:
        if not c["ok"]:
            engine.metrics.inc("readiness_failures_total", check=str(c["name"]))
