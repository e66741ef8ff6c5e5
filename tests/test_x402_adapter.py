"""The x402 exact-scheme adapter on the genuine spec payload (Base Sepolia, window ended
2025-02-27) and on payloads signed by deterministic test keys (scripts/make_x402_payloads.py):
decoding, normalization, every check's code and their precedence, signature encodings, the
live authorizationState path and settlement finality over a scripted transport."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from rails import adapter_for
from rails.base import SessionShape, Status, Terms
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed, RpcUnavailable
from rails.x402 import (
    AUTHORIZATION_CANCELED_TOPIC,
    AUTHORIZATION_USED_TOPIC,
    EXPIRY_MARGIN_S,
    MAX_PROOF_CHARS,
    SECP256K1_N,
    TRANSFER_TOPIC,
    X402Adapter,
    authorization_digest,
    decode_proof,
    domain_separator,
    parse_payment,
    recover_signer,
    recover_signer_eth_account,
)
from rails.x402 import (
    SETTLEMENT_CLOCK_MARGIN_S as MARGIN,
)
from registry.catalog import RailOverrides, load_catalog
from verifier.core.checking import run_verify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "x402"

SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAYER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
NONCE = "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
VALID_AFTER, VALID_BEFORE = 1740672089, 1740672154
INSIDE = 1740672100
OTHER = "0x000000000000000000000000000000000000bEEF"
REF = f"84532:{SEPOLIA_USDC.lower()}:{PAYER.lower()}:{NONCE}"
SPACED_PAY_TO = PAY_TO[:40].lower() + "  "  # 42 characters, 38 hex digits


def at(ts: int | float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def rail_on(network: str):
    return load_catalog().resolve("x402", RailOverrides(network=network))


@pytest.fixture(scope="module")
def sepolia() -> X402Adapter:
    return X402Adapter(rail_on("base-sepolia"))


@pytest.fixture(scope="module")
def base() -> X402Adapter:
    return X402Adapter(rail_on("base"))


def terms(now: int | float = INSIDE, **kw: Any) -> Terms:
    return Terms(**{"recipient": PAY_TO, "amount": 10000, "now": at(now), **kw})


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


V1_JSON = read("x402_base_sepolia_payload_v1.json")
V1_B64 = read("x402_base_sepolia_payload_v1.b64").strip()
V2_JSON = read("x402_base_sepolia_payload_v2.json")
V2_B64 = read("x402_base_sepolia_payload_v2.b64").strip()
SPEC_FORMS = {"v1_json": V1_JSON, "v1_b64": V1_B64, "v2_json": V2_JSON, "v2_b64": V2_B64}
SIGNED = json.loads(read("x402_base_signed.json"))
SIG = json.loads(V1_JSON)["payload"]["signature"]


def tamper(raw: str, path: str, value: Any) -> str:
    """The payload with one field (dotted path) replaced, as JSON text."""
    doc = copy.deepcopy(json.loads(raw))
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[leaf] = value
    return json.dumps(doc)


class NoChain:
    """An offline transport that must not be asked anything."""

    source = "cassette"

    def call(self, method: str, params: list[Any]) -> Any:
        raise AssertionError(f"offline verification made a chain call: {method}")


class ScriptedChain:
    """A live-shaped transport answering from a table keyed by method (in-process only)."""

    source = "live"

    def __init__(self, answers: dict[str, Any]):
        self.answers = answers
        self.calls: list[tuple[str, list[Any]]] = []

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, params))
        answer = self.answers[method]
        return answer(params) if callable(answer) else answer

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


# -- the genuine spec payload ------------------------------------------------------------


@pytest.mark.parametrize("form", SPEC_FORMS)
@pytest.mark.parametrize("now", [VALID_AFTER, INSIDE, VALID_BEFORE - 1, VALID_BEFORE - 0.5])
def test_spec_payload_verifies_inside_its_window(sepolia, form, now):
    verdict = sepolia.verify(SPEC_FORMS[form], terms(now), NoChain())
    assert verdict.status is Status.verified, verdict.detail
    assert verdict.code is None
    assert verdict.observed == {
        "amount": "10000",
        "recipient": PAY_TO,
        "sender": PAYER,
        "asset": SEPOLIA_USDC,
        "network": "base-sepolia",
        "valid_after": VALID_AFTER,
        "valid_before": VALID_BEFORE,
        "nonce": NONCE,
    }
    # The same identity an EVM proof of the settlement's transaction takes from its
    # AuthorizationUsed log: one transfer, whichever proof type names it.
    assert verdict.transfer_keys == (f"eip3009:{REF}",)


def test_observed_evidence_never_carries_the_signature(sepolia):
    signature = json.loads(V1_JSON)["payload"]["signature"]
    for now in (INSIDE, VALID_BEFORE):  # verified and failed verdicts alike
        dumped = sepolia.verify(V1_JSON, terms(now), NoChain()).model_dump_json()
        assert signature[2:] not in dumped and signature[2:34] not in dumped


@pytest.mark.parametrize("form", SPEC_FORMS)
def test_spec_payload_at_the_real_clock_is_expired(sepolia, form):
    verdict = sepolia.verify(SPEC_FORMS[form], terms(datetime.now(UTC).timestamp()), NoChain())
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.authorization_expired)


def test_expiry_is_exclusive_at_valid_before(sepolia):
    verdict = sepolia.verify(V1_JSON, terms(VALID_BEFORE), NoChain())
    assert verdict.code is FailureCode.authorization_expired


@pytest.mark.parametrize("form", SPEC_FORMS)
def test_spec_payload_before_valid_after_waits_while_it_will_be_valid_in_the_session(sepolia, form):
    """The payer's clock ahead of ours: the authorization becomes valid while the session is
    open, so it is pending (checked again), not a failed payment."""
    verdict = sepolia.verify(SPEC_FORMS[form], terms(VALID_AFTER - 1), NoChain())
    assert (verdict.status, verdict.code) == (
        Status.pending,
        FailureCode.authorization_not_yet_valid,
    )
    opened = dict(not_before=at(VALID_AFTER - 60), not_after=at(VALID_AFTER))
    verdict = sepolia.verify(SPEC_FORMS[form], terms(VALID_AFTER - 1, **opened), NoChain())
    assert verdict.status is Status.pending


def test_an_authorization_valid_only_after_the_session_expires_fails(sepolia):
    closes = dict(not_before=at(VALID_AFTER - 60), not_after=at(VALID_AFTER - 1))
    verdict = sepolia.verify(V1_JSON, terms(VALID_AFTER - 2, **closes), NoChain())
    assert (verdict.status, verdict.code) == (
        Status.failed,
        FailureCode.authorization_not_yet_valid,
    )


def test_naive_clock_is_read_as_utc(sepolia):
    naive = at(INSIDE).replace(tzinfo=None)
    assert (
        sepolia.verify(V1_JSON, terms().model_copy(update={"now": naive}), NoChain()).status
        is Status.verified
    )


def test_same_signature_on_the_base_mainnet_domain_is_signature_invalid(base):
    # The Base rail pins "USD Coin" v2 on chain 8453 with Base USDC: the spec's signature
    # (made for "USDC" on 84532) recovers another address there (SOURCES.md: 0x34aE5770…).
    v1 = tamper(V1_JSON, "network", "base")
    v2 = tamper(tamper(V2_JSON, "accepted.network", "eip155:8453"), "accepted.asset", BASE_USDC)
    for raw in (v1, v2):
        verdict = base.verify(raw, terms(), NoChain())
        assert verdict.code is FailureCode.signature_invalid
        assert "0x34ae5770" in verdict.detail.lower()


def test_pinned_domain_ignores_the_payloads_extra(sepolia):
    # The v2 payload's own `extra` claims the Base mainnet name; the rail's pin still decides.
    raw = tamper(V2_JSON, "accepted.extra", {"name": "USD Coin", "version": "2"})
    assert sepolia.verify(raw, terms(), NoChain()).status is Status.verified


# -- precedence: amount before signature --------------------------------------------------


def test_value_tampered_against_the_same_session_is_amount_mismatch(sepolia):
    # Checks run recipient → amount → signature: the session still asks 10000, so the
    # business mismatch is reported first.
    raw = tamper(V1_JSON, "payload.authorization.value", "20000")
    verdict = sepolia.verify(raw, terms(), NoChain())
    assert verdict.code is FailureCode.amount_mismatch
    assert verdict.observed["amount"] == "20000"


@pytest.mark.parametrize("session", [{"amount": 20000}, {"amount": 10000, "at_least": True}])
def test_value_tampered_to_what_the_session_accepts_is_signature_invalid(sepolia, session):
    # When the amount check passes, the tampered value no longer matches what was signed:
    # the signature recovers another address (SOURCES.md: 0x4Af36983…).
    raw = tamper(V1_JSON, "payload.authorization.value", "20000")
    verdict = sepolia.verify(raw, terms(**session), NoChain())
    assert verdict.code is FailureCode.signature_invalid
    assert "0x4af36983" in verdict.detail.lower()


def test_at_least_accepts_more_and_exact_refuses_more(sepolia):
    payload = SIGNED["payloads"]["valid_payer2_20000"]["payload"]
    raw = json.dumps(payload)
    base = X402Adapter(rail_on("base"))
    pay_to, now = SIGNED["pay_to"], SIGNED["now"]
    ok = base.verify(raw, terms(now, recipient=pay_to, amount=15000, at_least=True), NoChain())
    assert ok.status is Status.verified
    exact = base.verify(raw, terms(now, recipient=pay_to, amount=15000), NoChain())
    assert exact.code is FailureCode.amount_mismatch
    less = base.verify(raw, terms(now, recipient=pay_to, amount=25000, at_least=True), NoChain())
    assert less.code is FailureCode.amount_mismatch


# -- one check, one code ------------------------------------------------------------------


def test_session_recipient_other_than_payto_is_wrong_recipient(sepolia):
    assert (
        sepolia.verify(V1_JSON, terms(recipient=OTHER), NoChain()).code
        is FailureCode.wrong_recipient
    )


def test_authorization_to_tampered_is_wrong_recipient(sepolia):
    raw = tamper(V1_JSON, "payload.authorization.to", OTHER)
    assert sepolia.verify(raw, terms(), NoChain()).code is FailureCode.wrong_recipient


@pytest.mark.parametrize("form", ["v1_json", "v2_json"])
def test_session_asset_other_than_the_payloads_is_wrong_asset(sepolia, form):
    verdict = sepolia.verify(SPEC_FORMS[form], terms(asset=OTHER), NoChain())
    assert verdict.code is FailureCode.wrong_asset


def test_v2_accepted_asset_tampered_is_wrong_asset(sepolia):
    raw = tamper(V2_JSON, "accepted.asset", OTHER)
    assert sepolia.verify(raw, terms(), NoChain()).code is FailureCode.wrong_asset


@pytest.mark.parametrize(
    "path,value",
    [
        ("network", "base"),  # v1, a known network but not this rail's
        ("network", "polygon-amoy-unknown"),  # v1, a name we cannot map
    ],
)
def test_v1_other_network_is_chain_mismatch(sepolia, path, value):
    assert (
        sepolia.verify(tamper(V1_JSON, path, value), terms(), NoChain()).code
        is FailureCode.chain_mismatch
    )


@pytest.mark.parametrize(
    "network", ["eip155:8453", "eip155:1", "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"]
)
def test_v2_other_network_is_chain_mismatch(sepolia, network):
    raw = tamper(V2_JSON, "accepted.network", network)
    assert sepolia.verify(raw, terms(), NoChain()).code is FailureCode.chain_mismatch


def test_other_scheme_is_chain_mismatch(sepolia):
    assert (
        sepolia.verify(tamper(V1_JSON, "scheme", "upto"), terms(), NoChain()).code
        is FailureCode.chain_mismatch
    )
    assert (
        sepolia.verify(tamper(V2_JSON, "accepted.scheme", "upto"), terms(), NoChain()).code
        is FailureCode.chain_mismatch
    )


def test_named_sender(sepolia):
    assert sepolia.verify(V1_JSON, terms(sender=PAYER.lower()), NoChain()).status is Status.verified
    assert (
        sepolia.verify(V1_JSON, terms(sender=OTHER), NoChain()).code is FailureCode.sender_mismatch
    )


@pytest.mark.parametrize(
    "path,value",
    [
        ("payload.authorization.nonce", "0x" + "11" * 32),
        ("payload.authorization.validBefore", str(VALID_BEFORE + 3600)),
        ("payload.authorization.validAfter", str(VALID_AFTER - 1)),
        ("payload.authorization.from", OTHER),
    ],
)
def test_signed_fields_tampered_are_signature_invalid(sepolia, path, value):
    assert (
        sepolia.verify(tamper(V1_JSON, path, value), terms(), NoChain()).code
        is FailureCode.signature_invalid
    )


def test_precedence_follows_the_documented_order(sepolia):
    # Everything wrong at once: the first check in order (network) wins, then asset, …
    worst = tamper(
        tamper(tamper(V2_JSON, "accepted.network", "eip155:1"), "accepted.asset", OTHER),
        "payload.authorization.value",
        "1",
    )
    assert (
        sepolia.verify(worst, terms(recipient=OTHER), NoChain()).code is FailureCode.chain_mismatch
    )
    no_net = tamper(worst, "accepted.network", "eip155:84532")
    assert sepolia.verify(no_net, terms(recipient=OTHER), NoChain()).code is FailureCode.wrong_asset
    no_asset = tamper(no_net, "accepted.asset", SEPOLIA_USDC)
    assert (
        sepolia.verify(no_asset, terms(recipient=OTHER), NoChain()).code
        is FailureCode.wrong_recipient
    )
    assert sepolia.verify(no_asset, terms(), NoChain()).code is FailureCode.amount_mismatch
    # a bad signature outranks the time window
    bad_sig = tamper(V1_JSON, "payload.authorization.nonce", "0x" + "22" * 32)
    assert (
        sepolia.verify(bad_sig, terms(VALID_BEFORE + 10), NoChain()).code
        is FailureCode.signature_invalid
    )


# -- signature encodings -----------------------------------------------------------------


def _with_signature(raw: str, sig: bytes) -> str:
    return tamper(raw, "payload.signature", "0x" + sig.hex())


SPEC_SIG = bytes.fromhex(json.loads(V1_JSON)["payload"]["signature"][2:])


def test_v_as_0_or_1_verifies(sepolia):
    raw = _with_signature(V1_JSON, SPEC_SIG[:64] + bytes((SPEC_SIG[64] - 27,)))
    assert sepolia.verify(raw, terms(), NoChain()).status is Status.verified


def test_high_s_twin_is_refused_though_ecrecover_accepts_it(sepolia):
    s = int.from_bytes(SPEC_SIG[32:64], "big")
    twin = SPEC_SIG[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - SPEC_SIG[64],))
    raw = _with_signature(V1_JSON, twin)
    # plain ecrecover (eth-account) still finds the payer: the refusal is our policy, the
    # same one the token's ECRecover enforces, not a recovery failure
    auth = json.loads(raw)["payload"]["authorization"]
    assert (
        recover_signer_eth_account(auth, "0x" + twin.hex(), "USDC", "2", 84532, SEPOLIA_USDC)
        == PAYER
    )
    verdict = sepolia.verify(raw, terms(), NoChain())
    assert verdict.code is FailureCode.signature_invalid and "malleable" in verdict.detail


@pytest.mark.parametrize(
    "sig",
    [
        SPEC_SIG[:64] + b"\x1d",  # v = 29
        SPEC_SIG[:64] + b"\x02",  # v = 2
        SPEC_SIG[:64],  # 64 bytes
        SPEC_SIG + b"\x00" * 32,  # longer (smart-wallet shaped): not verifiable offline
        b"\x00" * 32 + SPEC_SIG[32:],  # r = 0
        SPEC_SIG[:32] + b"\x00" * 32 + SPEC_SIG[64:],  # s = 0
        SECP256K1_N.to_bytes(32, "big") + SPEC_SIG[32:],  # r = n
        b"\xff" * 65,
    ],
)
def test_unusable_signatures_are_signature_invalid(sepolia, sig):
    assert (
        sepolia.verify(_with_signature(V1_JSON, sig), terms(), NoChain()).code
        is FailureCode.signature_invalid
    )


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"payload.authorization.value": "20000"},
        {"payload.authorization.to": OTHER},
        {"payload.authorization.nonce": "0x" + "ab" * 32},
        {"payload.authorization.validBefore": "1740672999"},
    ],
)
@pytest.mark.parametrize(
    "domain", [("USDC", "2", 84532, SEPOLIA_USDC), ("USD Coin", "2", 8453, BASE_USDC)]
)
def test_fast_path_agrees_with_eth_account_and_the_sdk_digest(variant, domain):
    # Our digest + coincurve recovery vs eth-account's typed-data encoding + recovery vs the
    # SDK's own EIP-712 hashing, on the genuine payload and tampered copies, on both domains.
    from importlib import import_module

    sdk_eip712 = import_module("x402.mechanisms.evm.eip712")
    sdk_types = import_module("x402.mechanisms.evm.types")
    raw = V1_JSON
    for path, value in variant.items():
        raw = tamper(raw, path, value)
    doc = json.loads(raw)
    p = parse_payment(doc)
    name, version, chain_id, contract = domain
    digest = authorization_digest(
        p.authorization, domain_separator(name, version, chain_id, bytes.fromhex(contract[2:]))
    )
    auth = doc["payload"]["authorization"]
    sdk_auth = sdk_types.ExactEIP3009Payload.from_dict(doc["payload"]).authorization
    assert digest == sdk_eip712.hash_eip3009_authorization(
        sdk_auth, chain_id, contract, name, version
    )
    fast, _ = recover_signer(digest, p.signature)
    slow = recover_signer_eth_account(
        auth, doc["payload"]["signature"], name, version, chain_id, contract
    )
    assert to_checksum_address(fast) == slow
    assert (slow == PAYER) == (variant == {} and chain_id == 84532)


def test_fast_path_agrees_with_eth_account_on_freshly_signed_payloads():
    for name, entry in SIGNED["payloads"].items():
        doc = entry["payload"]
        p = parse_payment(doc)
        digest = authorization_digest(
            p.authorization, domain_separator("USD Coin", "2", 8453, bytes.fromhex(BASE_USDC[2:]))
        )
        slow = recover_signer_eth_account(
            doc["payload"]["authorization"],
            doc["payload"]["signature"],
            "USD Coin",
            "2",
            8453,
            BASE_USDC,
        )
        fast, why = recover_signer(digest, p.signature)
        if name == "high_s_twin":
            assert fast is None and "malleable" in why
            assert slow == doc["payload"]["authorization"]["from"]
        else:
            assert to_checksum_address(fast) == slow, name
            assert (slow == doc["payload"]["authorization"]["from"]) == (
                name != "wrong_domain_name"
            ), name


@pytest.mark.parametrize(
    "name,expected",
    [
        ("valid_v1", None),
        ("valid_v2", None),
        ("valid_v_01", None),
        ("valid_payer2_20000", None),
        ("high_s_twin", FailureCode.signature_invalid),
        ("wrong_domain_name", FailureCode.signature_invalid),
    ],
)
def test_freshly_signed_base_payloads(base, name, expected):
    doc = SIGNED["payloads"][name]["payload"]
    amount = int(doc["payload"]["authorization"]["value"])
    verdict = base.verify(
        json.dumps(doc), terms(SIGNED["now"], recipient=SIGNED["pay_to"], amount=amount), NoChain()
    )
    assert verdict.code is expected, verdict.detail
    # the same payload on the Base Sepolia rail is on the wrong chain
    assert (
        X402Adapter(rail_on("base-sepolia"))
        .verify(
            json.dumps(doc),
            terms(SIGNED["now"], recipient=SIGNED["pay_to"], amount=amount),
            NoChain(),
        )
        .code
        is FailureCode.chain_mismatch
    )


# -- decoding and normalization ----------------------------------------------------------


@pytest.mark.parametrize("form", SPEC_FORMS)
def test_normalize_proof_is_the_eip3009_replay_unit(sepolia, form):
    assert sepolia.normalize_proof("x402_payment_payload", SPEC_FORMS[form]) == REF


def test_normalize_proof_ignores_formatting(sepolia):
    compact = json.dumps(json.loads(V1_JSON), separators=(",", ":"))
    upper = tamper(V1_JSON, "payload.authorization.from", "0x" + PAYER[2:].upper())
    urlsafe = base64.urlsafe_b64encode(compact.encode()).decode().rstrip("=")
    for raw in (compact, "\n  " + V1_JSON + "\n", upper, urlsafe):
        assert sepolia.normalize_proof("x402_payment_payload", raw) == REF


def test_normalize_proof_of_a_payload_for_another_network(sepolia):
    # v1 names no token: the rail family's token on the payload's network is implied
    ref = sepolia.normalize_proof("x402_payment_payload", tamper(V1_JSON, "network", "base"))
    assert ref == f"8453:{BASE_USDC.lower()}:{PAYER.lower()}:{NONCE}"
    ref2 = sepolia.normalize_proof("x402_payment_payload", tamper(V2_JSON, "accepted.asset", OTHER))
    assert ref2 == f"84532:{OTHER.lower()}:{PAYER.lower()}:{NONCE}"


MALFORMED = {
    "garbage": "not a payload at all!",
    "empty": "   ",
    "oversized_json": '{"x402Version":1,"pad":"' + "a" * MAX_PROOF_CHARS + '"}',
    "oversized_b64": "A" * (MAX_PROOF_CHARS + 4),
    "bad_base64": V1_B64[:-5] + "@@@==",
    "base64_of_garbage": base64.b64encode(b"\x00\x01binary").decode(),
    "base64_of_array": base64.b64encode(b"[1,2]").decode(),
    "json_truncated": V1_JSON[:-20],
    "version_3": tamper(V1_JSON, "x402Version", 3),
    "version_true": tamper(V1_JSON, "x402Version", True),
    "v2_without_accepted": tamper(V2_JSON, "accepted", None),
    "no_authorization": tamper(V1_JSON, "payload.authorization", None),
    "no_signature": tamper(V1_JSON, "payload.signature", None),
    "signature_not_hex": tamper(V1_JSON, "payload.signature", "0xzz"),
    "signature_huge": tamper(V1_JSON, "payload.signature", "0x" + "ab" * 2000),
    "nonce_short": tamper(V1_JSON, "payload.authorization.nonce", "0x1234"),
    "from_short": tamper(V1_JSON, "payload.authorization.from", PAYER[:-2]),
    "to_not_hex": tamper(V1_JSON, "payload.authorization.to", "0x" + "g" * 40),
    # bytes.fromhex skips whitespace: these were read as 19-byte addresses (and a signature
    # with a space in it as the signature), and a proof of them stored as failed.
    "to_with_spaces": tamper(V1_JSON, "payload.authorization.to", SPACED_PAY_TO),
    "from_with_spaces": tamper(V1_JSON, "payload.authorization.from", PAYER[:40] + "  "),
    "asset_with_spaces": tamper(V2_JSON, "accepted.asset", SEPOLIA_USDC[:40] + " \t"),
    "signature_with_a_space": tamper(V1_JSON, "payload.signature", SIG[:10] + " " + SIG[10:]),
    "value_negative": tamper(V1_JSON, "payload.authorization.value", "-1"),
    "value_float": tamper(V1_JSON, "payload.authorization.value", 10000.0),
    "value_underscore": tamper(V1_JSON, "payload.authorization.value", "10_000"),
    "value_spaces": tamper(V1_JSON, "payload.authorization.value", " 10000"),
    "value_over_uint256": tamper(V1_JSON, "payload.authorization.value", str(1 << 256)),
    "valid_before_hex": tamper(V1_JSON, "payload.authorization.validBefore", "0x10"),
    "network_not_string": tamper(V1_JSON, "network", 84532),
    # Read as the last "to" here, as the first elsewhere: one payload, two payments.
    "to_given_twice": V1_JSON.replace('"to":', '"to": "0x' + "11" * 20 + '", "to":', 1),
    "version_given_twice": V1_JSON.replace("{", '{"x402Version": 2, ', 1),
    "twice_in_base64": base64.b64encode(
        V2_JSON.replace('"accepted":', '"accepted": {}, "accepted":', 1).encode()
    ).decode(),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_proofs_are_refused(sepolia, case):
    with pytest.raises(ProofMalformed):
        sepolia.normalize_proof("x402_payment_payload", MALFORMED[case])
    verdict = sepolia.verify(MALFORMED[case], terms(), NoChain())
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.proof_malformed)


def test_malformed_names_the_field(sepolia):
    with pytest.raises(ProofMalformed) as e:
        sepolia.normalize_proof("x402_payment_payload", MALFORMED["nonce_short"])
    assert e.value.field == "authorization.nonce"
    for case, field in (
        ("to_with_spaces", "authorization.to"),
        ("from_with_spaces", "authorization.from"),
        ("asset_with_spaces", "accepted.asset"),
    ):
        with pytest.raises(ProofMalformed) as e:
            sepolia.normalize_proof("x402_payment_payload", MALFORMED[case])
        assert e.value.field == field


def test_unknown_network_or_proof_type_does_not_normalize(sepolia):
    with pytest.raises(ProofMalformed):
        sepolia.normalize_proof("x402_payment_payload", tamper(V1_JSON, "network", "nowhere"))
    with pytest.raises(ProofMalformed):
        sepolia.normalize_proof(
            "x402_payment_payload", tamper(V2_JSON, "accepted.network", "solana:mainnet")
        )
    with pytest.raises(ProofMalformed) as e:
        sepolia.normalize_proof("evm_tx_hash", V1_JSON)
    assert e.value.field == "proof_type"


def test_normalize_address(sepolia):
    assert sepolia.normalize_address(PAY_TO.lower()) == PAY_TO
    assert sepolia.normalize_address(PAY_TO) == PAY_TO
    assert sepolia.normalize_address("0x" + PAY_TO[2:].upper()) == PAY_TO
    bad_checksum = PAY_TO[:-1] + ("c" if PAY_TO[-1] == "C" else "C")
    for bad in (
        bad_checksum,
        PAY_TO[:-1],
        "209693Bc6afc0C5328bA36FaF03C514EF312287C00",
        "",
        "0x" + "z" * 40,
        # 42 characters that bytes.fromhex read as 19 bytes; eth_utils then raised a
        # ValueError (a 500 at session creation, a traceback from verify-offline).
        SPACED_PAY_TO,
        " " + PAY_TO[:41],
        PAY_TO[:20] + "  " + PAY_TO[22:],
    ):
        with pytest.raises(ProofMalformed) as e:
            sepolia.normalize_address(bad, field="treasury")
        assert e.value.field == "treasury"
    assert sepolia.new_reference() is None


# -- requirements ------------------------------------------------------------------------


def test_prepare_gives_x402_requirements_with_the_pinned_domain(sepolia):
    now = at(INSIDE)
    session = SessionShape(
        id="s1",
        recipient=PAY_TO.lower(),
        amount=10000,
        reference=None,
        memo=None,
        expires_at=now + timedelta(seconds=900),
        access_product_id="p",
    )
    req = sepolia.prepare(session, now=now)
    assert (req.rail_id, req.network, req.asset, req.recipient, req.amount) == (
        "x402",
        "base-sepolia",
        SEPOLIA_USDC,
        PAY_TO,
        "10000",
    )
    assert req.data == {
        "scheme": "exact",
        "network": "eip155:84532",
        "amount": "10000",
        "maxAmountRequired": "10000",
        "asset": SEPOLIA_USDC,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 900,
        "extra": {"name": "USDC", "version": "2"},
    }
    expired = SessionShape(**{**session.model_dump(), "expires_at": now - timedelta(seconds=5)})
    assert sepolia.prepare(expired, now=now).data["maxTimeoutSeconds"] == 1


def test_registry_builds_this_adapter_and_refuses_a_rail_without_a_domain():
    assert isinstance(adapter_for(rail_on("base-sepolia")), X402Adapter)
    with pytest.raises(ValueError, match="EIP-712"):
        X402Adapter(load_catalog().resolve("x402", RailOverrides(network="ethereum", asset=OTHER)))


# -- live chain: authorizationState and the settlement transaction ------------------------


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


def settlement_logs(
    to: str = PAY_TO, value: int = 10000, asset: str = SEPOLIA_USDC
) -> list[dict[str, Any]]:
    return [
        {
            "address": asset.lower(),
            "topics": [AUTHORIZATION_USED_TOPIC, _topic(PAYER), NONCE],
            "data": "0x",
            "logIndex": "0x0",
        },
        {
            "address": asset.lower(),
            "topics": [TRANSFER_TOPIC, _topic(PAYER), _topic(to)],
            "data": "0x" + value.to_bytes(32, "big").hex(),
            "logIndex": "0x1",
        },
    ]


TX = "0x" + "ab" * 32
BLOCK_HASH = "0x" + "cd" * 32


def receipt(logs: list[dict[str, Any]], status: str = "0x1", block: int = 100) -> dict[str, Any]:
    return {
        "transactionHash": TX,
        "status": status,
        "blockNumber": hex(block),
        "blockHash": BLOCK_HASH,
        "logs": logs,
    }


def live_chain(
    used: bool,
    logs: list[dict[str, Any]] | None = None,
    head: int = 104,
    finalized: int | None = 50,
    canonical: str = BLOCK_HASH,
    mined: int | None = INSIDE + 5,  # the settlement block's timestamp
    cancelled: bool = False,  # the payer cancelled the nonce (AuthorizationCanceled)
    latest_at: int = VALID_BEFORE + 3600,  # the node's latest block's timestamp
    final_at: int | None = None,  # any other block's (the newest final one): latest_at - 20
    **extra: Any,
) -> ScriptedChain:
    others_at = latest_at - 20 if final_at is None else final_at

    def nonce_logs(params: list[Any]) -> list[dict[str, Any]]:
        topics = params[0]["topics"]
        event = topics[0]
        named = (event == AUTHORIZATION_USED_TOPIC and logs) or (
            event == AUTHORIZATION_CANCELED_TOPIC and cancelled
        )
        return (
            [
                {
                    "transactionHash": TX,
                    "blockNumber": "0x64",
                    "blockHash": BLOCK_HASH,
                    "topics": topics,
                    "removed": False,
                }
            ]
            if named
            else []
        )

    def block(params: list[Any]) -> Any:
        if params[0] == "latest":
            return {"number": hex(head), "hash": "0x" + "ab" * 32, "timestamp": hex(latest_at)}
        if params[0] == "finalized":  # a node without the tag answers null
            return (
                {"number": hex(finalized), "hash": "0x" + "ee" * 32}
                if finalized is not None
                else None
            )
        # Block 100 holds the settlement (when there is one); the others are stamped later.
        when = mined if int(params[0], 16) == 100 else others_at
        stamp = {"timestamp": hex(when)} if when is not None else {}
        return {"number": params[0], "hash": canonical, **stamp}

    return ScriptedChain(
        {
            "eth_chainId": hex(84532),  # Base Sepolia, the rail's
            "eth_call": "0x" + ("1" if used else "0").rjust(64, "0"),
            "eth_getLogs": nonce_logs,
            "eth_getTransactionReceipt": receipt(logs or []),
            "eth_blockNumber": hex(head),
            "eth_getBlockByNumber": block,
            **extra,
        }
    )


def test_offline_verification_makes_no_chain_call(sepolia):
    from rails.transport.cassette import CassetteTransport

    checked = run_verify(sepolia, V1_JSON, terms(), CassetteTransport([]))
    assert checked.verdict.status is Status.verified and checked.rpc_calls == 0


def test_live_unused_nonce_reads_authorization_state_once(sepolia):
    chain = live_chain(used=False)
    verdict = sepolia.verify(V1_JSON, terms(), chain)
    assert verdict.status is Status.verified and verdict.settlement is None
    assert chain.methods() == ["eth_chainId", "eth_call"]
    call, tag = chain.calls[1][1]
    expected = keccak(text="authorizationState(address,bytes32)")[:4] + abi_encode(
        ["address", "bytes32"], [PAYER, bytes.fromhex(NONCE[2:])]
    )
    assert call == {"to": SEPOLIA_USDC.lower(), "data": "0x" + expected.hex()} and tag == "latest"


@pytest.mark.parametrize("used", [False, True])
def test_a_node_on_another_chain_decides_nothing(sepolia, used):
    # Every authorization looks unused on another chain's node (a Base mainnet URL for Base
    # Sepolia): it would verify one unsettled now and fail it authorization_expired later.
    # Its answers are unusable instead: pending rpc_unavailable, and no settlement read.
    chain = live_chain(used=used, logs=settlement_logs(), eth_chainId=hex(8453))
    checked = run_verify(sepolia, V1_JSON, terms(), chain)
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    ), checked.verdict.detail
    assert "chain 8453" in checked.verdict.detail
    with pytest.raises(MalformedResponse, match="chain 8453"):
        sepolia.finality([REF], chain)
    assert set(chain.methods()) == {"eth_chainId"}


def test_live_used_nonce_settled_by_this_payment_reports_the_settlement(sepolia):
    chain = live_chain(used=True, logs=settlement_logs())
    verdict = sepolia.verify(V1_JSON, terms(), chain)
    assert verdict.status is Status.verified
    s = verdict.settlement
    assert (s.ref, s.block_number, s.block_hash, s.confirmations) == (REF, 100, BLOCK_HASH, 5)
    assert (s.finality, s.is_final) == (
        "confirmed",
        False,
    )  # 5 of 10 confirmations, above finalized
    assert verdict.observed["tx_hash"] == TX and verdict.observed["block_number"] == 100
    filt = chain.calls[2][1][0]
    assert filt["address"] == SEPOLIA_USDC.lower() and filt["topics"] == [
        AUTHORIZATION_USED_TOPIC,
        _topic(PAYER),
        NONCE,
    ]


@pytest.mark.parametrize(
    "logs",
    [
        settlement_logs(to=OTHER),  # the payer spent the nonce on another authorization
        settlement_logs(value=9999),
        settlement_logs()[:1],  # AuthorizationUsed without a Transfer
    ],
)
def test_live_used_nonce_not_settled_as_this_payment_is_nonce_reused(sepolia, logs):
    # The other settlement's block (100) is final: 21 confirmations of the 10 required.
    verdict = sepolia.verify(V1_JSON, terms(), live_chain(used=True, logs=logs, head=120))
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.nonce_reused)


def test_live_used_nonce_cancelled_by_the_payer_is_nonce_reused(sepolia):
    chain = live_chain(used=True, cancelled=True, head=120)
    verdict = sepolia.verify(V1_JSON, terms(), chain)
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.nonce_reused)
    assert "cancelled" in verdict.detail
    asked = [params[0]["topics"] for method, params in chain.calls if method == "eth_getLogs"]
    assert asked[-1] == [AUTHORIZATION_CANCELED_TOPIC, _topic(PAYER), NONCE]


@pytest.mark.parametrize(
    "spent",
    [
        dict(logs=settlement_logs(to=OTHER)),  # the nonce settled another authorization
        dict(logs=settlement_logs()[:1]),  # AuthorizationUsed without a Transfer
        dict(cancelled=True),  # the payer cancelled it
    ],
)
def test_a_nonce_spent_in_a_fork_or_a_block_not_final_waits_for_the_chains_last_word(
    sepolia, spent
):
    # The nonce spent elsewhere was `failed nonce_reused` for good from any block: one a node
    # behind a reorg serves from a fork (the canonical chain may not spend it at all), or one
    # not final yet (replaced, this payment's settlement may take the nonce first).
    fork = live_chain(used=True, head=120, canonical="0x" + "99" * 32, **spent)
    verdict = sepolia.verify(V1_JSON, terms(), fork)
    assert (verdict.status, verdict.code) == (Status.pending, FailureCode.reorged), verdict.detail
    assert "no longer the chain's block" in verdict.detail and ("0x" + "99" * 32) in verdict.detail
    # Canonical, 5 confirmations of 10, above the finalized block: not final yet.
    fresh = live_chain(used=True, head=104, finalized=50, **spent)
    verdict = sepolia.verify(V1_JSON, terms(), fresh)
    assert (verdict.status, verdict.code) == (Status.pending, FailureCode.not_final), verdict.detail
    # The node has no canonical block at that height yet: nothing is known of it.
    unknown = live_chain(used=True, head=120, **spent)
    unknown.answers["eth_getBlockByNumber"] = lambda params: None
    verdict = sepolia.verify(V1_JSON, terms(), unknown)
    assert (verdict.status, verdict.code) == (Status.pending, FailureCode.not_final), verdict.detail
    # Final (under the finalized block, too): failed for good.
    final = live_chain(used=True, head=104, finalized=100, **spent)
    verdict = sepolia.verify(V1_JSON, terms(), final)
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.nonce_reused)


def test_a_fork_that_spent_the_nonce_elsewhere_does_not_lose_the_settled_payment(sepolia):
    # The node behind the reorg said the nonce paid another authorization; the canonical
    # chain settled this one: once the node has caught up, the payment verifies.
    fork = live_chain(used=True, logs=settlement_logs(to=OTHER), canonical="0x" + "99" * 32)
    assert sepolia.verify(V1_JSON, terms(), fork).code is FailureCode.reorged
    caught_up = live_chain(used=True, logs=settlement_logs())
    assert sepolia.verify(V1_JSON, terms(), caught_up).status is Status.verified


def test_a_cancellation_log_without_its_block_hash_is_no_verdict(sepolia):
    chain = live_chain(used=True, cancelled=True, head=120)
    logs = chain.answers["eth_getLogs"]

    def without_hash(params: list[Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in lg.items() if k != "blockHash"} for lg in logs(params)]

    chain.answers["eth_getLogs"] = without_hash
    checked = run_verify(sepolia, V1_JSON, terms(), chain)
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    ), checked.verdict.detail


@pytest.mark.parametrize(
    "lag",
    [
        "receipt_not_served",  # the log's node is a block ahead of the receipt's
        "logs_behind_state",  # authorizationState already used, eth_getLogs not there yet
        "receipt_reverted",  # a reverted transaction logs nothing: the node disagrees
        "receipt_without_the_log",
    ],
)
def test_live_used_nonce_the_node_does_not_show_yet_is_pending(sepolia, lag):
    """The nonce is used, but this node shows no settlement of it, nor a cancellation: it is
    behind itself (a load-balanced RPC). This used to be `failed nonce_reused`, which is
    final: the customer's own payment, settled a block ago, was lost for its session."""
    chain = live_chain(used=True, logs=settlement_logs())
    if lag == "receipt_not_served":
        chain.answers["eth_getTransactionReceipt"] = None
    elif lag == "logs_behind_state":
        chain = live_chain(used=True)
    elif lag == "receipt_reverted":
        chain.answers["eth_getTransactionReceipt"] = receipt(settlement_logs(), status="0x0")
    else:
        chain.answers["eth_getTransactionReceipt"] = receipt(settlement_logs()[1:])
    checked = run_verify(sepolia, V1_JSON, terms(), chain)
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    ), checked.verdict.detail
    # Caught up, the same node shows the settlement: the payment verifies.
    caught_up = live_chain(used=True, logs=settlement_logs())
    assert sepolia.verify(V1_JSON, terms(), caught_up).status is Status.verified


