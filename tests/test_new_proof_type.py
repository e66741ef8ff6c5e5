"""Adding a rail with a proof type the engine has never seen touches only its module
(tests/voucher_rail.py) and the catalog (its fragment): the engine opens sessions on it,
accepts and verifies its proofs, fingerprints them like any other, and lists its contract."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

import rails
from rails.base import fingerprint
from registry.catalog import Catalog, CatalogError
from registry.contracts import proof_contracts
from tests.conftest import CLOCK, STAFF_TOKEN, auth, make_settings
from tests.fake_rail import catalog_with_fake
from tests.voucher_rail import CATALOG_FRAGMENT, VoucherAdapter, VoucherIssuer
from verifier.core.engine import Engine
from verifier.http.api import create_app


def voucher_catalog() -> Catalog:
    # The shipped catalog (plus the fake rails the suite uses) and the new rail's fragment,
    # concatenated: nothing in the shipped file or in the engine changes.
    return catalog_with_fake(CATALOG_FRAGMENT)


@pytest.fixture
def issuer() -> VoucherIssuer:
    return VoucherIssuer()


@pytest.fixture
def voucher_client(db_url: str, issuer: VoucherIssuer) -> Iterator[tuple[Engine, TestClient]]:
    e = Engine(make_settings(db_url), catalog=voucher_catalog())
    e.chains.set_transport("vouchernet", issuer)
    e.ensure_rail_states()
    with TestClient(create_app(e), raise_server_exceptions=False) as c:
        yield e, c
    e.db.dispose()


def test_the_catalog_alone_registers_the_family_and_its_network_family() -> None:
    cat = voucher_catalog()
    assert rails.adapter_class("voucher", cat) is VoucherAdapter
    assert cat.network_family("voucher") == "fake" == VoucherAdapter.network_family
    rail = cat.resolve("voucher_live")
    assert (rail.network, rail.proof_types) == ("vouchernet", ("voucher_code",))
    assert rails.reads_chain("voucher_live", cat) is True
    assert rails.reads_chain("x402", cat) is False


def test_a_catalog_that_contradicts_the_adapter_is_refused() -> None:
    cat = catalog_with_fake(
        CATALOG_FRAGMENT.replace('network_family = "fake"', 'network_family = "evm"')
    )
    with pytest.raises(CatalogError, match="declares 'fake'"):
        rails.adapter_class("voucher", cat)


def test_its_contract_lists_the_new_proof_type_with_the_adapters_fields() -> None:
    cat = voucher_catalog()
    (contract,) = proof_contracts(cat, "voucher_live", proof_fields=rails.proof_fields(cat))
    assert contract["accepted_proof_types"] == ["voucher_code"]
    assert contract["required_fields"] == {
        "voucher_code": ["voucher code (VCH-XXXX-XXXX, case-insensitive)"]
    }
    assert contract["family"] == "voucher" and contract["receipt_mapping"] == "automatic"


def test_the_engine_accepts_verifies_fingerprints_and_lists_it(
    voucher_client: tuple[Engine, TestClient], issuer: VoucherIssuer
) -> None:
    _, client = voucher_client
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "voucher_live",
            "access_product_id": "pro",
            "amount": 2500,
            "recipient": "fashop",
        },
    )
    assert r.status_code == 201, r.text
    session = r.json()
    issuer.redeemed["VCH-AB12-CD34"] = {
        "to": "fashop",
        "amount": 2500,
        "asset": "vusd",
        "time": int((CLOCK + timedelta(seconds=5)).timestamp()),
    }

    r = client.post(
        "/v1/proofs",
        headers=auth(),
        json={"session_id": session["id"], "proof": "vch-ab12-cd34", "proof_type": "voucher_code"},
    )
    assert r.status_code == 201, r.text
    proof = r.json()
    assert proof["status"] == "verified", proof
    assert proof["fingerprint"] == fingerprint(
        "voucher", "vouchernet", "voucher_code", "VCH-AB12-CD34"
    )

    # The same code again is a replay of the same proof, not a second payment.
    r = client.post(
        "/v1/proofs",
        headers=auth(),
        json={"session_id": session["id"], "proof": "VCH-AB12-CD34", "proof_type": "voucher_code"},
    )
    assert r.status_code in (200, 201) and r.json()["id"] == proof["id"], r.text

    r = client.get(
        "/v1/admin/proof-contracts", headers=auth(STAFF_TOKEN), params={"rail_id": "voucher_live"}
    )
    assert r.status_code == 200, r.text
    (contract,) = r.json()
    assert contract["accepted_proof_types"] == ["voucher_code"]


def test_a_malformed_voucher_is_refused_by_its_own_adapter(
    voucher_client: tuple[Engine, TestClient],
) -> None:
    _, client = voucher_client
    r = client.post(
        "/v1/payment-sessions",
        headers=auth(),
        json={
            "owner_id": "alice",
            "rail_id": "voucher_live",
            "access_product_id": "pro",
            "amount": 2500,
            "recipient": "fashop",
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/v1/proofs",
        headers=auth(),
        json={"session_id": r.json()["id"], "proof": "VCH-nope", "proof_type": "voucher_code"},
    )
    assert r.status_code == 422 and "voucher code" in r.text, r.text
