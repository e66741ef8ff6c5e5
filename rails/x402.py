"""x402 exact scheme on EVM: an EIP-3009 `transferWithAuthorization` signed by the payer.

The proof is the x402 PaymentPayload, as JSON text or as the base64 `X-PAYMENT` header value,
in either protocol shape:

    v1  {"x402Version": 1, "scheme": "exact", "network": "base-sepolia",
         "payload": {"signature": "0x…", "authorization": {from, to, value, validAfter,
                                                           validBefore, nonce}}}
    v2  {"x402Version": 2, "accepted": {"scheme": "exact", "network": "eip155:84532",
         "asset": "0x…", "payTo": "0x…", "amount": "…", …}, "payload": {…same…}}

Verification is offline: the signed authorization is the payment, and the token will execute
exactly what it says. Checks run in this fixed order, each one small function, one code:

    1. scheme is "exact"                                   chain_mismatch
    2. the payload's network is the rail's chain           chain_mismatch
    3. the asset is the expected token                     wrong_asset
    4. authorization.to is the session's recipient         wrong_recipient
    5. authorization.value is the session's amount         amount_mismatch
    6. the EIP-712 signature recovers to authorization.from,
       under the token domain PINNED by the rail           signature_invalid
    7. authorization.from is the named payer (if any)      sender_mismatch
    8. no reference or memo asked (none can be signed)     reference_missing / memo_mismatch
                                                           (requires_review)
    9. validAfter <= now                                   authorization_not_yet_valid
       (pending while it will be valid inside the session, failed otherwise)
   10. submitted < validBefore                             authorization_expired
   11. submitted by the session's expiry                   session_expired
   12. live chain only: authorizationState(from, nonce)
       unused, now past validBefore (+ a margin), and the
       newest final block stamped at validBefore or later  authorization_expired
       ... the node's latest block stamped before it       pending rpc_unavailable
       ... only blocks not final yet stamped after it      pending not_final
       ... but the token's logs show it settled            as used (below); paying other
                                                           funds: pending rpc_unavailable
       used: the AuthorizationUsed log's transaction moved
       other funds, or the payer cancelled the nonce       nonce_reused
       ... in a block no longer the chain's at its height  pending reorged
       ... in a block not final yet                        pending not_final
       used, but the node serves neither yet               pending rpc_unavailable
       settled in a block that is no longer the chain's
       block at its height (a node behind a reorg)         pending reorged
       settled in a block older than the session (+ 30 s)  session_not_open
       ... in a block not final yet                        pending not_final

Checks 1–11 read only the signed payload (and the clock): no chain state changes them, so
they fail at once. A failure read from the chain's blocks (a settlement's, a cancellation's,
an unused nonce's past validBefore) is definitive only once that block is final under the
rail's policy (the settlement's own reads; for the unused nonce, the newest final block's
time, read only past validBefore); before that it is `pending not_final`, its detail naming
the failure it will become, and the worker asks again.

`now` is the clock of this check; `submitted` is when the proof was submitted (Terms.
submitted_at, or now). A pending proof checked again after validBefore is still the payment
it was when submitted in time: settled, it verifies; unused, it never will.

Amount and recipient come before the signature on purpose: a tampered `value` against an
unchanged session is reported as the business mismatch it is (amount_mismatch); a tampered
value that happens to match what the session asks (or an at-least session) falls through to
the signature, which no longer recovers the payer (signature_invalid).

The fast path computes the EIP-712 digest with a precomputed domain separator and one keccak
over the fixed 32-byte struct encoding, and recovers the key with libsecp256k1 (coincurve).
`recover_signer_eth_account` is the slow reference path (eth-account) kept for tests.

The normalized proof (the fingerprint's ref) is `chain_id:asset:from:nonce`, lower-cased:
EIP-3009's on-chain replay unit — a token accepts each (from, nonce) once.

Settlement is the facilitator's transaction: the token's `AuthorizationUsed(authorizer,
nonce)` log leads to it, and its receipt must hold the matching `Transfer`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from coincurve import PublicKey
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address

from rails.base import (
    Adapter,
    Check,
    Finding,
    InflowScan,
    Observed,
    PaymentRequirements,
    SessionShape,
    Settlement,
    Terms,
    Transport,
    Verdict,
    eip3009_key,
    first_finding,
)
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed
from rails.jsontext import RepeatedName, loads_unique
from registry.catalog import Rail, load_catalog

PROOF_TYPE = "x402_payment_payload"
SCHEME_EXACT = "exact"

# A real payload is well under 2 KB (v2 with a resource description); refuse anything that
# could only be an attempt to make us parse a lot.
MAX_PROOF_CHARS = 16 * 1024
MAX_SIGNATURE_BYTES = 1024  # ERC-6492 wrapped signatures are longer than 65 bytes, not huge

# How long past validBefore an unused nonce still waits for a block stamped in time.
EXPIRY_MARGIN_S = 60
# How much older than its session a settlement block's timestamp may be. An x402 payment is
# settled seconds after its session opened, an L2 block's timestamp is its slot's (it can
# precede the transaction's arrival by a block time), and our clock is not the chain's; a
# settlement older than this was mined before the session existed.
SETTLEMENT_CLOCK_MARGIN_S = 30

UINT256_MAX = (1 << 256) - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2

TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak(
    b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
    b"uint256 validBefore,bytes32 nonce)"
)
EIP712_DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
# EIP-3009's struct as EIP-712 typed data (the reference path and the fixture generator).
TRANSFER_WITH_AUTHORIZATION_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
# authorizationState(address,bytes32) -> bool
AUTHORIZATION_STATE_SELECTOR = keccak(b"authorizationState(address,bytes32)")[:4]
AUTHORIZATION_USED_TOPIC = "0x" + keccak(b"AuthorizationUsed(address,bytes32)").hex()
AUTHORIZATION_CANCELED_TOPIC = "0x" + keccak(b"AuthorizationCanceled(address,bytes32)").hex()
TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()

_ZERO12 = b"\x00" * 12


# -- decoded payment ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authorization:
    """EIP-3009 TransferWithAuthorization fields, decoded to bytes and ints."""

    from_: bytes  # 20 bytes
    to: bytes  # 20 bytes
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes  # 32 bytes


@dataclass(frozen=True, slots=True)
class Payment:
    """One decoded x402 exact-scheme payload (either protocol version)."""

    version: int
    scheme: str
    network: str  # as the payload names it: "base-sepolia" (v1) or "eip155:84532" (v2)
    chain_id: int | None  # None: a network we cannot map to an EVM chain
    asset: bytes | None  # v2 names its token (accepted.asset); v1 implies it by network
    authorization: Authorization
    signature: bytes


def decode_proof(raw: str) -> dict[str, Any]:
    """The payload document from JSON text or a base64 `X-PAYMENT` value; raises ProofMalformed."""
    if not isinstance(raw, str):
        raise ProofMalformed("proof", "must be a string (payload JSON or base64 header value)")
    if len(raw) > MAX_PROOF_CHARS:
        raise ProofMalformed("proof", f"longer than {MAX_PROOF_CHARS} characters")
    text = raw.strip()
    if not text:
        raise ProofMalformed("proof", "empty")
    try:
        body = text.encode() if text[0] == "{" else _unbase64(text)
    except UnicodeEncodeError as e:  # lone surrogates cannot be a payload
        raise ProofMalformed("proof", "not valid UTF-8 text") from e
    if text[0] != "{" and not _utf8(body):
        # Base64 of something that is not text (a transaction hash's digits read as base64):
        # no payload's encoding.
        raise ProofMalformed("proof", "neither payload JSON nor the base64 of one")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ProofMalformed("proof", f"not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise ProofMalformed("proof", "the payload must be a JSON object")
    _refuse_repeated_keys(body)
    return doc


def _refuse_repeated_keys(body: bytes) -> None:
    # SECURITY: a name given twice ({"to": A, ..., "to": B}) is read as its last value here and
    # as its first by some parsers (or refused, by serde): a facilitator, a log reader or an
    # operator could see another payment than the one verified. One reading only.
    try:
        loads_unique(body)
    except RepeatedName as e:
        raise ProofMalformed("proof", f"the name {e.path!r} is given twice") from None
    except RecursionError:  # orjson reads 1023 levels; this reader, the interpreter's limit
        raise ProofMalformed("proof", "nested too deeply") from None
    except ValueError:  # orjson read it already; only an over-long number lands here
        raise ProofMalformed("proof", "not valid JSON") from None


def _utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unbase64(text: str) -> bytes:
    # Headers are standard base64; tolerate the URL-safe alphabet and dropped padding.
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ProofMalformed("proof", "neither JSON nor valid base64") from None


def parse_payment(doc: Mapping[str, Any]) -> Payment:
    """Shape-check an x402 payload document (v1 or v2); raises ProofMalformed."""
    version = doc.get("x402Version")
    if version == 1 and type(version) is int:
        scheme = _str(doc, "scheme", "scheme")
        network = _str(doc, "network", "network")
        chain_id = _legacy_chain_id(network)
        asset = None
    elif version == 2 and type(version) is int:
        accepted = doc.get("accepted")
        if not isinstance(accepted, dict):
            raise ProofMalformed("accepted", "a v2 payload needs an `accepted` object")
        scheme = _str(accepted, "scheme", "accepted.scheme")
        network = _str(accepted, "network", "accepted.network")
        chain_id = _caip2_chain_id(network)
        asset = _address(accepted.get("asset"), "accepted.asset")
    else:
        raise ProofMalformed("x402Version", "must be 1 or 2")
    inner = doc.get("payload")
    if not isinstance(inner, dict):
        raise ProofMalformed("payload", "must be an object with signature and authorization")
    auth = inner.get("authorization")
    if not isinstance(auth, dict):
        raise ProofMalformed(
            "payload.authorization", "missing (only EIP-3009 payloads are accepted)"
        )
    return Payment(
        version=version,
        scheme=scheme,
        network=network,
        chain_id=chain_id,
        asset=asset,
        authorization=Authorization(
            from_=_address(auth.get("from"), "authorization.from"),
            to=_address(auth.get("to"), "authorization.to"),
            value=_uint256(auth.get("value"), "authorization.value"),
            valid_after=_uint256(auth.get("validAfter"), "authorization.validAfter"),
            valid_before=_uint256(auth.get("validBefore"), "authorization.validBefore"),
            nonce=_hex_bytes(auth.get("nonce"), "authorization.nonce", exact=32),
        ),
        signature=_hex_bytes(
            inner.get("signature"), "payload.signature", limit=MAX_SIGNATURE_BYTES
        ),
    )


def _str(obj: Mapping[str, Any], key: str, field: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ProofMalformed(field, "must be a non-empty string")
    return value


def _address(value: Any, field: str) -> bytes:
    """The 20 bytes of `0x` + exactly 40 hex digits: the shape normalize_address (the EVM
    rail's parser) takes, without the checksum work a payload's bytes do not need."""
    try:
        return _hex_bytes(value, field, exact=20)
    except ProofMalformed:
        raise ProofMalformed(field, "must be 0x followed by 40 hex digits") from None


def _uint256(value: Any, field: str) -> int:
    # x402 sends uint256 fields as decimal strings; plain JSON integers are tolerated.
    # int() alone would also accept " 1", "+1", "1_000": only bare digits are amounts.
    if type(value) is int:
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 78:
        number = int(value)
    else:
        raise ProofMalformed(field, "must be a uint256 as a decimal string")
    if not 0 <= number <= UINT256_MAX:
        raise ProofMalformed(field, "out of uint256 range")
    return number


def _hex_bytes(value: Any, field: str, exact: int | None = None, limit: int | None = None) -> bytes:
    if not isinstance(value, str) or value[:2] not in ("0x", "0X"):
        raise ProofMalformed(field, "must be 0x-prefixed hex")
    try:
        data = bytes.fromhex(value[2:])
    except ValueError:
        raise ProofMalformed(field, "must be 0x-prefixed hex") from None
    # bytes.fromhex skips whitespace: "0x" + 38 digits + two spaces would be a 19-byte address.
    if len(value) != 2 + 2 * len(data):
        raise ProofMalformed(field, "must be 0x-prefixed hex, without spaces")
    if exact is not None and len(data) != exact:
        raise ProofMalformed(field, f"must be {exact} bytes")
    if limit is not None and not 0 < len(data) <= limit:
        raise ProofMalformed(field, f"must be 1 to {limit} bytes")
    return data


@lru_cache(maxsize=1)
def _legacy_networks() -> dict[str, int]:
    # v1 names networks the way the catalog does ("base", "base-sepolia").
    return {name: n.chain_id for name, n in load_catalog().networks.items() if n.chain_id}


def _legacy_chain_id(network: str) -> int | None:
    return _legacy_networks().get(network)


def _caip2_chain_id(network: str) -> int | None:
    namespace, _, reference = network.partition(":")
    if namespace != "eip155" or not reference.isascii() or not reference.isdigit():
        return None
    return int(reference)


# -- EIP-712 digest and signer recovery --------------------------------------------------


@lru_cache(maxsize=64)
def domain_separator(name: str, version: str, chain_id: int, verifying_contract: bytes) -> bytes:
    """hashStruct(EIP712Domain), computed once per (token domain, chain, contract)."""
    return keccak(
        EIP712_DOMAIN_TYPEHASH
        + keccak(name.encode())
        + keccak(version.encode())
        + chain_id.to_bytes(32, "big")
        + _ZERO12
        + verifying_contract
    )


def authorization_digest(auth: Authorization, separator: bytes) -> bytes:
    """keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(TransferWithAuthorization)).

    Every struct field is static, so its ABI encoding is plain 32-byte words."""
    struct_hash = keccak(
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH
        + _ZERO12
        + auth.from_
        + _ZERO12
        + auth.to
        + auth.value.to_bytes(32, "big")
        + auth.valid_after.to_bytes(32, "big")
        + auth.valid_before.to_bytes(32, "big")
        + auth.nonce
    )
    return keccak(b"\x19\x01" + separator + struct_hash)


def recover_signer(digest: bytes, signature: bytes) -> tuple[bytes | None, str]:
    """The 20-byte address that signed `digest`, or (None, why not)."""
    if len(signature) != 65:
        return None, (
            f"signature is {len(signature)} bytes; only 65-byte EOA signatures "
            "can be verified offline"
        )
    v = signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        return None, "signature v must be 27/28 (or 0/1)"
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < r < SECP256K1_N:
        return None, "signature r out of range"
    # SECURITY: reject malleable high-s signatures, as the token's ECRecover does: a second
    # valid-looking encoding of one signature must not pass as a different proof.
    if not 0 < s <= SECP256K1_HALF_N:
        return None, "signature s is not in the lower half of the curve order (malleable)"
    try:
        public = PublicKey.from_signature_and_message(
            signature[:64] + bytes((v,)), digest, hasher=None
        )
    except (ValueError, TypeError):
        return None, "no public key recovers from this signature"
    return keccak(public.format(compressed=False)[1:])[12:], ""


def recover_signer_eth_account(
    authorization: Mapping[str, Any],
    signature: str,
    name: str,
    version: str,
    chain_id: int,
    verifying_contract: str,
) -> str:
    """Reference (slow) path: eth-account's EIP-712 encoding and recovery. Used by tests to
    show the fast path agrees; returns the checksum address eth-account recovers."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": TRANSFER_WITH_AUTHORIZATION_FIELDS,
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": name,
            "version": version,
            "chainId": chain_id,
            "verifyingContract": verifying_contract,
        },
        "message": {
            "from": authorization["from"],
            "to": authorization["to"],
            "value": int(authorization["value"]),
            "validAfter": int(authorization["validAfter"]),
            "validBefore": int(authorization["validBefore"]),
            "nonce": authorization["nonce"],
        },
    }
    signer: str = Account.recover_message(
        encode_typed_data(full_message=typed), signature=signature
    )
    return signer