@pytest.mark.parametrize(
    ("asked", "code"),
    [
        ({"reference": "R-1"}, FailureCode.reference_missing),
        ({"memo": "order-42"}, FailureCode.memo_mismatch),
    ],
)
def test_a_reference_or_memo_asked_of_an_authorization_goes_to_review(sepolia, asked, code):
    """EIP-3009 signs no reference or memo. Asked for one, the adapter used to ignore it and
    answer verified; it cannot prove it, so a human decides (as on the EVM rails)."""
    verdict = sepolia.verify(V1_JSON, terms(**asked), NoChain())
    assert (verdict.status, verdict.code) == (Status.requires_review, code), verdict.detail


def test_live_chain_only_asked_after_offline_checks_pass(sepolia):
    chain = live_chain(used=False)
    assert (
        sepolia.verify(V1_JSON, terms(recipient=OTHER), chain).code is FailureCode.wrong_recipient
    )
    assert chain.calls == []


def test_live_transport_trouble_is_pending_not_failed(sepolia):
    def down(params):
        raise RpcUnavailable("connection refused")

    checked = run_verify(sepolia, V1_JSON, terms(), live_chain(used=False, eth_call=down))
    assert (checked.verdict.status, checked.verdict.code) == (
        Status.pending,
        FailureCode.rpc_unavailable,
    )


