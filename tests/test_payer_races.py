"""Sessions waiting for one payer's payment of one amount, opened at once by two tenants
through two API servers with engines (and connection pools) of their own, as two API processes
are: one is opened, every other is refused `payer_in_use`, so no transfer from that payer can
back two open sessions and be held by whoever submits it first. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bursts import codes, post_at_once
from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN
from tests.helpers import cassette_engine
from tests.live_server import LiveServer
from tests.test_e2e_http import EVM_CLOCK, EVM_USDC_AMOUNT, EVM_USDC_FROM, EVM_USDC_TO
from verifier.core.engine import Engine
from verifier.http.api import create_app

BURST = 60


@pytest.fixture
def servers(db_url) -> Iterator[list[str]]:
    engines: list[Engine] = [cassette_engine(db_url, clock=EVM_CLOCK) for _ in range(2)]
    try:
        with LiveServer(create_app(engines[0])) as one, LiveServer(create_app(engines[1])) as two:
            yield [one.url, two.url]
    finally:
        for e in engines:
            e.db.dispose()


def _session(owner: str, amount: int = EVM_USDC_AMOUNT) -> dict[str, object]:
    return {
        "owner_id": owner,
        "rail_id": "evm_usdc",
        "access_product_id": "pro",
        "amount": amount,
        "recipient": EVM_USDC_TO,
        "payer": EVM_USDC_FROM,
    }


def test_one_payer_and_amount_opened_at_once_by_two_tenants_is_opened_once(servers):
    posts = [
        ("/v1/payment-sessions", token, _session(owner))
        for _ in range(BURST // 2)
        for token, owner in ((SERVICE_TOKEN, "alice"), (OTHER_SERVICE_TOKEN, "bob"))
    ]
    answers = post_at_once(servers, posts)
    assert codes(answers) == {201: 1, (422, "payer_in_use"): BURST - 1}
    refused = [r.json()["error"] for r in answers if r.status_code == 422]
    assert {e["field"] for e in refused} == {"payer"}
    # Nothing about the open one (its owner, its id) is in a refusal.
    (opened,) = [r.json() for r in answers if r.status_code == 201]
    assert not [e for e in refused if opened["id"] in str(e) or opened["owner_id"] in str(e)]


def test_other_amounts_opened_at_once_are_all_opened(servers):
    posts = [
        ("/v1/payment-sessions", SERVICE_TOKEN, _session("alice", EVM_USDC_AMOUNT + i))
        for i in range(BURST)
    ]
    assert codes(post_at_once(servers, posts)) == {201: BURST}
