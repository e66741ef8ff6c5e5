"""Webhooks (storage.webhook_models): a token's endpoints as their owner manages them, and the
deliveries as the worker and staff handle them (the due queue, leases, and deliveries joined
with their event and endpoint)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    Integer,
    Row,
    Select,
    String,
    bindparam,
    cast,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from verifier.storage.repo import audit as audit_repo
from verifier.storage.repo import rows
from verifier.storage.repo.prepared import Prepared
from verifier.storage.webhook_models import (
    DeliveryStatus,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
)

Joined = tuple[WebhookDelivery, OutboxEvent, WebhookEndpoint]


# -- endpoints -------------------------------------------------------------------------------

# A token's endpoint list is changed under a PostgreSQL advisory lock of its own (two int4 keys:
# this namespace and the token's hash), apart from the audit chain's one-bigint lock.
_ENDPOINTS_LOCK_SPACE = 0x77656268
_LOCK_ENDPOINTS = Prepared(
    select(
        func.pg_advisory_xact_lock(
            literal(_ENDPOINTS_LOCK_SPACE, Integer), func.hashtext(bindparam("p", type_=String))
        )
    )
)


def lock_endpoints_of(s: Session, owners: list[str]) -> None:
    """Hold, to the end of the transaction, the endpoint lists of every owner a token acts
    for, one lock per owner taken in sorted order (so two such calls never wait on each other
    in a cycle): what the token reads next (the endpoints it manages, made for owners all
    among its own) stays what it checks. Two creates whose managed sets can meet share an
    owner, hence a lock: otherwise both would find the URL free and the count under the
    limit. SQLite's BEGIN IMMEDIATE holds every writer out already."""
    if rows.is_postgres(s):
        for owner in sorted(set(owners)):
            _LOCK_ENDPOINTS.scalar(s.connection(), {"p": "owner:" + owner})


def active_endpoints_of(s: Session, principal: str) -> list[WebhookEndpoint]:
    """The token's active endpoints, oldest first."""
    return list(
        s.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.principal == principal, WebhookEndpoint.active.is_(True))
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        ).all()
    )


def active_endpoints_within(s: Session, owners: list[str]) -> list[WebhookEndpoint]:
    """Active endpoints made for owners all among `owners`, oldest first: those a token acting
    for `owners` manages, whichever token made them."""
    q = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.active.is_(True))
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    if rows.is_postgres(s):
        within = cast(WebhookEndpoint.owners, JSONB).contained_by(
            cast(literal(json.dumps(sorted(owners))), JSONB)
        )
        return list(s.scalars(q.where(within)).all())
    held = set(owners)
    return [ep for ep in s.scalars(q).all() if set(ep.owners) <= held]


def active_endpoints_sharing(s: Session, owners: list[str]) -> list[WebhookEndpoint]:
    """Active endpoints made for at least one of `owners`: each already receives some of
    their events. Read under `lock_endpoints_of(owners)`: every create adding such an
    endpoint held the lock of the owner they share."""
    q = select(WebhookEndpoint).where(WebhookEndpoint.active.is_(True))
    if rows.is_postgres(s):
        shared = cast(WebhookEndpoint.owners, JSONB).has_any(
            postgresql.array(sorted(set(owners)), type_=String)
        )
        return list(s.scalars(q.where(shared)).all())
    held = set(owners)
    return [ep for ep in s.scalars(q).all() if held & set(ep.owners)]


def endpoint(s: Session, endpoint_id: str) -> WebhookEndpoint | None:
    """The endpoint, read without a lock."""
    return rows.get(s, WebhookEndpoint, endpoint_id)


def endpoint_owners(s: Session, endpoint_id: str) -> list[str] | None:
    """The owners an endpoint was made for (None: no such endpoint), read without a lock:
    they never change."""
    got = s.scalar(select(WebhookEndpoint.owners).where(WebhookEndpoint.id == endpoint_id))
    return None if got is None else list(got)


def add_endpoint(
    s: Session,
    *,
    principal: str,
    owners: list[str],
    url: str,
    event_types: list[str],
    secret: str,
    created_at: datetime,
) -> WebhookEndpoint:
    """Insert an active endpoint now, so its id exists for the audit row."""
    ep = WebhookEndpoint(
        principal=principal,
        owners=owners,
        url=url,
        event_types=event_types,
        secret=secret,
        active=True,
        created_at=created_at,
    )
    s.add(ep)
    s.flush()
    return ep


