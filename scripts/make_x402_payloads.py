"""Write the derived x402 fixtures in fixtures/x402/ (run from the repository root):

    .venv/bin/python scripts/make_x402_payloads.py

1. x402_base_sepolia_payload_v2.json / .b64: the v2 PaymentPayload from the x402 exact-EVM
   scheme spec, copied verbatim from fixtures/raw/x402_exact_evm_base_sepolia_eip3009_spec.json
   (same genuine authorization and signature as the v1 payload), and its base64 header form.
2. x402_base_signed.json: payloads signed here, with eth-account, by deterministic TEST keys
   (private key = keccak256 of a fixed label; never a real wallet) on the Base mainnet USDC
   EIP-712 domain ("USD Coin", version 2, chain 8453). Each entry says how it was made.

ECDSA signing is deterministic (RFC 6979), so running this again rewrites identical files.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak, to_checksum_address

from rails.x402 import TRANSFER_WITH_AUTHORIZATION_FIELDS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "x402"
SPEC = ROOT / "fixtures" / "raw" / "x402_exact_evm_base_sepolia_eip3009_spec.json"

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

BASE_CHAIN_ID = 8453
BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
BASE_DOMAIN = {
    "name": "USD Coin",
    "version": "2",
    "chainId": BASE_CHAIN_ID,
    "verifyingContract": BASE_USDC,
}

PAYER_KEY = keccak(text="railproof x402 test payer #1")
OTHER_KEY = keccak(text="railproof x402 test payer #2")
PAY_TO = to_checksum_address(keccak(text="railproof x402 test treasury")[-20:])
VALID_AFTER = 1767225600  # 2026-01-01T00:00:00Z
VALID_BEFORE = VALID_AFTER + 3600
NOW = VALID_AFTER + 600  # a clock inside the window, for tests

TYPES = {"TransferWithAuthorization": TRANSFER_WITH_AUTHORIZATION_FIELDS}


def nonce(i: int) -> str:
    return "0x" + keccak(text=f"railproof x402 test nonce #{i}").hex()


def authorization(key: bytes, value: int, n: int) -> dict[str, str]:
    return {
        "from": Account.from_key(key).address,
        "to": PAY_TO,
        "value": str(value),
        "validAfter": str(VALID_AFTER),
        "validBefore": str(VALID_BEFORE),
        "nonce": nonce(n),
    }


def sign(key: bytes, auth: dict[str, str], domain: dict[str, Any]) -> bytes:
    message = {
        **auth,
        "value": int(auth["value"]),
        "validAfter": int(auth["validAfter"]),
        "validBefore": int(auth["validBefore"]),
        "nonce": bytes.fromhex(auth["nonce"][2:]),
    }
    return bytes(Account.sign_typed_data(key, domain, TYPES, message).signature)


def v1(auth: dict[str, str], signature: bytes) -> dict[str, Any]:
    return {
        "x402Version": 1,
        "scheme": "exact",
        "network": "base",
        "payload": {"signature": "0x" + signature.hex(), "authorization": auth},
    }


def v2(auth: dict[str, str], signature: bytes) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "accepted": {
            "scheme": "exact",
            "network": f"eip155:{BASE_CHAIN_ID}",
            "asset": BASE_USDC,
            "payTo": PAY_TO,
            "amount": auth["value"],
            "maxTimeoutSeconds": 60,
            "extra": {"name": "USD Coin", "version": "2"},
        },
        "payload": {"signature": "0x" + signature.hex(), "authorization": auth},
    }


def high_s_twin(signature: bytes) -> bytes:
    """The same ECDSA signature in its other (malleable) encoding: s' = n - s, v flipped."""
    s = int.from_bytes(signature[32:64], "big")
    v = 55 - signature[64]  # 27 <-> 28
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((v,))


def signed_payloads() -> dict[str, Any]:
    auth1 = authorization(PAYER_KEY, 10000, 1)
    sig1 = sign(PAYER_KEY, auth1, BASE_DOMAIN)
    auth2 = authorization(OTHER_KEY, 20000, 2)
    sig2 = sign(OTHER_KEY, auth2, BASE_DOMAIN)
    auth3 = authorization(PAYER_KEY, 10000, 3)
    sig3 = sign(PAYER_KEY, auth3, {**BASE_DOMAIN, "name": "USDC"})
    entries = {
        "valid_v1": (
            "payer #1 signs 10000 to the treasury on the Base USDC domain; v1 shape",
            v1(auth1, sig1),
        ),
        "valid_v2": (
            "the same authorization and signature in the v2 shape (accepted.*)",
            v2(auth1, sig1),
        ),
        "valid_v_01": (
            "valid_v1 with the signature's v byte written as 0/1 instead of 27/28",
            v1(auth1, sig1[:64] + bytes((sig1[64] - 27,))),
        ),
        "high_s_twin": (
            "valid_v1's signature in its malleable form (s = n - s, v flipped): "
            "ecrecover gives the same payer, FiatToken's ECRecover refuses it",
            v1(auth1, high_s_twin(sig1)),
        ),
        "valid_payer2_20000": (
            "payer #2 signs 20000 to the treasury on the Base USDC domain; v2",
            v2(auth2, sig2),
        ),
        "wrong_domain_name": (
            "payer #1 signs on chain 8453 but with domain name 'USDC' (the "
            "Base Sepolia token's name): recovers another address on Base",
            v1(auth3, sig3),
        ),
    }
    return {
        "made_by": "scripts/make_x402_payloads.py",
        "how": (
            "signed with eth-account Account.sign_typed_data by deterministic test keys "
            "(keccak256 of 'railproof x402 test payer #1' / '#2'); domain "
            f"{json.dumps(BASE_DOMAIN)}; window [{VALID_AFTER}, {VALID_BEFORE})"
        ),
        "network": "base",
        "chain_id": BASE_CHAIN_ID,
        "asset": BASE_USDC,
        "pay_to": PAY_TO,
        "now": NOW,
        "payers": {
            "#1": Account.from_key(PAYER_KEY).address,
            "#2": Account.from_key(OTHER_KEY).address,
        },
        "payloads": {name: {"how": how, "payload": doc} for name, (how, doc) in entries.items()},
    }


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    spec_v2 = json.loads(SPEC.read_text())["data"]["v2_payment_payload"]
    write_json(OUT / "x402_base_sepolia_payload_v2.json", spec_v2)
    header = base64.b64encode(json.dumps(spec_v2, separators=(",", ":")).encode()).decode()
    (OUT / "x402_base_sepolia_payload_v2.b64").write_text(header)
    write_json(OUT / "x402_base_signed.json", signed_payloads())


if __name__ == "__main__":
    main()
