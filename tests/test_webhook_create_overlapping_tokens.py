"""Create's duplicate check reads every endpoint the token manages (made for owners it all acts
for, whichever token made them), so it must be serialized with every create that can add to
that set: one lock per owner, not per token. Two creates of the same URL at once, one
by a token acting for alice and one by a token acting for alice and alice-2 (or the same
token during a rolling restart that added alice-2 to it), both pass the check: the second
token then manages two endpoints for one URL and alice's events reach that receiver twice.
Whichever create comes first, the second is refused: an endpoint made for alice and alice-2 already
receives alice's events, so another one for alice at its URL would deliver them twice.
README: 409 webhook_endpoint_exists, "an active endpoint for this URL already receives events of
an owner the token acts for".
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
from tests.test_webhook_endpoint_races import _in_thread
from verifier.core.engine import Engine
from verifier.core.errors import Conflict
from verifier.services import webhook_endpoints
from verifier.services.principals import principal_name
from verifier.storage.repo import audit as audit_repo
from verifier.storage.webhook_models import WebhookEndpoint

URL = "http://127.0.0.1:9/dup"
OLD = ["alice"]  # the token before a restart, or a second token for alice
NEW = ["alice", "alice-2"]  # the token after it gained alice-2


def _race(engine, url_old: str, url_new: str) -> dict[str, object]:
    """A create by each token at once, both queued behind another appender's chain lock."""
    held, release = threading.Event(), threading.Event()

    def other_appender() -> None:  # any tenant's state change holding the chain a moment
        with engine.db.tx() as s:
            audit_repo.lock_chain(s)
            held.set()
            release.wait(10)

    def create(owners: list[str], url: str):
        return webhook_endpoints.create_endpoint(
            engine, principal_name(owners), owners, url, ["proof.verified"]
        )

    out: dict[str, object] = {}
    threads = [_in_thread(out, "appender", other_appender)]
    assert held.wait(5)
    threads.append(_in_thread(out, "old", lambda: create(OLD, url_old)))
    threads.append(_in_thread(out, "new", lambda: create(NEW, url_new)))
    time.sleep(0.8)  # both have gone as far as they can: queued for the chain's lock
    release.set()
    for t in threads:
        t.join(15)
    return out


def _engine(db_url: str) -> Engine:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL: SQLite runs one writer at a time")
    return Engine(
        make_settings(db_url, service_tokens={"t-old": OLD, "t-new": NEW}),
        catalog=catalog_with_fake(),
    )


def test_two_creates_of_one_url_by_overlapping_tokens_store_it_once(db_url):
    engine = _engine(db_url)
    try:
        out = _race(engine, URL, URL)
        made = [k for k in ("old", "new") if isinstance(out[k], dict)]
        refused = [k for k in ("old", "new") if isinstance(out[k], Conflict)]
        # The token acting for alice and alice-2 manages both: one URL, one endpoint.
        managed = webhook_endpoints.list_endpoints(engine, NEW)
        assert [e["url"] for e in managed] == [URL], (out, managed)
        assert len(made) == 1 and len(refused) == 1, out
        with engine.db.tx() as s:
            n = len(s.scalars(select(WebhookEndpoint).where(WebhookEndpoint.active)).all())
        assert n == 1
    finally:
        engine.db.dispose()


def _create(engine, owners: list[str], url: str):
    return webhook_endpoints.create_endpoint(
        engine, principal_name(owners), owners, url, ["proof.verified"]
    )


@pytest.mark.parametrize("first,second", [(OLD, NEW), (NEW, OLD), (["alice-2"], NEW)])
def test_a_url_already_receiving_an_owners_events_is_refused_in_either_order(db_url, first, second):
    engine = Engine(make_settings(db_url), catalog=catalog_with_fake())
    try:
        made = _create(engine, first, URL)
        with pytest.raises(Conflict) as refused:
            _create(engine, second, URL)
        assert refused.value.code == "webhook_endpoint_exists"
        assert refused.value.field == "url"
        for owners in (first, second, NEW):
            got = [e["id"] for e in webhook_endpoints.list_endpoints(engine, owners)]
            assert got == ([made["id"]] if set(first) <= set(owners) else [])
    finally:
        engine.db.dispose()


def test_owners_apart_may_each_send_to_one_url(db_url):
    # bob's endpoint at the URL carries none of alice's events: no delivery is doubled.
    engine = Engine(make_settings(db_url), catalog=catalog_with_fake())
    try:
        bob = _create(engine, ["bob"], URL)
        alice = _create(engine, OLD, URL)
        assert bob["id"] != alice["id"]
        both = webhook_endpoints.list_endpoints(engine, ["alice", "bob"])
        assert sorted(e["id"] for e in both) == sorted([bob["id"], alice["id"]])
    finally:
        engine.db.dispose()
