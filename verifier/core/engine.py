"""The engine's wiring: settings, database, catalog, chains, metrics and the clock, plus the
rail lookups every service needs. Services are modules of functions over an Engine."""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rails import adapter_for
from rails.base import Adapter
from rails.codes import FailureCode
from registry.catalog import Catalog, CatalogError, Rail, RailOverrides, Stage, load_catalog
from verifier.core import inline
from verifier.core.chains import Chains
from verifier.core.config import Settings, load_settings
from verifier.core.errors import BadInput
from verifier.core.known_sessions import KnownSessions
from verifier.core.metrics import Metrics
from verifier.storage.db import Database
from verifier.storage.models import RailState
from verifier.storage.repo import approvals as approval_repo
from verifier.storage.repo import rail_state as rail_state_repo
from verifier.storage.repo.rows import Record

log = logging.getLogger("railproof.engine")


class Engine:
    def __init__(
        self,
        settings: Settings | None = None,
        db: Database | None = None,
        chains: Chains | None = None,
        catalog: Catalog | None = None,
    ):
        self.settings = settings or load_settings()
        self.db = db or Database(
            self.settings.database_url,
            self.settings.sqlite_synchronous,
            self.settings.audit_key_bytes(),
            pg_lock_timeout_ms=self.settings.pg_lock_timeout_ms,
            pg_statement_timeout_ms=self.settings.pg_statement_timeout_ms,
        )
        # The submission path's service work runs on the API's event loop on SQLite, on a pool
        # thread on PostgreSQL (core.inline).
        self.work_on_loop = not self.db.postgres
        n = self.settings.pg_work_slots
        self.work_slots = inline.Slots(n) if self.db.postgres and n > 0 else None
        self.catalog = catalog or load_catalog()
        self.chains = chains or Chains(self.settings, self.catalog)
        self.metrics = Metrics()
        self.chains.on_provider_failure = self._provider_failed
        self._adapters: dict[tuple[str, str, str], Adapter] = {}
        self._rails: dict[tuple[str, str | None, str | None, str | None], Rail] = {}
        self._rails_catalog = self.catalog
        self._lock = threading.Lock()
        self.known_sessions = KnownSessions()
        # Fault injection for the rollback test of apply (never set outside tests).
        self.fail_after_receipt_insert = False

    def _provider_failed(self, network: str, provider: str, kind: str) -> None:
        self.metrics.inc("rpc_provider_errors_total", network=network, provider=provider, kind=kind)

    def now(self) -> datetime:
        return self.settings.now()

    # -- rails ----------------------------------------------------------------------------
    def has_rail(self, rail_id: str) -> bool:
        return rail_id in self.catalog.rails

    def rail(self, rail_id: str, network: str | None = None, asset: str | None = None) -> Rail:
        if rail_id not in self.catalog.rails:
            raise BadInput(
                FailureCode.rail_not_registered,
                f"rail_id: unknown rail {rail_id!r}",
                field="rail_id",
            )
        o = self.settings.rail_overrides(rail_id)
        # Resolving builds and validates pydantic models; the result depends only on the
        # catalog and the overrides (read from the environment on every call, so a changed
        # setting is never served stale) and is frozen, so it is shared.
        if self._rails_catalog is not self.catalog:
            self._rails.clear()
            self._rails_catalog = self.catalog
        key = (rail_id, network or o.network, asset or o.asset, o.treasury)
        r = self._rails.get(key)
        if r is None:
            if network or asset:
                o = RailOverrides(
                    network=network or o.network, asset=asset or o.asset, treasury=o.treasury
                )
            try:
                r = self.catalog.resolve(rail_id, o)
            except CatalogError as e:
                raise BadInput("configuration_error", str(e), field="rail_id") from e
            self._rails[key] = r
        return r

    def adapter(self, rail: Rail) -> Adapter:
        key = (rail.rail_id, rail.network, rail.asset)
        with self._lock:
            a = self._adapters.get(key)
            if a is None:
                a = self._adapters[key] = adapter_for(rail, self.catalog)
            return a

    def sibling_rails(self, rail_id: str, network: str, asset: str) -> list[tuple[Rail, Adapter]]:
        """The other rails (and their adapters) whose sessions are paid in the same token on
        the same network, as this deployment resolves them: one transfer can back a session
        of either (an x402 payment and a Base USDC one)."""
        out = []
        for other in self.catalog.rails:
            if other == rail_id:
                continue
            try:
                r = self.rail(other)
                if r.network != network or r.asset.lower() != asset.lower():
                    continue
                out.append((r, self.adapter(r)))
            except (BadInput, ValueError):
                # A rail this deployment's overrides leave unusable (no token domain for its
                # network, say) takes no session, so it has no candidate; its own use says so.
                continue
        return out

    def binds_reference(self, rail: Rail) -> bool:
        """Whether the rail's adapter can bind a session reference (or memo) on chain."""
        return bool(self.adapter(rail).binds_reference)

    def treasuries(self, s: Session) -> set[str]:
        """Every treasury address the deployment knows: the catalog's, the environment's and
        the approved ones stored per rail."""
        out = self.configured_treasuries()
        out.update(rail_state_repo.treasuries(s))
        return out

    def configured_treasuries(self) -> set[str]:
        """The treasury addresses of the catalog and the environment (not those stored)."""
        return {r for rid in self.catalog.rails if (r := self.rail(rid).treasury)}

    def ensure_rail_states(self) -> None:
        # API processes and workers starting at once on a fresh PostgreSQL database can both
        # find a rail's row missing; the loser's insert fails, and its retry finds the rows.
        for retry in (False, True):
            try:
                with self.db.tx() as s:
                    have = rail_state_repo.rail_ids(s)
                    self._demoted(s, have)
                    for rail_id, d in self.catalog.rails.items():
                        if rail_id not in have:
                            rail_state_repo.add(
                                s,
                                RailState(
                                    rail_id=rail_id,
                                    production_enabled=d.production_enabled,
                                    paused=False,
                                    updated_at=self.now(),
                                    updated_by="catalog",
                                ),
                            )
                return
            except IntegrityError:
                if retry:
                    raise

    def _demoted(self, s: Session, have: set[str]) -> None:
        # SECURITY: a rail's row is made production-enabled by the catalog's default for a
        # live rail. A release that demotes the rail (to gated) leaves that row as it was: a
        # gated rail no two staff members enabled, without release-gate evidence, creating
        # receipts. Such a row is disabled, unless its last approved production change
        # enabled it.
        for rail_id, d in self.catalog.rails.items():
            if rail_id not in have or d.production_enabled:
                continue
            st = rail_state_repo.get(s, rail_id, lock=True)
            if st is None or not st.production_enabled:
                continue
            if approval_repo.production_approved(s, rail_id):
                continue
            st.production_enabled = False
            st.updated_at, st.updated_by = self.now(), "catalog"
            log.warning(
                "rail %s is no longer production-enabled: the catalog no longer enables it, "
                "and no approved production change did",
                rail_id,
                extra={"rail_id": rail_id},
            )

    def rail_state(self, s: Session, rail_id: str, lock: bool = False) -> RailState:
        # One read per transaction: a repeat is answered from the session's identity map;
        # nothing is cached across transactions (a pause must be seen by the next one). A
        # locking read always goes to the database.
        st = rail_state_repo.get(s, rail_id, lock=lock)
        if st is None:
            d = self.catalog.rails[rail_id]
            st = rail_state_repo.add(
                s,
                RailState(
                    rail_id=rail_id,
                    production_enabled=d.production_enabled,
                    paused=False,
                    updated_at=self.now(),
                    updated_by="catalog",
                ),
            )
        return st

    def rail_state_read(self, s: Session, rail_id: str) -> RailState | Record:
        """`rail_state` for a caller that only reads it (paused, treasury): the session's own
        object when it holds one, otherwise the row as a plain record, without building an
        ORM instance. A missing row is created exactly as `rail_state` does.

        For the paths that create a session, a proof or a receipt: the read orders them with
        a pause (`rails_admin.set_paused`). On PostgreSQL the row is read FOR SHARE, held until
        the caller's transaction ends: a pause (FOR UPDATE on the row, behind a table lock
        that queues later readers) waits for every transaction that read the rail running, and
        one that reads after the pause waits for it to commit and then sees it paused. Take it
        first in the transaction, before any other row lock, insert or audit append, so the
        wait cannot close a cycle. On SQLite every transaction holds the database's one writer
        lock from BEGIN IMMEDIATE."""
        # SECURITY: the share lock is what keeps work from committing after a pause
        # (storage.repo.rail_state.read_shared).
        st = rail_state_repo.read_shared(s, rail_id)
        return st if st is not None else self.rail_state(s, rail_id)

    def production_enabled(self, st: RailState | Record) -> bool:
        # SECURITY: whatever the database says, a review_only rail is never in production.
        return (
            st.production_enabled and self.catalog.rails[st.rail_id].stage is not Stage.review_only
        )

    def treasury(self, s: Session, rail: Rail, st: RailState | Record | None = None) -> str | None:
        """`st`: the rail's state when the caller has already read it in this transaction."""
        if st is None:
            st = self.rail_state_read(s, rail.rail_id)
        return st.treasury or rail.treasury