# -- the checks --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expect:
    """What one verification expects, resolved once from the rail and the terms."""

    chain_id: int
    network: str
    asset: bytes  # the token the session asks for (terms.asset or the rail's)
    implied_asset: bytes  # the token a v1 payload means: the rail's, for the rail's network
    recipient: bytes
    amount: int
    at_least: bool
    sender: bytes | None
    # Terms an authorization cannot carry (sessions refuse them on this rail); asked anyway,
    # they go to review rather than pass unchecked.
    reference: str | None
    memo: str | None
    now: int  # unix seconds
    # The moment validBefore is checked at: the proof's submission (or now). An authorization
    # submitted in time and settled stays paid when a pending proof is checked again later.
    submitted: int
    not_before: int | None  # the session's window (unix seconds), when it has one
    not_after: int | None
    # Submitted after the session's expiry, judged at the clock's full precision as the apply
    # gate judges it: in whole seconds, a proof handed over in the second of expiry verified
    # here and was refused by the gate for good, its transfer held by a proof never credited.
    submitted_late: bool
    separator: bytes  # the pinned domain's separator for (chain, asset)


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every x402 check reads: the decoded payment and what the session expects."""

    p: Payment
    e: Expect


def check_scheme(c: Ctx) -> Finding | None:
    p = c.p
    if p.scheme != SCHEME_EXACT:
        return Finding(
            FailureCode.chain_mismatch, f"scheme {p.scheme!r}: this rail settles only 'exact'"
        )
    return None


def check_network(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # SECURITY: an authorization signed for another chain pays there, not here.
    if p.chain_id != e.chain_id:
        return Finding(
            FailureCode.chain_mismatch,
            f"payload is for {p.network}, rail is {e.network} (chain {e.chain_id})",
        )
    return None


def check_asset(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # SECURITY: a payment in another token is not this payment. v2 names its token; v1 means
    # the rail's token on its network. (The signature's domain binds the token either way.)
    asset = p.asset if p.asset is not None else e.implied_asset
    if asset != e.asset:
        return Finding(FailureCode.wrong_asset, f"asset 0x{asset.hex()} is not 0x{e.asset.hex()}")
    return None


def check_recipient(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # SECURITY: the token moves funds to authorization.to, whatever else the payload says.
    if p.authorization.to != e.recipient:
        return Finding(
            FailureCode.wrong_recipient, f"authorization pays 0x{p.authorization.to.hex()}"
        )
    return None


def check_amount(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # SECURITY: the signed value is exactly what the token will transfer.
    value = p.authorization.value
    if value == e.amount or (e.at_least and value > e.amount):
        return None
    want = f"at least {e.amount}" if e.at_least else str(e.amount)
    return Finding(FailureCode.amount_mismatch, f"authorization value {value}, required {want}")


def check_signature(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # SECURITY: the domain is the rail's pinned one (name, version, chain, token), never the
    # payload's `extra`: a signature made for another domain recovers another address.
    digest = authorization_digest(p.authorization, e.separator)
    signer, why = recover_signer(digest, p.signature)
    if signer is None:
        return Finding(FailureCode.signature_invalid, why)
    if signer != p.authorization.from_:
        return Finding(
            FailureCode.signature_invalid,
            (f"signature recovers to 0x{signer.hex()}, not authorization.from"),
        )
    return None


def check_sender(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    if e.sender is not None and p.authorization.from_ != e.sender:
        return Finding(FailureCode.sender_mismatch, f"payer is 0x{p.authorization.from_.hex()}")
    return None


def check_no_binding(c: Ctx) -> Finding | None:
    e = c.e
    # SECURITY: EIP-3009 signs from, to, value, window and nonce, nothing else; a reference
    # or memo asked of it cannot be proven, so it is never `verified` as if it had been.
    if e.reference is not None:
        return Finding(
            FailureCode.reference_missing,
            "an x402 authorization carries no reference; the one asked cannot be proven",
            review=True,
        )
    if e.memo is not None:
        return Finding(
            FailureCode.memo_mismatch,
            "an x402 authorization carries no memo; the one asked cannot be proven",
            review=True,
        )
    return None


def check_valid_after(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # The token itself demands block.timestamp > validAfter; accepting equality here only
    # means settlement lands a second later.
    if p.authorization.valid_after > e.now:
        return Finding(
            FailureCode.authorization_not_yet_valid,
            (f"valid after {p.authorization.valid_after}, now {e.now}"),
        )
    return None


def check_valid_before(c: Ctx) -> Finding | None:
    p, e = c.p, c.e
    # SECURITY: an expired authorization can never settle (the token reverts). The clock is
    # the submission's, never earlier than the session (a proof is submitted to an open
    # session), so an old settlement cannot pay a session opened after its window.
    if e.submitted >= p.authorization.valid_before:
        return Finding(
            FailureCode.authorization_expired,
            (f"valid before {p.authorization.valid_before}, submitted {e.submitted}"),
        )
    return None


def check_session_open(c: Ctx) -> Finding | None:
    e = c.e
    # SECURITY: the payer hands the authorization over when it is submitted; handed over
    # after the session expired, it does not pay it (the price may be stale).
    if e.submitted_late:
        return Finding(
            FailureCode.session_expired,
            f"submitted at {e.submitted}, after the session expired ({e.not_after})",
        )
    return None


CHECKS: tuple[Check[Ctx], ...] = (
    check_scheme,
    check_network,
    check_asset,
    check_recipient,
    check_amount,
    check_signature,
    check_sender,
    check_no_binding,
    check_valid_after,
    check_valid_before,
    check_session_open,
)


def first_failure(p: Payment, e: Expect) -> Finding | None:
    return first_finding(CHECKS, Ctx(p, e))


# -- chain reads (live verification and settlement) --------------------------------------
#
# Settlement is an ordinary EVM token transfer, so receipts, Transfer logs, the chain head and
# the depth/reorg policy are the EVM rail's (rails.evm), imported where used: offline
# verification above needs none of it.


@dataclass(frozen=True, slots=True)
class SettlementTx:
    """The facilitator transaction that consumed one authorization."""

    tx_hash: str
    block_number: int
    block_hash: str
    to: bytes | None  # the Transfer that followed AuthorizationUsed (None: none found)
    value: int | None


def _word(hexstr: Any, what: str) -> int:
    """A node's hex number, as strictly as the EVM rail reads one: an empty "0x" (an
    eth_call to an address without code) is a malformed answer, not a zero."""
    from rails.evm import hex_int

    return hex_int(hexstr, what)


def authorization_used(chain: Transport, asset: bytes, auth_from: bytes, nonce: bytes) -> bool:
    """The token's `authorizationState(from, nonce)` (true: used or cancelled)."""
    data = AUTHORIZATION_STATE_SELECTOR + _ZERO12 + auth_from + nonce
    result = chain.call(
        "eth_call", [{"to": "0x" + asset.hex(), "data": "0x" + data.hex()}, "latest"]
    )
    return _word(result, "authorizationState") != 0