# -- checked again later: the window as of the submission --------------------------------

LATE = VALID_BEFORE + 3600  # a pending proof's next check, long after the window closed


def resubmitted(now: int | float, submitted: int | float = INSIDE, **kw: Any) -> Terms:
    return terms(now, submitted_at=at(submitted), **kw)


def test_a_proof_submitted_in_its_window_is_still_valid_offline_after_it(sepolia):
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), NoChain())
    assert verdict.status is Status.verified, verdict.detail


@pytest.mark.parametrize("submitted", [VALID_BEFORE, LATE])
def test_a_proof_submitted_at_or_after_validbefore_is_expired(sepolia, submitted):
    # SECURITY: the submission's clock, not an earlier one: an old settlement cannot pay a
    # session opened (and so a proof submitted) after its window.
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE, submitted), NoChain())
    assert verdict.code is FailureCode.authorization_expired
    settled = live_chain(used=True, logs=settlement_logs())
    assert sepolia.verify(V1_JSON, resubmitted(LATE, submitted), settled).code is (
        FailureCode.authorization_expired
    )
    assert settled.calls == []


def test_a_submission_clock_later_than_now_does_not_widen_the_window(sepolia):
    verdict = sepolia.verify(V1_JSON, resubmitted(VALID_BEFORE, INSIDE - 10), NoChain())
    assert verdict.status is Status.verified
    assert sepolia.verify(V1_JSON, resubmitted(VALID_BEFORE, LATE), NoChain()).code is (
        FailureCode.authorization_expired
    )