def endpoint_principal(s: Session, endpoint_id: str) -> str | None:
    """The token an endpoint belongs to (None: no such endpoint), read without a lock: it
    never changes."""
    return s.scalar(select(WebhookEndpoint.principal).where(WebhookEndpoint.id == endpoint_id))


def endpoint_locked(s: Session, endpoint_id: str) -> WebhookEndpoint | None:
    """The endpoint under its row lock to the end of the transaction, whoever owns it; the
    audit chain's lock is taken first, and held too.

    That order is the emitting transactions' (services.events): they hold the chain's lock
    when their delivery rows' foreign key takes its share lock on the endpoint's row. Locking
    the row first and the chain next (the audit append of a rotate or delete) closed a cycle
    with them, which PostgreSQL broke by aborting one side."""
    audit_repo.lock_chain(s)
    if rows.is_postgres(s):
        # Read again under the lock, whatever this session loaded before.
        return s.get(WebhookEndpoint, endpoint_id, with_for_update=True, populate_existing=True)
    return rows.get(s, WebhookEndpoint, endpoint_id)


def set_secret(s: Session, ep: WebhookEndpoint, secret: str) -> None:
    """Replace the endpoint's signing secret (written with the transaction)."""
    ep.secret = secret


def deactivate_endpoint(s: Session, ep: WebhookEndpoint, now: datetime, reason: str) -> int:
    """Deactivate the endpoint and cancel its pending deliveries (`reason` is their last
    error); returns how many were cancelled. A delivery leased to a worker is cancelled too:
    the worker discards its outcome for a row that is no longer pending."""
    ep.active, ep.deactivated_at = False, now
    return rows.rowcount(
        s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == ep.id,
                WebhookDelivery.status == DeliveryStatus.pending,
            )
            .values(
                status=DeliveryStatus.cancelled,
                next_attempt_at=None,
                claimed_by=None,
                claimed_until=None,
                last_error=reason,
                updated_at=now,
            )
        )
    )


# -- deliveries ------------------------------------------------------------------------------


def _joined() -> Select[WebhookDelivery, OutboxEvent, WebhookEndpoint]:
    return (
        select(WebhookDelivery, OutboxEvent, WebhookEndpoint)
        .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
    )


def _triples(
    s: Session,
    q: Select[WebhookDelivery, OutboxEvent, WebhookEndpoint],
) -> list[Joined]:
    return [(d, ev, ep) for d, ev, ep in s.execute(q).all()]


def _earlier_pending(ev: Any, *also: ColumnElement[bool]) -> Exists:
    """A pending delivery, to the endpoint of the `WebhookDelivery` row in the outer query, of
    an event about `ev`'s resource that comes before `ev` (`also`: more conditions)."""
    d2, e2 = aliased(WebhookDelivery), aliased(OutboxEvent)
    return (
        select(d2.id)
        .join(e2, e2.id == d2.event_id)
        .where(
            *also,
            d2.endpoint_id == WebhookDelivery.endpoint_id,
            d2.status == DeliveryStatus.pending,
            e2.resource_type == ev.resource_type,
            e2.resource_id == ev.resource_id,
            e2.sequence < ev.sequence,
        )
        .exists()
    )


def _claimable(now: datetime) -> list[ColumnElement[bool]]:
    """A delivery `due` may lease at `now`: pending, due, not leased, and the earliest pending
    event of its resource for its endpoint (events of one resource go out in order)."""
    D, E = WebhookDelivery, OutboxEvent
    earlier_pending = _earlier_pending(E)
    return [
        D.status == DeliveryStatus.pending,
        # A pending delivery always has its time (migration 0015 gave it to any without):
        # no OR here, so each endpoint's probe is a range of its index.
        D.next_attempt_at <= now,
        or_(D.claimed_until.is_(None), D.claimed_until < now),
        ~earlier_pending,
    ]