def _nonce_logs(
    chain: Transport, topic: str, asset: bytes, auth_from: bytes, nonce: bytes
) -> list[dict[str, Any]]:
    """The token's canonical logs of one (authorizer, nonce) event: AuthorizationUsed or
    AuthorizationCanceled."""
    # Both event arguments are indexed, so the filter is exact; a node that refuses the
    # whole-history range answers an error, which stays a transient transport failure.
    logs = chain.call(
        "eth_getLogs",
        [
            {
                "address": "0x" + asset.hex(),
                "topics": [topic, "0x" + (_ZERO12 + auth_from).hex(), "0x" + nonce.hex()],
                "fromBlock": "0x0",
                "toBlock": "latest",
            }
        ],
    )
    if not isinstance(logs, list):
        raise MalformedResponse(f"eth_getLogs: expected a list, got {type(logs).__name__}")
    # SECURITY: a removed log belongs to a block that left the canonical chain.
    return [lg for lg in logs if isinstance(lg, dict) and lg.get("removed") is not True]


def find_settlement(
    chain: Transport, asset: bytes, auth_from: bytes, nonce: bytes
) -> SettlementTx | None:
    """The successful transaction that used (from, nonce), via the token's AuthorizationUsed log.

    None when this node shows none: the nonce is unused, or cancelled, or the node has not
    caught up with it (no log yet, a log whose receipt it does not serve yet or that does not
    hold the log). Only a settlement it shows tells where the money went."""
    from rails.evm import check_token_transfers, parse_receipt

    live = _nonce_logs(chain, AUTHORIZATION_USED_TOPIC, asset, auth_from, nonce)
    if not live:
        return None
    tx_hash = live[0].get("transactionHash")
    if not isinstance(tx_hash, str):
        raise MalformedResponse("eth_getLogs: log without transactionHash")
    raw = chain.call("eth_getTransactionReceipt", [tx_hash])
    if raw is None:
        return None  # a load-balanced node a block behind the one that served the log
    receipt = parse_receipt(raw, tx_hash)
    # A reverted transaction consumed nothing and logged nothing: a log naming one, or a
    # receipt without the log, is a node that disagrees with itself, not an answer.
    if not receipt.success or not _holds_authorization_used(receipt.logs, asset, auth_from, nonce):
        return None
    # A Transfer of the token no ERC-20 can emit would read as a settlement paying nothing.
    check_token_transfers(receipt.logs, "0x" + asset.hex())
    to, value = transfer_after_authorization(receipt.logs, asset, auth_from, nonce)
    return SettlementTx(
        receipt.tx_hash, receipt.block_number, receipt.block_hash.lower(), to, value
    )