def test_settled_in_time_and_checked_after_validbefore_is_verified_with_its_settlement(sepolia):
    verdict = sepolia.verify(
        V1_JSON, resubmitted(LATE), live_chain(used=True, logs=settlement_logs())
    )
    assert verdict.status is Status.verified, verdict.detail
    assert verdict.settlement is not None and verdict.settlement.ref == REF


@pytest.mark.parametrize(
    ("now", "status", "code"),
    [
        (VALID_BEFORE - 1, Status.verified, None),  # still payable
        (VALID_BEFORE, Status.pending, FailureCode.tx_not_found),  # a late block may come
        (VALID_BEFORE + EXPIRY_MARGIN_S - 1, Status.pending, FailureCode.tx_not_found),
        (VALID_BEFORE + EXPIRY_MARGIN_S, Status.failed, FailureCode.authorization_expired),
        (LATE, Status.failed, FailureCode.authorization_expired),
    ],
)
def test_unused_on_chain_after_validbefore_waits_a_margin_then_never_settles(
    sepolia, now, status, code
):
    verdict = sepolia.verify(V1_JSON, resubmitted(now), live_chain(used=False))
    assert (verdict.status, verdict.code) == (status, code), verdict.detail


@pytest.mark.parametrize("latest", [VALID_BEFORE - 1, None])
def test_unused_on_a_node_whose_head_is_before_validbefore_is_never_expired(sepolia, latest):
    # Our clock is long past validBefore, but the node's latest block is stamped before it
    # (or it gives none): it cannot know of a settlement made just in time. It waits.
    chain = live_chain(used=False, latest_at=VALID_BEFORE - 1)
    if latest is None:
        chain.answers["eth_getBlockByNumber"] = lambda params: None
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), chain)
    assert (verdict.status, verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert "has not caught up" in verdict.detail


def test_unused_past_validbefore_fails_only_once_a_final_block_is_stamped_after_it(sepolia):
    # The node's latest block is past validBefore, but a reorg may still replace it with a
    # chain where the facilitator's settlement, sent in time, landed in a block stamped
    # before it: unused at the latest block is definitive only once a FINAL block (here 95:
    # 10 confirmations under head 104) is stamped at validBefore or later.
    chain = live_chain(used=False, final_at=VALID_BEFORE - 1)
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), chain)
    assert (verdict.status, verdict.code) == (Status.pending, FailureCode.not_final)
    assert verdict.fails_once_final is FailureCode.authorization_expired, verdict.detail
    assert ["eth_getBlockByNumber", [hex(95), False]] in [[m, p] for m, p in chain.calls]

    final = live_chain(used=False, final_at=VALID_BEFORE)
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), final)
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.authorization_expired)