def _candidates(s: Session, now: datetime, per_token: int) -> list[Row[Any]]:
    """Up to `per_token` claimable deliveries of each active endpoint, earliest due first,
    each with its endpoint's token (principal). One endpoint's backlog, however long, yields
    `per_token` rows: what one tenant piles up is never read whole to find another's next
    delivery."""
    D, E, EP = WebhookDelivery, OutboxEvent, WebhookEndpoint
    order = (D.next_attempt_at, E.created_at, E.sequence)
    cols = (D.id, D.next_attempt_at.label("due_at"), E.created_at, E.sequence)

    if rows.is_postgres(s):
        # One walk of a range of ix_webhook_deliveries_endpoint_due per endpoint, in its
        # order, stopping at `per_token` rows (ties of due time between resources may go
        # either way). It is the only index in due order: with one across all endpoints the
        # planner walked every tenant's due deliveries hoping to meet this endpoint's soon,
        # and read one tenant's backlog once per endpoint (migration 0015 dropped it).
        probe = (
            select(*cols)
            .join(E, E.id == D.event_id)
            .where(D.endpoint_id == EP.id, *_claimable(now))
            .order_by(D.next_attempt_at)
            .limit(per_token)
            .lateral("probe")
        )
        q = (
            select(EP.principal, probe)
            .select_from(EP)
            .join(probe, true())
            .where(EP.active.is_(True))
        )
        return list(s.execute(q).all())
    # SQLite (one writer, the embedded store's small queues): every claimable row, ranked
    # per endpoint in SQL.
    n = func.row_number().over(partition_by=D.endpoint_id, order_by=order).label("n")
    ranked = (
        select(EP.principal, *cols, n)
        .join(E, E.id == D.event_id)
        .join(EP, EP.id == D.endpoint_id)
        .where(EP.active.is_(True), *_claimable(now))
        .subquery()
    )
    q = select(
        ranked.c.principal, ranked.c.id, ranked.c.due_at, ranked.c.created_at, ranked.c.sequence
    ).where(ranked.c.n <= per_token)
    return list(s.execute(q).all())


def _in_flight(s: Session, now: datetime) -> dict[str, int]:
    """Deliveries leased at `now`, per token (the endpoints' principal): read on the partial
    index of the leases in force (ix_webhook_deliveries_leased), a handful of rows."""
    D, EP = WebhookDelivery, WebhookEndpoint
    q = (
        select(EP.principal, func.count())
        .select_from(D)
        .join(EP, EP.id == D.endpoint_id)
        .where(
            D.claimed_until.is_not(None),
            D.claimed_until >= now,
            D.status == DeliveryStatus.pending,
        )
        .group_by(EP.principal)
    )
    return {principal: int(n) for principal, n in s.execute(q).all()}


def due(
    s: Session,
    now: datetime,
    limit: int,
    per_token: int,
    held: Callable[[], Mapping[str, int]] | None = None,
) -> list[Joined]:
    """Lease candidates: up to `limit` claimable deliveries, earliest due first, with at most
    `per_token` in flight to the endpoints of any one token (its principal), counting those
    already leased and `held` (slots the caller's worker still holds per token without a
    lease: a host name lookup still running after its POST ended, read after the leases): a
    tenant's receivers that
    hang hold that many slots, never the others' (its backlog waits behind its own
    receivers). On PostgreSQL the rows are locked FOR UPDATE SKIP LOCKED, so workers share
    the queue without taking the same row (two workers choosing at once may each send that
    many: a bound per worker, not a global one)."""
    D = WebhookDelivery
    cands = _candidates(s, now, per_token)
    busy = _in_flight(s, now) if cands else {}
    # SECURITY: `held` is read after the leases: a lookup is held before its POST's outcome
    # ends its lease, so it is counted once or twice, never missed. Read before (a snapshot
    # taken when the claim started), a lookup given up on and its lease ended meanwhile was
    # counted nowhere, and its tenant's slots were given out again while it still ran.
    for principal, n in (held() if held is not None and cands else {}).items():
        busy[principal] = busy.get(principal, 0) + n
    ids: list[str] = []
    for r in sorted(cands, key=lambda r: (r.due_at is None, r.due_at, r.created_at, r.sequence)):
        if len(ids) >= limit:
            break
        if busy.get(r.principal, 0) >= per_token:
            continue
        busy[r.principal] = busy.get(r.principal, 0) + 1
        ids.append(r.id)
    if not ids:
        return []
    # Taken again, locked, with the lease re-checked: another worker may have leased one of
    # them since it was read.
    q = _joined().where(
        D.id.in_(ids),
        D.status == DeliveryStatus.pending,
        or_(D.claimed_until.is_(None), D.claimed_until < now),
    )
    if rows.is_postgres(s):
        q = q.with_for_update(skip_locked=True, of=D)
    rank = {i: n for n, i in enumerate(ids)}
    return sorted(_triples(s, q), key=lambda j: rank[j[0].id])


