"""A webhook endpoint's URL spelled another way in its query is the same endpoint (RFC 3986
6.2.2.1-2): `?t=a` and `?t=%61`, `%3b` and `%3B`. The duplicate check read the query byte for
byte, so one token got two endpoints for one receiver, and every event of alice's reached it
twice. README, 409 `webhook_endpoint_exists`: "however spelled (..., an escaped unreserved
character, ...)".
"""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.test_webhooks import api  # noqa: F401

TYPES = {"event_types": ["proof.verified"]}
BASE = "http://127.0.0.1:9000/h"


@pytest.mark.parametrize(
    "first,same",
    [
        (BASE + "?t=a", BASE + "?t=%61"),  # an escaped unreserved character
        (BASE + "?t=~", BASE + "?t=%7E"),
        (BASE + "?t=x%3Bv", BASE + "?t=x%3bv"),  # an escape's hex digits in either case
    ],
)
def test_another_spelling_of_an_endpoints_query_is_the_same_endpoint(
    api,  # noqa: F811
    first,
    same,
):
    r = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": first, **TYPES})
    assert r.status_code == 201, r.text
    r = api.post("/v1/webhook-endpoints", headers=auth(), json={"url": same, **TYPES})
    assert r.status_code == 409, (same, r.status_code, r.text)
    assert r.json()["error"]["code"] == "webhook_endpoint_exists"
    listed = api.get("/v1/webhook-endpoints", headers=auth()).json()
    items = listed["data"] if isinstance(listed, dict) and "data" in listed else listed
    assert len(items) == 1, items
