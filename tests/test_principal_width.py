"""A service token may act for many owners: its principal (which keys idempotency claims and
rate limits) still fits the stored key, on PostgreSQL too, where a too-long key is an error."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.conftest import make_settings
from tests.fake_rail import catalog_with_fake
from verifier.core.config import describe_error
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.http.deps import MAX_PRINCIPAL, principal_name
from verifier.storage.models import IdempotencyClaim

OWNERS = [f"tenant-{i:03d}-with-a-long-descriptive-owner-name" for i in range(40)]
WIDE = "wide-token"


def test_principal_of_many_owners_fits_and_stays_distinct():
    name = principal_name(OWNERS)
    assert len(name) <= MAX_PRINCIPAL and name.startswith("svc:sha256:")
    assert principal_name(list(reversed(OWNERS))) == name  # order does not matter
    assert principal_name(OWNERS[:-1]) != name
    assert principal_name(["alice", "bob"]) == "svc:alice,bob"  # short lists stay readable


def test_a_token_for_many_owners_gets_idempotent_sessions(db_url):
    settings = make_settings(db_url, service_tokens={WIDE: OWNERS})
    engine = Engine(settings, catalog=catalog_with_fake())
    engine.ensure_rail_states()
    try:
        with TestClient(create_app(engine), raise_server_exceptions=False) as c:
            body = {
                "owner_id": OWNERS[-1],
                "rail_id": "fake_live",
                "access_product_id": "pro",
                "amount": 1500000,
                "recipient": "fatreasury",
            }
            headers = {"Authorization": f"Bearer {WIDE}", "Idempotency-Key": "k-1"}
            first = c.post("/v1/payment-sessions", headers=headers, json=body)
            assert first.status_code == 201, first.text
            again = c.post("/v1/payment-sessions", headers=headers, json=body)
            assert again.status_code in (200, 201) and again.json()["id"] == first.json()["id"]
        with engine.db.tx() as s:
            (claim,) = s.query(IdempotencyClaim).all()
            assert claim.principal == principal_name(OWNERS)
    finally:
        engine.db.dispose()


def test_no_owner_id_can_take_the_name_of_a_token_for_many_owners():
    # `svc:sha256:<hex>` names a long owner list; a token for the one owner `sha256:<hex>`
    # would share its idempotency claims, rate limits and webhook endpoints.
    wide = principal_name(OWNERS)
    lookalike = wide.removeprefix("svc:")
    with pytest.raises(ValidationError, match="must not begin with 'sha256:'") as e:
        make_settings("sqlite://", service_tokens={WIDE: OWNERS, "evil": [lookalike]})
    shown = " ".join(describe_error(e.value))  # what `railproof serve` prints
    assert "RAILPROOF_SERVICE_TOKENS" in shown and "sha256:" in shown
    assert WIDE not in shown and "evil" not in shown  # never a token
    with pytest.raises(ValidationError, match="must not begin with"):
        make_settings("sqlite://", service_tokens={"evil": ["SHA256:" + "0" * 64]})
    # Any other owner id with a colon is still one a token may act for.
    assert make_settings("sqlite://", service_tokens={"t": ["acme:eu"]}).service_tokens