def followers_due_at(s: Session, d: WebhookDelivery, at: datetime, *, later: bool) -> None:
    """Give the pending deliveries of the same endpoint and resource that come after `d`
    (its events of higher sequence) the due time `at`: at least `at` when `later` (they cannot
    go before `d` retries, so they wait out of the claim's range instead of being read and
    passed over in every claim), at most `at` otherwise (`d` is done: they go now)."""
    D, E = WebhookDelivery, OutboxEvent
    ev = s.get(OutboxEvent, d.event_id)
    if ev is None:
        return
    after = select(E.id).where(
        E.resource_type == ev.resource_type,
        E.resource_id == ev.resource_id,
        E.sequence > ev.sequence,
    )
    moved = D.next_attempt_at < at if later else D.next_attempt_at > at
    s.execute(
        update(D)
        .where(
            D.endpoint_id == d.endpoint_id,
            D.status == DeliveryStatus.pending,
            D.event_id.in_(after),
            moved,
        )
        .values(next_attempt_at=at)
        .execution_options(synchronize_session=False)
    )


def unblock_followers(s: Session, now: datetime) -> int:
    """Bring forward to `now` the never-tried pending deliveries due later only because an
    earlier event of their resource was pending for their endpoint when they were written,
    where nothing earlier is pending any more. `followers_due_at(later=False)` does this when
    that delivery ends, but cannot see a follower whose transaction had not committed yet:
    without this pass it waited out its predecessor's whole backoff (hours)."""
    D, this = WebhookDelivery, aliased(OutboxEvent)
    earlier_pending = _earlier_pending(this, this.id == D.event_id)
    result = s.execute(
        update(D)
        .where(
            D.status == DeliveryStatus.pending,
            D.attempts == 0,
            D.next_attempt_at > now,
            ~earlier_pending,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delivery_locked(s: Session, delivery_id: str) -> WebhookDelivery | None:
    return rows.get_locked(s, WebhookDelivery, delivery_id)


def delivery(s: Session, delivery_id: str) -> WebhookDelivery | None:
    return s.get(WebhookDelivery, delivery_id)


def event(s: Session, event_id: str) -> OutboxEvent | None:
    return s.get(OutboxEvent, event_id)


def count_dead_letters(s: Session) -> int:
    return (
        s.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.status == DeliveryStatus.dead_letter)
        )
        or 0
    )


def newest(s: Session, status: str | None, limit: int) -> list[Joined]:
    """Deliveries newest first, optionally in one status."""
    q = _joined().order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)
    if status:
        q = q.where(WebhookDelivery.status == status)
    return _triples(s, q)


def of_event(s: Session, event_id: str) -> list[Joined]:
    return _triples(
        s,
        _joined()
        .where(WebhookDelivery.event_id == event_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id),
    )


def later_sent(s: Session, endpoint_id: str, ev: OutboxEvent) -> str | None:
    """The id of a later event about `ev`'s resource that the endpoint was sent, has
    waiting, or dead-lettered: one a replay of `ev` would arrive after, as if it were the
    resource's state, or that carries a newer state the receiver never had (replay that one).
    Only a delivery cancelled with its endpoint does not count."""
    return s.scalar(
        select(OutboxEvent.id)
        .join(WebhookDelivery, WebhookDelivery.event_id == OutboxEvent.id)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status != DeliveryStatus.cancelled,
            OutboxEvent.resource_type == ev.resource_type,
            OutboxEvent.resource_id == ev.resource_id,
            OutboxEvent.sequence > ev.sequence,
        )
        .order_by(OutboxEvent.sequence.desc())
        .limit(1)
    )


def dead_letters_locked(s: Session, event_id: str, delivery_id: str | None) -> list[Joined]:
    """The event's dead-lettered deliveries (only `delivery_id` when given), their rows and
    their endpoints' rows locked FOR UPDATE on PostgreSQL, after the audit chain's lock: the
    order `endpoint_locked` takes them in. An endpoint read here is as committed, so a delete
    either committed before (the endpoint reads inactive) or waits for this transaction (and
    then cancels what it put back in the queue)."""
    audit_repo.lock_chain(s)
    q = _joined().where(
        WebhookDelivery.event_id == event_id, WebhookDelivery.status == DeliveryStatus.dead_letter
    )
    if delivery_id is not None:
        q = q.where(WebhookDelivery.id == delivery_id)
    if rows.is_postgres(s):
        q = q.with_for_update(of=[WebhookDelivery, WebhookEndpoint])
    return _triples(s, q.execution_options(populate_existing=True))
