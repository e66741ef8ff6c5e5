"""A node that quotes the API key as written in the URL's query never puts it in a detail.

Query values were taken only as `parse_qsl` decodes them: a `+` becomes a space and `%2b` a
`+` (re-quoted as `%2B`). A key holding `+` (base64 keys do), or written percent-encoded in
lower case, echoed by the provider exactly as it arrived ("invalid api key K"), was in none of
the forms replaced and reached the proof's detail, which the tenant reads. Each query value is
now also taken as written."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from rails.codes import FailureCode
from rails.transport.failover import scrub
from tests import loopback_http as loopback
from tests.test_rpc_key_echo import CASES, echoing_handler, verdict_through

KEYS = ("Prov+Key0123456789abcdef", "Prov%2bKey0123456789abcdef")


def _as_written(path: str) -> str:
    """The api-key value exactly as it arrived (no decoding)."""
    for part in urlsplit(path).query.split("&"):
        name, _, value = part.partition("=")
        if name == "api-key":
            return value
    return "?"


@pytest.fixture
def echoing_node() -> Iterator[str]:
    Handler = echoing_handler(_as_written)  # noqa: N806
    with loopback.serving(Handler) as base:
        yield base


@pytest.mark.parametrize("key", KEYS)
def test_scrub_removes_a_query_key_as_written(key):
    url = f"https://rpc.example/v1?api-key={key}"
    assert key not in scrub(f"invalid api key {key}", [url])


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("rail_id", list(CASES))
def test_a_node_echoing_the_key_as_written_never_puts_it_in_a_verdict(echoing_node, rail_id, key):
    v = verdict_through(f"{echoing_node}/rpc?api-key={key}", rail_id)
    assert v.code is FailureCode.rpc_unavailable, v
    assert key not in v.detail, f"the provider's key reached the tenant: {v.detail}"
