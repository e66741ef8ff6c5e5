"""Idempotency-Key over HTTP: a key is one header line without a comma."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import auth
from tests.helpers import FAKE_SESSION
from verifier.storage.models import IdempotencyClaim, PaymentSession


def _count(engine, model) -> int:
    with engine.db.tx() as s:
        return s.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("path,body", [("/v1/payment-sessions", FAKE_SESSION)])
def test_two_idempotency_key_lines_are_refused_not_joined(client, engine, path, body):
    """Idempotency-Key is a singleton field. Sent twice (a client's default header and a
    per-call one, or a proxy adding its own), the lines are not joined into one key "a, b"
    that a retry carrying only "a" would not match: the request is refused, nothing runs."""
    h = httpx.Headers([*auth().items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    r = client.post(path, headers=h, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert _count(engine, IdempotencyClaim) == 0
    assert _count(engine, PaymentSession) == 0


@pytest.mark.parametrize("key", ["a, b", "a,b", ","])
def test_a_key_holding_a_comma_is_refused(client, engine, key):
    """What a proxy folding two lines into one would send; no key of a client holds one."""
    r = client.post(
        "/v1/payment-sessions", headers={**auth(), "Idempotency-Key": key}, json=FAKE_SESSION
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert "no comma" in err["message"]
    assert _count(engine, PaymentSession) == 0