def authorization_cancelled(
    chain: Transport, asset: bytes, auth_from: bytes, nonce: bytes
) -> tuple[int, str] | None:
    """Where the payer cancelled (from, nonce): the (block number, block hash) of the token's
    AuthorizationCanceled log, or None when this node shows none."""
    from rails.evm import hex_int

    logs = _nonce_logs(chain, AUTHORIZATION_CANCELED_TOPIC, asset, auth_from, nonce)
    if not logs:
        return None
    number, block_hash = logs[0].get("blockNumber"), logs[0].get("blockHash")
    if not isinstance(block_hash, str):
        raise MalformedResponse("eth_getLogs: log without blockHash")
    return hex_int(number, "log.blockNumber"), block_hash.lower()


def _authorization_used_topics(auth_from: bytes, nonce: bytes) -> list[str]:
    return [AUTHORIZATION_USED_TOPIC, "0x" + (_ZERO12 + auth_from).hex(), "0x" + nonce.hex()]


def _holds_authorization_used(
    logs: Iterable[Any], asset: bytes, auth_from: bytes, nonce: bytes
) -> bool:
    wanted = _authorization_used_topics(auth_from, nonce)
    return any(
        isinstance(lg, dict)
        and str(lg.get("address", "")).lower() == "0x" + asset.hex()
        and [str(t).lower() for t in lg.get("topics") or []] == wanted
        for lg in logs
    )