def test_unused_past_validbefore_on_a_chain_with_no_final_block_is_not_expired(sepolia):
    # Fewer blocks than the rail's depth and no `finalized` answer: nothing is final yet.
    chain = live_chain(used=False, head=5, finalized=None)
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), chain)
    assert verdict.fails_once_final is FailureCode.authorization_expired, verdict.detail
    assert "no block is final yet" in verdict.detail


def test_unused_past_a_deadline_not_final_yet_but_settled_per_the_logs_verifies(sepolia):
    # The state read lags the logs (a load-balanced member): the settlement the logs show is
    # the answer, whether the deadline is final or not.
    chain = live_chain(used=False, logs=settlement_logs(), final_at=VALID_BEFORE - 1)
    verdict = sepolia.verify(V1_JSON, resubmitted(LATE), chain)
    assert verdict.status is Status.verified, verdict.detail


# -- the session's window ----------------------------------------------------------------


def windowed(now: int, opened: int, expires: int, **kw: Any) -> Terms:
    return terms(now, not_before=at(opened), not_after=at(expires), **kw)


def test_an_authorization_handed_over_after_the_session_expired_is_session_expired(sepolia):
    verdict = sepolia.verify(V1_JSON, windowed(INSIDE, INSIDE - 600, INSIDE - 1), NoChain())
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.session_expired)
    # Submitted in time and checked again after the session expired: still its payment.
    late = windowed(LATE, INSIDE - 600, INSIDE + 60, submitted_at=at(INSIDE))
    assert sepolia.verify(V1_JSON, late, NoChain()).status is Status.verified


