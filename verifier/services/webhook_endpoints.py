"""Webhook endpoints of a service token: create (the signing secret shown once), list,
rotate the secret (the new one shown once), delete. Moved out of verifier/http, which may not
reach the database (tests/test_architecture.py); the delivery side lives in
verifier.services.webhooks.

Secrets are Standard Webhooks secrets (whsec_ + base64 of 32 random bytes). An endpoint whose
stored secret predates that format gets no deliveries until its owner rotates the secret.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from sqlalchemy.orm import Session

from verifier.core.engine import Engine
from verifier.core.errors import BadInput, Conflict, NotFound
from verifier.core.timeutil import iso
from verifier.services import audit, webhooks
from verifier.services.principals import still_held
from verifier.services.views import View
from verifier.storage.repo import webhooks as webhooks_repo
from verifier.storage.webhook_models import EventType, WebhookEndpoint

MAX_ENDPOINTS_PER_TOKEN = 16  # bounds the fan-out one token can cause per event


def endpoint_view(ep: WebhookEndpoint) -> dict[str, Any]:
    # SECURITY: no secret here; only create_endpoint adds it, once.
    return {
        "id": ep.id,
        "url": ep.url,
        "event_types": list(ep.event_types),
        "owners": list(ep.owners),
        "active": ep.active,
        "created_at": iso(ep.created_at),
    }


def _event_types(given: list[str]) -> list[str]:
    known = {e.value for e in EventType}
    unknown = [t for t in given if t not in known]
    if unknown:
        # ascii(): the refused values are echoed escaped, whatever text they hold.
        raise BadInput(
            "invalid_event_type",
            f"event_types: unknown "
            f"{', '.join(ascii(t) for t in unknown[:5])}; "
            f"known: {', '.join(sorted(known))}",
            field="event_types",
        )
    return sorted(set(given), key=[e.value for e in EventType].index)


def create_endpoint(
    engine: Engine, principal: str, owners: list[str], url: str, event_types: list[str]
) -> dict[str, Any]:
    problem = webhooks.url_problem(
        url, engine.settings.webhook_allow_any_host, engine.settings.webhook_private_networks
    )
    if problem:
        raise BadInput("invalid_url", f"url: {problem}", field="url")
    types = _event_types(event_types)
    now = engine.now()
    with engine.db.tx() as s:
        # SECURITY: checked and created under its owners' locks: a burst of creates otherwise
        # stored duplicates (each event delivered once per copy) and went past the limit.
        webhooks_repo.lock_endpoints_of(s, owners)
        # Every endpoint already receiving events of one of the token's owners, whichever
        # token made it: a second one at the same URL would deliver those events twice (and
        # a token acting for both endpoints' owners would manage two copies).
        key = webhooks.endpoint_key(url)
        same = [
            ep
            for ep in webhooks_repo.active_endpoints_sharing(s, owners)
            if webhooks.endpoint_key(ep.url) == key
        ]
        for ep in [ep for ep in same if not still_held(engine.settings.service_tokens, ep.owners)]:
            # No token acts any more for every owner it was made for (the deployment moved
            # one to another token): nobody can list or delete it and it receives nothing,
            # so it must not keep its URL from the tokens that now act for those owners. It
            # is retired, so it never delivers twice with the new one should the old
            # configuration come back.
            cancelled = webhooks_repo.deactivate_endpoint(s, ep, now, "endpoint replaced")
            audit.append(
                s,
                now,
                audit.Operator(principal),
                "webhook_endpoint.retired",
                "webhook_endpoint",
                ep.id,
                {"cancelled_deliveries": cancelled, "reason": "no token holds its owners"},
            )
            same.remove(ep)
        if same:
            # A retried create must not double every delivery; delete to rotate the secret.
            raise Conflict(
                "webhook_endpoint_exists",
                "url: an active endpoint for this URL already receives events of an owner "
                "this token acts for",
                field="url",
            )
        mine = webhooks_repo.active_endpoints_within(s, owners)
        if len(mine) >= MAX_ENDPOINTS_PER_TOKEN:
            raise Conflict(
                "webhook_endpoint_limit",
                f"at most {MAX_ENDPOINTS_PER_TOKEN} active endpoints per token",
            )
        ep = webhooks_repo.add_endpoint(
            s,
            principal=principal,
            owners=sorted(owners),
            url=url,
            event_types=types,
            secret=webhooks.new_secret(),
            created_at=now,
        )
        audit.append(
            s,
            now,
            audit.Operator(principal),
            "webhook_endpoint.created",
            "webhook_endpoint",
            ep.id,
            {"url": webhooks.redact_url(url), "event_types": types},
        )
        view = {**endpoint_view(ep), "secret": ep.secret}
        # An Idempotency-Key's completion commits with the endpoint: a process that dies
        # after this commit leaves no claim in progress, and a retry gets the secret again.
        engine.db.finish(s, view)
        return view


def list_endpoints(engine: Engine, owners: list[str]) -> list[dict[str, Any]]:
    """The active endpoints the token manages: those made for owners it all acts for, so a
    token that gains owners keeps its endpoints (and one acting for another token's owners
    manages that token's endpoints too: it may do all they may)."""
    with engine.db.tx() as s:
        return [endpoint_view(ep) for ep in webhooks_repo.active_endpoints_within(s, owners)]


def _own_active_endpoint(
    engine: Engine, s: Session, owners: list[str], endpoint_id: str
) -> WebhookEndpoint:
    """An active endpoint the token manages (made for owners it all acts for), locked (after
    the audit chain's lock, which the caller's audit append holds next anyway:
    `webhooks_repo.endpoint_locked`); NotFound otherwise."""
    missing = NotFound("webhook_endpoint_not_found", f"no webhook endpoint {endpoint_id!r}")
    if not webhooks.well_formed_id(endpoint_id, "whe"):
        raise missing
    # Whose it is, before any lock: an id that is not this token's answers without waiting
    # for (or holding) the audit chain's lock, which every tenant's state changes share.
    made_for = webhooks_repo.endpoint_owners(s, endpoint_id)
    if made_for is not None and not set(made_for) <= set(owners):
        # SECURITY: an endpoint made for an owner this token does not act for answers exactly
        # like a missing one.
        engine.metrics.inc("owner_isolation_denials_total", reason="webhook_endpoint")
        raise missing
    ep = webhooks_repo.endpoint_locked(s, endpoint_id) if made_for is not None else None
    # SECURITY: checked again under the lock (an endpoint's owners never change, but a
    # delete may have committed meanwhile).
    if ep is None or not set(ep.owners) <= set(owners) or not ep.active:
        raise missing
    return ep


def rotate_secret(
    engine: Engine, principal: str, owners: list[str], endpoint_id: str
) -> dict[str, Any]:
    """A new signing secret for the token's endpoint, shown once; the old one stops signing at
    once (deliveries already queued go out under the new one). Also how an endpoint whose
    secret predates Standard Webhooks gets deliveries again."""
    now = engine.now()
    with engine.db.tx() as s:
        ep = _own_active_endpoint(engine, s, owners, endpoint_id)
        legacy = webhooks.secret_problem(ep.secret) is not None
        webhooks_repo.set_secret(s, ep, webhooks.new_secret())
        audit.append(
            s,
            now,
            audit.Operator(principal),
            "webhook_endpoint.secret_rotated",
            "webhook_endpoint",
            ep.id,
            {"replaced_legacy_secret": legacy},
        )
        view = {**endpoint_view(ep), "secret": ep.secret}
        engine.db.finish(s, view)  # as create_endpoint: the new secret is never lost
        return view


def delete_endpoint(
    engine: Engine, principal: str, owners: list[str], endpoint_id: str
) -> dict[str, Any]:
    now = engine.now()
    with engine.db.tx() as s:
        ep = _own_active_endpoint(engine, s, owners, endpoint_id)
        cancelled = webhooks_repo.deactivate_endpoint(s, ep, now, "endpoint deleted")
        audit.append(
            s,
            now,
            audit.Operator(principal),
            "webhook_endpoint.deleted",
            "webhook_endpoint",
            ep.id,
            {"cancelled_deliveries": cancelled},
        )
        return {**endpoint_view(ep), "cancelled_deliveries": cancelled}


# What an Idempotency-Key keeps of a create's or rotate's answer in place of the secret.
SECRET_DIGEST = "secret_sha256"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def kept_answer(body: View) -> View:
    """An answer as an Idempotency-Key stores it: the secret's digest in place of the secret.
    SECURITY: a signing secret is never kept in a claim, which is kept for good."""
    if "secret" not in body:
        return body
    kept = {k: v for k, v in body.items() if k != "secret"}
    return {**kept, SECRET_DIGEST: _digest(str(body["secret"]))}


def replayed_answer(
    engine: Engine, owners: list[str], stored: tuple[int, View | None]
) -> tuple[int, View | None]:
    """A stored create's or rotate's answer given again, with the endpoint's secret as it is
    now, provided the endpoint is still active and its secret the one first answered: a
    rotated-away secret signs nothing, and a deleted endpoint receives nothing."""
    status, body = stored
    # A claim written with the secret in it is judged by its digest alike.
    body = kept_answer(body) if body is not None else None
    if body is None or SECRET_DIGEST not in body:
        return stored  # a refusal's answer: no secret in it
    with engine.db.read() as s:
        ep = webhooks_repo.endpoint(s, str(body.get("id")))
        current = ep.secret if ep is not None and ep.active else None
        # SECURITY: only to a token that manages the endpoint now (owner isolation).
        if ep is not None and not set(ep.owners) <= set(owners):
            current = None
    if current is None or not hmac.compare_digest(_digest(current), str(body[SECRET_DIGEST])):
        raise Conflict(
            "idempotency_answer_stale",
            "the endpoint's secret changed since (rotated or deleted): rotate the secret",
            field="Idempotency-Key",
        )
    kept = {k: v for k, v in body.items() if k != SECRET_DIGEST}
    return status, {**kept, "secret": current}
