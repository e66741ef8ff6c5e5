"""Fingerprint normalization per proof type, through the real adapters."""

import base64
import json
from pathlib import Path

import pytest

from rails import adapter_for
from rails.base import fingerprint
from rails.errors import ProofMalformed
from registry.catalog import RailOverrides, load_catalog

FIX = Path(__file__).resolve().parent.parent / "fixtures"
SIG = "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"


def adapter(rail_id, **o):
    return adapter_for(load_catalog().resolve(rail_id, RailOverrides(**o)))


def test_solana_signature_kept_as_given_and_must_be_64_bytes():
    a = adapter("solana_usdc")
    assert a.normalize_proof("solana_tx_signature", SIG) == SIG
    for bad in (SIG[:-10], SIG + "1", "0OIl" + SIG[4:], "", "not base58 at all!"):
        with pytest.raises(ProofMalformed):
            a.normalize_proof("solana_tx_signature", bad)
    # base58 is case-sensitive: a case-folded signature is another (or no) signature.
    with pytest.raises(ProofMalformed):
        a.normalize_proof("solana_tx_signature", SIG.lower())


def test_evm_hash_folds_case():
    a = adapter("evm_usdc")
    h = "0x225853C513C75A4276979841A480AD1856BC649C496C16765107CB5D62D1DEF7"
    assert a.normalize_proof("evm_tx_hash", h) == h.lower()
    assert fingerprint(
        "evm", "ethereum", "evm_tx_hash", a.normalize_proof("evm_tx_hash", h)
    ) == fingerprint("evm", "ethereum", "evm_tx_hash", a.normalize_proof("evm_tx_hash", h.lower()))
    for bad in (h[:-1], h[2:] + "00", "0x" + "g" * 64):
        with pytest.raises(ProofMalformed):
            a.normalize_proof("evm_tx_hash", bad)


def test_x402_reduces_to_chain_asset_from_nonce_for_json_and_header_forms():
    a = adapter("x402", network="base-sepolia")
    text = (FIX / "x402" / "x402_base_sepolia_payload_v1.json").read_text()
    header = base64.b64encode(text.encode()).decode()
    want = (
        "84532:0x036cbd53842c5426634e7929541ec2318f3dcf7e:"
        "0x857b06519e91e3a54538791bdbb0e22373e36b66:"
        "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"
    )
    assert a.normalize_proof("x402_payment_payload", text) == want
    assert a.normalize_proof("x402_payment_payload", header) == want
    reformatted = json.dumps(json.loads(text), indent=4)
    assert a.normalize_proof("x402_payment_payload", reformatted) == want


def test_fingerprint_is_canonical_and_leaves_the_owner_out():
    fp = fingerprint("solana", "solana-mainnet", "solana_tx_signature", SIG)
    assert len(fp) == 64
    assert fp != fingerprint("solana", "solana-devnet", "solana_tx_signature", SIG)
    import hashlib

    doc = json.dumps(
        {
            "family": "solana",
            "network": "solana-mainnet",
            "proof_type": "solana_tx_signature",
            "ref": SIG,
            "v": 1,
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    assert fp == hashlib.sha256(doc.encode()).hexdigest()