def test_a_settlement_older_than_the_session_is_session_not_open(sepolia):
    """SECURITY: the settlement is public once mined; a session opened after it cannot take
    it, though the authorization's window is still open."""
    opened = INSIDE - 10
    older = live_chain(
        used=True, logs=settlement_logs(), mined=opened - MARGIN - 1, head=200, finalized=150
    )
    verdict = sepolia.verify(V1_JSON, windowed(INSIDE, opened, INSIDE + 600), older)
    assert (verdict.status, verdict.code) == (Status.failed, FailureCode.session_not_open)
    # A block stamped a little before the session opened: the chain's clock is not ours.
    for mined in (opened - MARGIN, opened + 5):
        chain = live_chain(used=True, logs=settlement_logs(), mined=mined)
        verdict = sepolia.verify(V1_JSON, windowed(INSIDE, opened, INSIDE + 600), chain)
        assert verdict.status is Status.verified, verdict.detail
        assert verdict.observed["block_time"] == at(mined).isoformat()


def test_a_settlement_older_than_the_session_in_a_block_not_final_waits(sepolia):
    # The settlement's block (100) has 5 confirmations of the 10 required, above the node's
    # finalized block: dropped, the same authorization may settle in a later block, inside
    # the session's window. A failed proof is terminal, so it waits for the chain's last word.
    opened = INSIDE - 10
    terms_ = windowed(INSIDE, opened, INSIDE + 600)
    unfinal = live_chain(used=True, logs=settlement_logs(), mined=opened - MARGIN - 1)
    checked = run_verify(sepolia, V1_JSON, terms_, unfinal)
    v = checked.verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.not_final), v.detail
    assert v.detail.startswith("session_not_open: ") and "failed once final" in v.detail
    assert v.observed["finality"] == "confirmed"
    final = live_chain(
        used=True, logs=settlement_logs(), mined=opened - MARGIN - 1, head=200, finalized=150
    )
    done = run_verify(sepolia, V1_JSON, terms_, final)
    assert (done.verdict.status, done.verdict.code) == (Status.failed, FailureCode.session_not_open)
    # No chain call more than the settlement's own reads, final or not.
    assert checked.rpc_calls == done.rpc_calls


