"""Our x402 verdicts against the official x402 SDK's facilitator verify, run offline with a
stub signer (tests/x402_oracle.py) at the same pinned clock.

Agreement is on valid / not valid. Where the two differ by design, a test says so and why:
- a high-s (malleable) signature: the SDK's ecrecover accepts it and would only learn from the
  on-chain simulation that FiatToken's ECRecover refuses it; we refuse it offline;
- the last 6 seconds before validBefore: the SDK keeps a settlement buffer, the contract (and
  we) accept until validBefore.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rails.base import SessionShape, Status, Terms
from rails.x402 import AUTHORIZATION_CANCELED_TOPIC, X402Adapter
from registry.catalog import RailOverrides, load_catalog
from tests import x402_oracle as oracle

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "x402"
SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
OTHER = "0x000000000000000000000000000000000000bEEF"
INSIDE = 1740672100
VALID_AFTER, VALID_BEFORE = 1740672089, 1740672154

V1 = json.loads((FIXTURES / "x402_base_sepolia_payload_v1.json").read_text())
V1_REQ = json.loads((FIXTURES / "x402_base_sepolia_requirements_v1.json").read_text())["accepts"][0]
V2 = json.loads((FIXTURES / "x402_base_sepolia_payload_v2.json").read_text())
V2_REQ = V2["accepted"]
SIGNED = json.loads((FIXTURES / "x402_base_signed.json").read_text())


def adapter(network: str) -> X402Adapter:
    return X402Adapter(load_catalog().resolve("x402", RailOverrides(network=network)))


@pytest.fixture(scope="module")
def facilitator():
    return oracle.make_facilitator(oracle.StubSigner(contracts=[SEPOLIA_USDC, BASE_USDC]))


def pin(monkeypatch, now: int) -> None:
    """The SDK reads time.time() in its facilitator modules; pin it there only."""
    for module in oracle.SDK_CLOCK_MODULES:
        monkeypatch.setattr(
            module, "time", type("Clock", (), {"time": staticmethod(lambda: float(now))})
        )


def ours(network: str, payload: dict[str, Any], requirements: dict[str, Any], now: int) -> Any:
    amount = int(requirements.get("amount") or requirements["maxAmountRequired"])
    terms = Terms(
        recipient=requirements["payTo"],
        amount=amount,
        asset=requirements["asset"],
        now=datetime.fromtimestamp(now, UTC),
    )
    return adapter(network).verify(json.dumps(payload), terms, _NoChain())


class _NoChain:
    source = "cassette"

    def call(self, method: str, params: list[Any]) -> Any:
        raise AssertionError(method)


def tampered(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    return out


def flip_signature_byte(doc: dict[str, Any], index: int) -> dict[str, Any]:
    sig = bytearray.fromhex(doc["payload"]["signature"][2:])
    sig[index] ^= 0x01
    return tampered(doc, "payload.signature", "0x" + sig.hex())


def variants(doc: dict[str, Any], other_network: str) -> dict[str, dict[str, Any]]:
    """The valid payload and each tampered copy the SDK is asked about."""
    network_path = "network" if doc["x402Version"] == 1 else "accepted.network"
    auth = "payload.authorization."
    return {
        "valid": doc,
        "value": tampered(
            doc, auth + "value", str(int(doc["payload"]["authorization"]["value"]) + 10000)
        ),
        "to": tampered(doc, auth + "to", OTHER),
        "network": tampered(doc, network_path, other_network),
        "valid_before_later": tampered(
            doc,
            auth + "validBefore",
            str(int(doc["payload"]["authorization"]["validBefore"]) + 600),
        ),
        "valid_before_earlier": tampered(
            doc, auth + "validBefore", str(int(doc["payload"]["authorization"]["validAfter"]) + 1)
        ),
        "sig_byte_0": flip_signature_byte(doc, 0),
        "sig_byte_40": flip_signature_byte(doc, 40),
        "sig_v": flip_signature_byte(doc, 64),
        "nonce": tampered(doc, auth + "nonce", "0x" + "5a" * 32),
        "from": tampered(doc, auth + "from", OTHER),
    }


SPEC_CASES = [
    (f"v{doc['x402Version']}:{name}", doc_variant, req, other)
    for doc, req, other in ((V1, V1_REQ, "base"), (V2, V2_REQ, "eip155:8453"))
    for name, doc_variant in variants(doc, other).items()
]


@pytest.mark.parametrize("case,payload,requirements,_", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_spec_payload_and_tampered_variants_agree_with_the_sdk(
    facilitator, monkeypatch, case, payload, requirements, _
):
    pin(monkeypatch, INSIDE)
    sdk = oracle.sdk_verify(facilitator, payload, requirements)
    mine = ours("base-sepolia", payload, requirements, INSIDE)
    assert (mine.status is Status.verified) == sdk.is_valid, (
        case,
        mine.code,
        mine.detail,
        sdk.invalid_reason,
    )
    assert sdk.is_valid == case.endswith(":valid")


@pytest.mark.parametrize(
    "now", [VALID_AFTER - 1, VALID_AFTER, INSIDE, VALID_BEFORE - 7, VALID_BEFORE, 1900000000]
)
def test_time_window_agrees_with_the_sdk(facilitator, monkeypatch, now):
    pin(monkeypatch, now)
    for doc, req in ((V1, V1_REQ), (V2, V2_REQ)):
        sdk = oracle.sdk_verify(facilitator, doc, req)
        assert (ours("base-sepolia", doc, req, now).status is Status.verified) == sdk.is_valid


def test_sdk_settlement_buffer_is_the_only_window_difference(facilitator, monkeypatch):
    # The SDK refuses authorizations expiring within 6 s (time to settle); the token accepts
    # them until validBefore, and so do we: the session's own expiry is the engine's call.
    now = VALID_BEFORE - 3
    pin(monkeypatch, now)
    sdk = oracle.sdk_verify(facilitator, V1, V1_REQ)
    assert not sdk.is_valid and sdk.invalid_reason.endswith("valid_before")
    assert ours("base-sepolia", V1, V1_REQ, now).status is Status.verified


def _signed_requirements(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc["x402Version"]
    return oracle.requirements_doc(
        version,
        "base" if version == 1 else "eip155:8453",
        SIGNED["asset"],
        SIGNED["pay_to"],
        int(doc["payload"]["authorization"]["value"]),
        "USD Coin",
        "2",
    )


SIGNED_CASES = [
    (f"{entry}:{name}", variant)
    for entry in ("valid_v1", "valid_v2", "valid_v_01", "valid_payer2_20000", "wrong_domain_name")
    for name, variant in variants(
        SIGNED["payloads"][entry]["payload"],
        "base-sepolia"
        if SIGNED["payloads"][entry]["payload"]["x402Version"] == 1
        else "eip155:84532",
    ).items()
]


@pytest.mark.parametrize("case,payload", SIGNED_CASES, ids=[c[0] for c in SIGNED_CASES])
def test_freshly_signed_base_payloads_agree_with_the_sdk(facilitator, monkeypatch, case, payload):
    pin(monkeypatch, SIGNED["now"])
    # requirements come from the untampered payload: what the session asked for
    entry = case.split(":")[0]
    requirements = _signed_requirements(SIGNED["payloads"][entry]["payload"])
    sdk = oracle.sdk_verify(facilitator, payload, requirements)
    mine = ours("base", payload, requirements, SIGNED["now"])
    assert (mine.status is Status.verified) == sdk.is_valid, (
        case,
        mine.code,
        mine.detail,
        sdk.invalid_reason,
    )
    assert sdk.is_valid == (case.endswith(":valid") and entry != "wrong_domain_name")


def test_high_s_twin_is_where_we_are_stricter_than_the_sdk(facilitator, monkeypatch):
    pin(monkeypatch, SIGNED["now"])
    payload = SIGNED["payloads"]["high_s_twin"]["payload"]
    requirements = _signed_requirements(payload)
    assert oracle.sdk_verify(facilitator, payload, requirements).is_valid
    mine = ours("base", payload, requirements, SIGNED["now"])
    assert mine.code == "signature_invalid" and "malleable" in mine.detail


def test_used_nonce_both_refuse(monkeypatch):
    # Offline we cannot know the nonce is used (the engine's records do); on a live chain
    # authorizationState says so, and the token's logs say how (here: cancelled; a used
    # nonce the node cannot show yet is pending, not refused). The SDK learns it from its
    # simulation (v2 maps the revert).
    pin(monkeypatch, INSIDE)
    auth = V2["payload"]["authorization"]
    used = oracle.make_facilitator(
        oracle.StubSigner(contracts=[SEPOLIA_USDC], used_nonces=[(auth["from"], auth["nonce"])])
    )
    sdk = oracle.sdk_verify(used, V2, V2_REQ)
    assert not sdk.is_valid and "nonce" in sdk.invalid_reason

    class UsedChain:
        """authorizationState says used; the payer cancelled it (AuthorizationCanceled)."""

        source = "live"

        def call(self, method, params):
            if method == "eth_chainId":
                return hex(84532)  # Base Sepolia, the rail's
            if method == "eth_call":
                return "0x" + "0" * 63 + "1"
            if method == "eth_blockNumber":
                return hex(200)
            if method == "eth_getBlockByNumber":  # the cancellation's block, final
                return {"number": hex(100), "hash": "0x" + "cd" * 32}
            if params[0]["topics"][0] == AUTHORIZATION_CANCELED_TOPIC:
                return [
                    {
                        "transactionHash": "0x" + "ab" * 32,
                        "blockNumber": hex(100),
                        "blockHash": "0x" + "cd" * 32,
                        "topics": params[0]["topics"],
                    }
                ]
            return []

    terms = Terms(recipient=V1_REQ["payTo"], amount=10000, now=datetime.fromtimestamp(INSIDE, UTC))
    assert adapter("base-sepolia").verify(json.dumps(V2), terms, UsedChain()).code == "nonce_reused"


def test_prepared_requirements_are_what_the_sdk_verifies_against(facilitator, monkeypatch):
    # Our prepare() output, fed to the SDK as v2 PaymentRequirements, accepts the spec's v2
    # payload; with the v1 network name swapped in, the v1 payload too.
    pin(monkeypatch, INSIDE)
    now = datetime.fromtimestamp(INSIDE, UTC)
    session = SessionShape(
        id="s",
        recipient=V1_REQ["payTo"],
        amount=10000,
        reference=None,
        memo=None,
        expires_at=now + timedelta(seconds=60),
        access_product_id="p",
    )
    data = adapter("base-sepolia").prepare(session, now=now).data
    assert oracle.sdk_verify(facilitator, V2, data).is_valid
    v1_data = {**data, "network": "base-sepolia", "resource": "https://example.test/r"}
    assert oracle.sdk_verify(facilitator, V1, v1_data).is_valid


def test_sdk_clock_context_manager_restores_the_clock():
    before = [m.time for m in oracle.SDK_CLOCK_MODULES]
    with oracle.sdk_clock(INSIDE):
        assert all(m.time.time() == INSIDE for m in oracle.SDK_CLOCK_MODULES)
    assert [m.time for m in oracle.SDK_CLOCK_MODULES] == before