def transfer_after_authorization(
    logs: Iterable[Any],
    asset: bytes,
    auth_from: bytes,
    nonce: bytes,
) -> tuple[bytes | None, int | None]:
    """The token's Transfer(from → to, value) emitted right after AuthorizationUsed(from, nonce).

    EIP-3009 tokens (FiatToken v2) mark the authorization used and then transfer, so the pair
    is adjacent among the token's logs; taking the adjacent Transfer keeps a transaction that
    settles several authorizations unambiguous."""
    from rails.evm import decode_transfer

    asset_hex = "0x" + asset.hex()
    wanted = _authorization_used_topics(auth_from, nonce)
    ours = [
        lg
        for lg in logs
        if isinstance(lg, dict) and str(lg.get("address", "")).lower() == asset_hex
    ]
    for i, lg in enumerate(ours[:-1]):
        if [str(t).lower() for t in lg.get("topics") or []] != wanted:
            continue
        transfer = decode_transfer(ours[i + 1])
        if transfer is not None and transfer.sender.lower() == "0x" + auth_from.hex():
            return bytes.fromhex(transfer.recipient[2:]), transfer.value
    return None, None


class _SweepHead:
    """The chain head (and finalized block), read at most once per sweep and only when a
    settlement needs it."""

    def __init__(self, chain: Transport, rail: Rail):
        self.chain = chain
        self.rail = rail
        self._head: Any = None

    def get(self) -> Any:
        from rails.evm import read_head

        if self._head is None:
            self._head = read_head(self.chain, self.rail.finality)
        return self._head


def _where(
    ref: str, block_number: int, block_hash: str, chain: Transport, head: _SweepHead, rail: Rail
) -> tuple[Settlement, dict[str, Any] | None]:
    """How final a block the token's logs name is (the EVM rail's depth, finalized-tag and
    reorg policy: the canonical hash at its height must still be its hash), and the canonical
    block at its height (None: the node has none there yet)."""
    from rails.evm import read_block, settlement_for_receipt

    block = read_block(chain, block_number)
    canonical = block["hash"] if block is not None else None
    s = settlement_for_receipt(ref, block_number, block_hash, canonical, head.get(), rail.finality)
    return s, block


def _settlement(
    ref: str, tx: SettlementTx, chain: Transport, head: _SweepHead, rail: Rail
) -> Settlement:
    """How final the settlement transaction is: the EVM rail's depth, finalized-tag and reorg
    policy (the canonical hash at the receipt's height must still be the receipt's block),
    and when its block was stamped (None: the node gave no timestamp)."""
    from rails.evm import unix_time

    s, block = _where(ref, tx.block_number, tx.block_hash, chain, head, rail)
    to = f"0x{tx.to.hex()}" if tx.to is not None else "?"
    # SECURITY: only the block that holds the settlement dates it; the canonical block at the
    # height of a reorged one is another block, whose time says nothing about the settlement.
    stamp = block.get("timestamp") if block is not None and not s.reorged else None
    return s.model_copy(
        update={
            "detail": f"settled by {tx.tx_hash} (transfer to {to}, value {tx.value}); {s.detail}",
            "tx_hash": tx.tx_hash.lower(),
            # The apply gate checks a settlement found after verification against the
            # session's window with this time: the same rule as _verify_on_chain's.
            "block_time": unix_time(_word(stamp, "block.timestamp"), "block.timestamp")
            if stamp is not None
            else None,
        }
    )


def _spent_for_good(where: Settlement, said: str, observed: Observed) -> Verdict:
    """`nonce_reused` for what the chain shows in `where`'s block, once that block is final."""
    # SECURITY: failed is final, and only the canonical chain's final word is a fact: a node
    # behind a reorg serves a fork's logs (the nonce may be spent on nothing the chain has),
    # and a block not final yet may be replaced by one where this payment takes the nonce
    # first (the other transfer or the cancellation then reverts).
    if where.reorged:
        return Verdict.wait(
            FailureCode.reorged,
            f"{said}, in a block that is no longer the chain's block at its height "
            f"({where.detail}): asked again",
            observed=observed,
        )
    return Finding(FailureCode.nonce_reused, said).verdict_once_final(where, observed)


def _used_unseen(
    chain: Transport, e: Expect, a: Authorization, observed: Observed, rail: Rail
) -> Verdict:
    """authorizationState says used, yet the node shows no settlement: cancelled by the payer
    (nothing will pay, once final), or a node behind itself (its logs or receipts lag its
    state)."""
    cancelled = authorization_cancelled(chain, e.asset, a.from_, a.nonce)
    if cancelled is not None:
        where, _ = _where(
            _ref(e.chain_id, e.asset, a), *cancelled, chain, _SweepHead(chain, rail), rail
        )
        return _spent_for_good(
            where, "nonce cancelled on chain by its payer (AuthorizationCanceled)", observed
        )
    # SECURITY: failed is final, and this may be the payment itself, settled a block ago:
    # only a settlement the chain shows moving other funds, or a cancellation, fails it.
    return Verdict.wait(
        FailureCode.rpc_unavailable,
        "nonce used on chain, but the node serves no settlement or cancellation of it yet",
        observed=observed,
    )


def _latest_time(chain: Transport) -> int | None:
    """The timestamp of the node's latest block (None: it gave none)."""
    block = chain.call("eth_getBlockByNumber", ["latest", False])
    if not isinstance(block, dict) or block.get("timestamp") is None:
        return None
    return _word(block["timestamp"], "block.timestamp")