def test_a_settlement_in_a_block_that_left_the_chain_waits_and_is_never_judged(sepolia):
    # The receipt names a block that is no longer the canonical one at its height (a node
    # behind a reorg): the window was judged on the canonical block's timestamp, a block not
    # holding the settlement, and `session_not_open` recorded for good.
    opened = INSIDE - 10
    fork = "0x" + "99" * 32
    for mined in (opened - MARGIN - 1, INSIDE + 5):
        chain = live_chain(used=True, logs=settlement_logs(), canonical=fork, mined=mined)
        verdict = sepolia.verify(V1_JSON, windowed(INSIDE, opened, INSIDE + 600), chain)
        assert (verdict.status, verdict.code) == (Status.pending, FailureCode.reorged), mined
        assert verdict.settlement is None and "block_time" not in verdict.observed
        assert fork in verdict.detail
    # Nor does a finality sweep date a reorged settlement by another block.
    [s] = sepolia.finality([REF], live_chain(used=True, logs=settlement_logs(), canonical=fork))
    assert s.reorged and s.block_time is None


def test_a_settlement_block_without_a_timestamp_is_pending_when_a_window_is_asked(sepolia):
    chain = live_chain(used=True, logs=settlement_logs(), mined=None)
    checked = run_verify(sepolia, V1_JSON, windowed(INSIDE, INSIDE - 10, INSIDE + 600), chain)
    assert checked.verdict.status is Status.pending, checked.verdict.detail
    assert (
        sepolia.verify(
            V1_JSON, terms(), live_chain(used=True, logs=settlement_logs(), mined=None)
        ).status
        is Status.verified
    )


# -- finality ----------------------------------------------------------------------------


def test_finality_not_settled_yet(sepolia):
    chain = live_chain(used=False)
    [s] = sepolia.finality([REF], chain)
    assert (s.ref, s.finality, s.is_final) == (REF, "not_found", False)
    assert "eth_blockNumber" not in chain.methods()


@pytest.mark.parametrize(
    "head,finalized,want",
    [
        (104, None, ("confirmed", False, 5)),  # 5 < 10 confirmations, no finalized tag answer
        (109, None, ("finalized", True, 10)),  # the rail's depth reached
        (104, 100, ("finalized", True, 5)),  # under the node's finalized block
        (104, 99, ("confirmed", False, 5)),
    ],
)
def test_finality_depth_and_finalized_tag(sepolia, head, finalized, want):
    chain = live_chain(used=True, logs=settlement_logs(), head=head, finalized=finalized)
    [s] = sepolia.finality([REF], chain)
    assert (s.finality, s.is_final, s.confirmations) == want
    assert (s.block_number, s.block_hash) == (100, BLOCK_HASH) and TX in s.detail
    assert PAY_TO.lower() in s.detail and "10000" in s.detail


def test_finality_reads_the_head_once_per_sweep(sepolia):
    chain = live_chain(used=True, logs=settlement_logs(), head=120)
    settlements = sepolia.finality([REF, REF, REF], chain)
    assert len(settlements) == 3 and all(s.is_final for s in settlements)
    assert chain.methods().count("eth_blockNumber") == 1
    finalized_reads = [
        p for m, p in chain.calls if m == "eth_getBlockByNumber" and p[0] == "finalized"
    ]
    assert len(finalized_reads) == 1


def test_finality_checks_where_the_money_went_when_told(sepolia):
    chain = live_chain(used=True, logs=settlement_logs(to=OTHER))
    [s] = sepolia.finality([REF], chain, expected={REF: (PAY_TO, 10000)})
    assert (s.finality, s.is_final) == ("not_found", False) and "not this payment" in s.detail
    [ok] = sepolia.finality(
        [REF],
        live_chain(used=True, logs=settlement_logs(), head=120),
        expected={REF: (PAY_TO, 10000)},
    )
    assert ok.is_final


def test_finality_detects_a_reorg_of_the_settlement_block(sepolia):
    chain = live_chain(used=True, logs=settlement_logs(), head=200, canonical="0x" + "99" * 32)
    [s] = sepolia.finality([REF], chain)
    assert (s.finality, s.reorged, s.is_final) == ("reorged", True, False)


def test_finality_reverted_or_foreign_refs(sepolia):
    chain = live_chain(used=True, logs=settlement_logs())
    chain.answers["eth_getTransactionReceipt"] = receipt(settlement_logs(), status="0x0")
    assert sepolia.finality([REF], chain)[0].finality == "not_found"
    [foreign] = sepolia.finality([REF.replace("84532:", "8453:", 1)], live_chain(used=False))
    assert foreign.finality == "not_found"


def test_live_transport_is_the_evm_rails():
    from rails.transport.evm_http import EvmHttpTransport

    transport = X402Adapter.live_transport(
        ["http://127.0.0.1:9"], "base-sepolia"
    )  # built, never called
    assert isinstance(transport, EvmHttpTransport) and transport.source == "live"


@pytest.mark.parametrize("raw", ["1234", "12345678", base64.b64encode(b"\xff\xfe{}").decode()])
def test_base64_of_no_text_is_named_as_such(raw):
    # A transaction hash's digits pasted as an x402 proof read as base64 of bytes that are no
    # text: said so, not as a JSON parser's complaint about surrogates.
    with pytest.raises(ProofMalformed) as e:
        decode_proof(raw)
    assert "neither payload JSON nor the base64 of one" in str(e.value)
    assert "surrogate" not in str(e.value)