def _final_time(chain: Transport, rail: Rail) -> tuple[int, int | None] | None:
    """The node's newest block final under the rail's policy (depth, or the `finalized` tag
    when it trusts it) and its timestamp (None: it gave none); None when no block is final."""
    from rails.evm import newest_final_block, read_block, read_head

    number = newest_final_block(rail.finality, read_head(chain, rail.finality))
    if number is None:
        return None
    block = read_block(chain, number)
    if block is None or block.get("timestamp") is None:
        return number, None
    return number, _word(block["timestamp"], "block.timestamp")


def _valid_later(failed: Finding, a: Authorization, e: Expect) -> bool:
    """An authorization not valid yet that becomes valid before it expires and while the
    session is open (the worker checks it again)."""
    return (
        failed.code is FailureCode.authorization_not_yet_valid
        and a.valid_after < a.valid_before
        and (e.not_after is None or a.valid_after <= e.not_after)
    )


def _unsettled(
    a: Authorization,
    e: Expect,
    observed: Observed,
    key: tuple[str, ...],
    head_time: Callable[[], int | None],
    final_time: Callable[[], tuple[int, int | None] | None],
) -> Verdict:
    """An authorization the chain has not used: payable until validBefore, then never.

    Checked again after validBefore (a pending proof, or a verified one the worker asks
    again), an unused nonce is definitive once a margin has passed and the node's newest
    FINAL block is stamped at validBefore or later (`final_time`: (number, timestamp), read
    only then): unused at the node's latest block, the nonce is unused at each of its
    ancestors, and no reorg replaces a final block. A block stamped before the deadline may
    reach the node late, and the chain's clock is not ours: a node whose latest block
    (`head_time`) is still before the deadline cannot know yet. Past it, with the deadline
    not final yet, a reorg may still bring a chain where the settlement landed in time:
    `pending not_final`, failed once final."""
    if e.now < a.valid_before:
        return Verdict.ok(
            "authorization verified; nonce unused on chain", observed=observed, transfer_keys=key
        )
    if e.now < a.valid_before + EXPIRY_MARGIN_S:
        return Verdict.wait(
            FailureCode.tx_not_found,
            f"nonce unused on chain at validBefore {a.valid_before}; waiting for a late block",
            observed=observed,
        )
    stamped = head_time()
    if stamped is None or stamped < a.valid_before:
        # SECURITY: failed is final; a node behind the deadline may still show it settled.
        return Verdict.wait(
            FailureCode.rpc_unavailable,
            f"nonce unused on a node whose latest block ({stamped}) is before validBefore "
            f"{a.valid_before}: it has not caught up",
            observed=observed,
        )
    # SECURITY: past validBefore the token reverts any settlement of it: nothing will pay.
    expired = Finding(
        FailureCode.authorization_expired,
        f"never settled: nonce unused on chain past validBefore {a.valid_before}, now {e.now}",
    )
    final = final_time()
    if final is not None and final[1] is not None and final[1] >= a.valid_before:
        return expired.verdict(observed)
    # SECURITY: failed is final, and the latest block is not: a reorg may replace it with a
    # chain where the facilitator's settlement, sent in time, sits in a block stamped before
    # validBefore. The deadline must be final before "unused" is.
    if final is None:
        said = "no block is final yet"
    elif final[1] is None:
        said = f"the newest final block, {final[0]}, has no timestamp yet"
    else:
        said = f"the newest final block, {final[0]}, is stamped {final[1]}, before validBefore"
    where = Settlement(ref=_ref(e.chain_id, e.asset, a), finality="confirmed", detail=said)
    return expired.verdict_once_final(where, observed)


# -- the adapter -------------------------------------------------------------------------


class X402Adapter:
    family: ClassVar[str] = "x402"
    # The exact scheme settles on EVM networks (the catalog's [families] entry says so too).
    network_family: ClassVar[str] = "evm"
    proof_types: ClassVar[tuple[str, ...]] = (PROOF_TYPE,)
    proof_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        PROOF_TYPE: ("payload JSON or base64 X-PAYMENT header (exact scheme, EIP-3009)",),
    }
    # The signed authorization is the payment: offline it verifies without any chain read.
    reads_chain: ClassVar[bool] = False
    binds_reference: ClassVar[bool] = False
    # The signed authorization binds payTo, value, window and nonce; a payer is optional.
    binds_payer: ClassVar[bool] = True
    requires_payer: ClassVar[bool] = False
    # The engine's answer when an authorization already backs another session: on chain a
    # nonce settles once, so a second session can never be paid by it.
    replay_code: ClassVar[FailureCode] = FailureCode.nonce_reused
    # The payer hands the authorization over inside the session; the facilitator settles it
    # when it does (checks 10 and 11 of the module's docstring).
    paid_at_submission: ClassVar[bool] = True
    chain_time_margin_s: ClassVar[int] = SETTLEMENT_CLOCK_MARGIN_S
    # A payment is its signed authorization, submitted by the resource server: there is
    # no unsubmitted transfer to find.
    # Only an EIP-3009 authorization pays an x402 session: an ordinary transfer of the token
    # (found through Base USDC) could not back one.
    paid_by: ClassVar[str | None] = "eip3009"
    inflow_scan: ClassVar[InflowScan | None] = None
    inflow_scan_gap: ClassVar[str] = (
        "an x402 payment is its signed authorization, which the resource server submits; "
        "its settlements are not listed from the chain"
    )

    def __init__(self, rail: Rail):
        if rail.chain_id is None or rail.eip712 is None:
            # A configuration mistake, caught when the adapter is built rather than as a
            # wrong verdict later: without a pinned domain no signature can be checked.
            raise ValueError(
                f"rail {rail.rail_id} on {rail.network}: x402 needs a chain id and a pinned "
                "EIP-712 token domain for the network"
            )
        self.rail = rail
        self.chain_id: int = rail.chain_id
        self._asset = _address(rail.asset, "asset")

    # -- proofs and addresses ------------------------------------------------------------

    def parse(self, raw: str) -> Payment:
        return parse_payment(decode_proof(raw))

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        if proof_type != PROOF_TYPE:
            raise ProofMalformed("proof_type", f"x402 takes {PROOF_TYPE}, not {proof_type!r}")
        p = self.parse(raw)
        if p.chain_id is None:
            raise ProofMalformed("network", f"{p.network!r} is not a known EVM network")
        asset = p.asset if p.asset is not None else self._implied_asset(p)
        a = p.authorization
        return f"{p.chain_id}:0x{asset.hex()}:0x{a.from_.hex()}:0x{a.nonce.hex()}"

    def _implied_asset(self, p: Payment) -> bytes:
        """A v1 payload names no token: it is the rail's token for the payload's network."""
        if p.chain_id == self.rail.chain_id:
            return self._asset
        known = load_catalog().rails.get(self.rail.rail_id)
        asset = known.assets.get(p.network) if known else None
        if not asset:
            raise ProofMalformed(
                "network", f"no known {self.rail.asset_symbol} token on {p.network!r}"
            )
        return _address(asset, "asset")

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        # The exact scheme pays EVM addresses: the EVM rail's parser (exactly 40 hex digits,
        # a mixed-case one with a valid EIP-55 checksum), in its checksum form.
        from rails.evm import normalize_evm_address

        return normalize_evm_address(address, field)

    def proof_of(self, transfer_key: str) -> str | None:
        # The normalized proof is `chain_id:asset:from:nonce`, the EIP-3009 identity's body.
        prefix = f"eip3009:{self.rail.chain_id}:"
        return transfer_key.removeprefix("eip3009:") if transfer_key.startswith(prefix) else None

    def new_reference(self, seed: bytes | None = None) -> str | None:
        # The authorization's nonce already makes every payment unique on chain.
        return None

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        return frozenset()

    # -- requirements --------------------------------------------------------------------

    def prepare(self, session: SessionShape, now: datetime | None = None) -> PaymentRequirements:
        """x402 (v2) PaymentRequirements for the session; the token domain is the pinned one."""
        domain = self.rail.eip712
        assert domain is not None  # checked in __init__
        moment = now or session.now or datetime.now(UTC)
        timeout = max(1, int((_aware(session.expires_at) - _aware(moment)).total_seconds()))
        asset = to_checksum_address(self.rail.asset)
        pay_to = self.normalize_address(session.recipient)
        data = {
            "scheme": SCHEME_EXACT,
            "network": f"eip155:{self.rail.chain_id}",
            "amount": str(session.amount),
            "maxAmountRequired": str(session.amount),  # the v1 name of the same field
            "asset": asset,
            "payTo": pay_to,
            "maxTimeoutSeconds": timeout,
            "extra": {"name": domain.name, "version": domain.version},
        }
        return PaymentRequirements(
            rail_id=self.rail.rail_id,
            network=self.rail.network,
            asset=asset,
            recipient=pay_to,
            amount=str(session.amount),
            data=data,
        )

    # -- verification --------------------------------------------------------------------

    def expect(self, terms: Terms) -> Expect:
        asset = _address(terms.asset, "asset") if terms.asset else self._asset
        domain = self.rail.eip712
        assert domain is not None and self.rail.chain_id is not None  # checked in __init__
        submitted = min(_aware(terms.now), _aware(terms.submitted_at or terms.now))
        return Expect(
            chain_id=self.rail.chain_id,
            network=self.rail.network,
            asset=asset,
            implied_asset=self._asset,
            recipient=_address(terms.recipient, "recipient"),
            amount=terms.amount,
            at_least=terms.at_least,
            sender=_address(terms.sender, "sender") if terms.sender else None,
            reference=terms.reference,
            memo=terms.memo,
            now=_epoch(terms.now),
            submitted=_epoch(submitted),
            not_before=_epoch(terms.not_before) if terms.not_before is not None else None,
            not_after=_epoch(terms.not_after) if terms.not_after is not None else None,
            submitted_late=terms.not_after is not None and submitted > _aware(terms.not_after),
            separator=domain_separator(domain.name, domain.version, self.rail.chain_id, asset),
        )

    def verify(self, proof: str, terms: Terms, chain: Transport) -> Verdict:
        try:
            p = self.parse(proof)
        except ProofMalformed as err:
            return Verdict.fail(FailureCode.proof_malformed, str(err))
        e = self.expect(terms)
        observed = _observed(p, e, self.rail.network)
        failed = first_failure(p, e)
        if failed is not None and _valid_later(failed, p.authorization, e):
            # The payer's clock ran ahead of ours: the same authorization will be valid while
            # the session is open, so it is not a failed payment, only an early one.
            return Verdict.wait(failed.code, failed.detail, observed=observed)
        if failed is not None:
            return failed.verdict(observed)
        a = p.authorization
        key = (
            eip3009_key(
                e.chain_id, "0x" + e.asset.hex(), "0x" + a.from_.hex(), "0x" + a.nonce.hex()
            ),
        )
        if chain.source != "live":
            # Offline, a nonce's use is known only from our own records (the engine's).
            return Verdict.ok(
                "authorization verified offline", observed=observed, transfer_keys=key
            )
        return self._verify_on_chain(p, e, chain, observed, key)

    def _verify_on_chain(
        self, p: Payment, e: Expect, chain: Transport, observed: Observed, key: tuple[str, ...]
    ) -> Verdict:
        from rails.evm import require_chain

        # A node of another chain would answer every nonce "unused": never a verdict.
        require_chain(chain, e.chain_id, self.rail)
        a = p.authorization
        if not authorization_used(chain, e.asset, a.from_, a.nonce):
            unsettled = _unsettled(
                a,
                e,
                observed,
                key,
                lambda: _latest_time(chain),
                lambda: _final_time(chain, self.rail),
            )
            expiring = FailureCode.authorization_expired
            if expiring not in (unsettled.code, unsettled.fails_once_final):
                return unsettled
            return self._expired_unless_settled(p, e, chain, observed, key, unsettled)
        tx = find_settlement(chain, e.asset, a.from_, a.nonce)
        if tx is None:
            return _used_unseen(chain, e, a, observed, self.rail)
        # SECURITY: a used nonce is this payment only if its settlement moved exactly these
        # funds; otherwise the payer spent the nonce on another authorization (for good once
        # that settlement's block is the canonical chain's and final).
        if tx.to != a.to or tx.value != a.value:
            where, _ = _where(
                _ref(e.chain_id, e.asset, a),
                tx.block_number,
                tx.block_hash,
                chain,
                _SweepHead(chain, self.rail),
                self.rail,
            )
            said = f"nonce already used on chain by {tx.tx_hash}, which did not make this transfer"
            return _spent_for_good(where, said, observed)
        return self._settled(p, e, chain, observed, key, tx)

    def _expired_unless_settled(
        self,
        p: Payment,
        e: Expect,
        chain: Transport,
        observed: Observed,
        key: tuple[str, ...],
        expired: Verdict,
    ) -> Verdict:
        """`expired` (the nonce read unused past validBefore: failed, or failing once the
        deadline is final) unless the token's logs show it settled: behind one load-balanced
        URL a member whose state lags answers "unused" while the others serve the
        settlement's log and receipt."""
        a = p.authorization
        # SECURITY: failed is final; the state read alone must not lose a settled payment.
        tx = find_settlement(chain, e.asset, a.from_, a.nonce)
        if tx is None:
            return expired
        if tx.to != a.to or tx.value != a.value:
            # Used by another transfer per the logs, unused per the state: no answer yet.
            return Verdict.wait(
                FailureCode.rpc_unavailable,
                f"nonce unused per authorizationState, but used by {tx.tx_hash} per the "
                "token's logs: the node disagrees with itself",
                observed=observed,
            )
        return self._settled(p, e, chain, observed, key, tx)

    def _settled(
        self,
        p: Payment,
        e: Expect,
        chain: Transport,
        observed: Observed,
        key: tuple[str, ...],
        tx: SettlementTx,
    ) -> Verdict:
        """The settlement that made exactly this transfer: its finality and its time."""
        a = p.authorization
        ref = _ref(e.chain_id, e.asset, a)
        settlement = _settlement(ref, tx, chain, _SweepHead(chain, self.rail), self.rail)
        stamped = settlement.block_time
        observed = observed.model_copy(
            update={
                "block_number": tx.block_number,
                "tx_hash": tx.tx_hash,
                "finality": settlement.finality,
                **({"block_time": stamped} if stamped is not None else {}),
            }
        )
        # SECURITY: a settlement in a block that is no longer the chain's (a node behind a
        # reorg) is no fact to judge the window by, nor a payment to verify: the authorization
        # may be settled again in another block, at another time. Asked again.
        if settlement.reorged:
            return Verdict.wait(
                FailureCode.reorged,
                f"the settlement's block is no longer the chain's block at its height "
                f"({settlement.detail}): asked again",
                observed=observed,
            )
        if e.not_before is not None:
            if stamped is None:
                # Real nodes always return it; without it the window cannot be checked.
                raise MalformedResponse(f"block {tx.block_number} has no timestamp")
            # SECURITY: a settlement is public once mined; one older than the session was a
            # payment made before it existed, which a session opened after cannot take.
            # Definitive only from a final block: one not final yet may be replaced by one
            # where the same authorization settles later, inside the window.
            when = int(stamped.timestamp())
            if when < e.not_before - SETTLEMENT_CLOCK_MARGIN_S:
                return Finding(
                    FailureCode.session_not_open,
                    f"settled by {tx.tx_hash} at {when}, before the session opened "
                    f"({e.not_before})",
                ).verdict_once_final(settlement, observed)
        return Verdict.ok(
            "authorization already settled on chain",
            observed=observed,
            settlement=settlement,
            transfer_keys=key,
        )

    # -- settlement ----------------------------------------------------------------------

    def finality(
        self,
        refs: list[str],
        chain: Transport,
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[Settlement]:
        """Settlement of each ref (`chain_id:asset:from:nonce`): the facilitator's transaction.

        A ref alone does not say where the money had to go; pass `expected` (ref → (payTo,
        amount)) to have a settlement that paid someone else reported as not ours."""
        from rails.evm import require_chain

        if not refs:
            return []
        # Every authorization looks unused on another chain's node: nothing is decided there.
        require_chain(chain, self.chain_id, self.rail)
        head = _SweepHead(chain, self.rail)
        return [self._settle_one(ref, chain, head, (expected or {}).get(ref)) for ref in refs]

    def _settle_one(
        self, ref: str, chain: Transport, head: _SweepHead, expected: tuple[str, int] | None
    ) -> Settlement:
        parts = ref.split(":")
        if len(parts) != 4 or parts[0] != str(self.rail.chain_id):
            return Settlement(
                ref=ref, finality="not_found", detail="not a ref of this rail's chain"
            )
        asset = _address(parts[1], "asset")
        auth_from = _address(parts[2], "from")
        nonce = _hex_bytes(parts[3], "nonce", exact=32)
        tx = find_settlement(chain, asset, auth_from, nonce)
        if tx is None:
            return Settlement(
                ref=ref, finality="not_found", detail="authorization not used on chain yet"
            )
        if tx.to is None:
            return Settlement(
                ref=ref,
                finality="not_found",
                detail=f"{tx.tx_hash} used the authorization without a Transfer",
            )
        if expected is not None:
            pay_to, amount = expected
            # SECURITY: the nonce may have been spent on another authorization of the payer.
            if tx.to != _address(pay_to, "recipient") or tx.value != amount:
                return Settlement(
                    ref=ref,
                    finality="not_found",
                    detail=(
                        f"nonce used by {tx.tx_hash} paying 0x{tx.to.hex()} {tx.value}, "
                        "not this payment"
                    ),
                )
        return _settlement(ref, tx, chain, head, self.rail)

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Transport:
        # Same JSON-RPC as any EVM rail: one transport implementation, with its retries.
        from rails.evm import EvmAdapter

        return EvmAdapter.live_transport(urls, network)


# -- small helpers -----------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _epoch(moment: datetime) -> int:
    # Floor to whole seconds, as block timestamps are; naive datetimes are UTC.
    return int(_aware(moment).timestamp() // 1)


def _ref(chain_id: int, asset: bytes, a: Authorization) -> str:
    return f"{chain_id}:0x{asset.hex()}:0x{a.from_.hex()}:0x{a.nonce.hex()}"


@lru_cache(maxsize=4096)
def checksum_address(address: bytes) -> str:
    """EIP-55 form of a 20-byte address. eth_utils' version validates its input at length
    (~25 µs); this sits on the verify hot path with already-decoded bytes."""
    body = address.hex()
    digest = keccak(body.encode()).hex()
    return "0x" + "".join(
        c.upper() if d in "89abcdef" else c for c, d in zip(body, digest, strict=False)
    )


def _observed(p: Payment, e: Expect, network: str) -> Observed:
    """Redacted evidence: what the authorization says, never the signature."""
    a = p.authorization
    asset = p.asset if p.asset is not None else e.implied_asset
    return Observed(
        amount=str(a.value),
        recipient=checksum_address(a.to),
        sender=checksum_address(a.from_),
        asset=checksum_address(asset),
        network=network if p.chain_id == e.chain_id else p.network,
        valid_after=a.valid_after,
        valid_before=a.valid_before,
        nonce="0x" + a.nonce.hex(),
    )


if TYPE_CHECKING:  # mypy holds the family to the Adapter protocol
    _conforms: type[Adapter] = X402Adapter
