"""Hostile input, property-based (hypothesis): fingerprints, x402 payload decoding and the
cassette reader. Each property is a rule a caller (or an attacker) relies on:

- a proof reference normalizes once and for all (normalizing again changes nothing), so a
  replay in another spelling meets the same fingerprint and the same unique constraint;
- EVM and Tron hashes fold case, Solana signatures do not (base58 is case-sensitive), and
  anything that is not base58 of exactly 64 bytes is refused;
- whatever bytes arrive as an x402 proof, decoding either gives a payload or raises
  ProofMalformed — never another exception (which would be a 500);
- whatever file sits in a cassette directory, reading it either gives a cassette or raises
  CassetteUnreadable, and recorded calls match by the rules of DESIGN.md;
- whatever text arrives as an HTTP body, query string or header, the guards in front of the
  API find every NUL (and control character in ids) and name where it is, so none reaches
  the database;
- whatever `verify-offline --proof` is given, deciding whether it names a file gives the
  proof text or a usage error, never another exception (a traceback).
"""

from __future__ import annotations

import base64
import copy
import json
import random
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import base58
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rails import adapter_for
from rails.base import fingerprint
from rails.errors import (
    CassetteUnreadable,
    ProofMalformed,
    RpcErrorResponse,
    UnmatchedRequest,
)
from rails.transport.cassette import Call, CassetteTransport, read_cassette
from rails.x402 import decode_proof, parse_payment
from registry.catalog import RailOverrides, load_catalog
from verifier.http.guards import body_refusal, param_control_field
from verifier.services.offline import UsageError, proof_text

FIX = Path(__file__).resolve().parent.parent / "fixtures"
PROPS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def adapter(rail_id: str, **o):
    return adapter_for(load_catalog().resolve(rail_id, RailOverrides(**o)))


SOLANA = adapter("solana_usdc")
EVM = adapter("evm_usdc")
TRON = adapter("tron_usdt")
X402 = adapter("x402")
X402_SEPOLIA = adapter("x402", network="base-sepolia")

# -- fingerprints -------------------------------------------------------------------------


@PROPS
@given(st.binary(min_size=64, max_size=64))
def test_solana_signature_of_64_bytes_is_kept_and_idempotent(sig_bytes):
    sig = base58.b58encode(sig_bytes).decode()
    ref = SOLANA.normalize_proof("solana_tx_signature", sig)
    assert ref == sig
    assert SOLANA.normalize_proof("solana_tx_signature", ref) == ref
    # base58 is case-sensitive: another casing is another signature or none at all.
    flipped = sig.swapcase()
    if flipped != sig:
        try:
            assert SOLANA.normalize_proof("solana_tx_signature", flipped) != ref
        except ProofMalformed:
            pass


@PROPS
@given(st.binary(max_size=100).filter(lambda b: len(b) != 64))
@example(b"\x00" * 63)
@example(b"\x00" + b"\xff" * 64)
def test_solana_signature_not_64_bytes_is_refused(raw):
    with pytest.raises(ProofMalformed):
        SOLANA.normalize_proof("solana_tx_signature", base58.b58encode(raw).decode())


@PROPS
@given(st.text(max_size=120))
@example("0" * 88)
@example(" " + base58.b58encode(b"\x01" * 64).decode())
@example(base58.b58encode(b"\x01" * 64).decode() + "\n")
def test_solana_arbitrary_text_is_a_signature_or_proof_malformed(text):
    try:
        ref = SOLANA.normalize_proof("solana_tx_signature", text)
    except ProofMalformed:
        return
    assert ref == text and len(base58.b58decode(text)) == 64


def _case_variant(draw_bools: list[bool], hexdigits: str) -> str:
    return "".join(c.upper() if flip else c for c, flip in zip(hexdigits, draw_bools, strict=False))


@PROPS
@given(st.binary(min_size=32, max_size=32), st.lists(st.booleans(), min_size=64, max_size=64))
def test_evm_and_tron_hashes_fold_case_and_fingerprint_the_same(h, flips):
    lower = h.hex()
    mixed = _case_variant(flips, lower)
    evm_ref = EVM.normalize_proof("evm_tx_hash", "0x" + mixed)
    assert evm_ref == "0x" + lower
    assert EVM.normalize_proof("evm_tx_hash", evm_ref) == evm_ref
    tron_ref = TRON.normalize_proof("tron_tx_id", mixed)
    assert tron_ref == lower
    assert TRON.normalize_proof("tron_tx_id", tron_ref) == tron_ref
    fp = lambda ref: fingerprint("evm", "ethereum", "evm_tx_hash", ref)  # noqa: E731
    assert fp(EVM.normalize_proof("evm_tx_hash", "0x" + mixed)) == fp(
        EVM.normalize_proof("evm_tx_hash", "0x" + lower.upper())
    )


@PROPS
@given(st.text(max_size=80))
@example("0x" + "a" * 64 + "\n")
@example("0X" + "a" * 64)
@example("0x" + "٠" * 64)  # Arabic-Indic digits: str.isdigit says yes, hex says no
def test_evm_and_tron_arbitrary_text_is_a_hash_or_proof_malformed(text):
    for a, ptype in ((EVM, "evm_tx_hash"), (TRON, "tron_tx_id")):
        try:
            ref = a.normalize_proof(ptype, text)
        except ProofMalformed:
            continue
        body = ref[2:] if ptype == "evm_tx_hash" else ref
        assert len(body) == 64 and all(c in "0123456789abcdef" for c in body)
        assert ref == text.lower()


# -- x402 payload decoding ----------------------------------------------------------------

PAYLOADS = [
    json.loads((FIX / "x402" / n).read_text())
    for n in ("x402_base_sepolia_payload_v1.json", "x402_base_sepolia_payload_v2.json")
]
BASE_PAYLOADS = [
    c["payload"]
    for c in json.loads((FIX / "x402" / "x402_base_signed.json").read_text())["payloads"].values()
]


def _x402_for(doc: dict):
    net = doc.get("network") or doc.get("accepted", {}).get("network")
    return X402_SEPOLIA if net in ("base-sepolia", "eip155:84532") else X402


def _shuffled(obj, rnd: random.Random):
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [_shuffled(v, rnd) for v in obj]
    return obj


def _upper_hex(doc: dict) -> dict:
    """The same payment with its hex fields in upper case (0x prefix kept)."""
    d = copy.deepcopy(doc)
    auth = d["payload"]["authorization"]
    for k in ("from", "to", "nonce"):
        auth[k] = "0x" + auth[k][2:].upper()
    return d


@st.composite
def reformatted(draw):
    doc = draw(st.sampled_from(PAYLOADS + BASE_PAYLOADS))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    if draw(st.booleans()):
        doc = _upper_hex(doc)
    text = json.dumps(
        _shuffled(doc, rnd),
        indent=draw(st.sampled_from([None, 0, 1, 4, "\t"])),
        separators=draw(st.sampled_from([None, (",", ":"), (" , ", " : ")])),
        ensure_ascii=draw(st.booleans()),
    )
    form = draw(st.sampled_from(["json", "b64", "b64-nopad", "b64-url"]))
    if form == "b64":
        text = base64.b64encode(text.encode()).decode()
    elif form == "b64-nopad":
        text = base64.b64encode(text.encode()).decode().rstrip("=")
    elif form == "b64-url":
        text = base64.urlsafe_b64encode(text.encode()).decode()
    pad = draw(st.sampled_from(["", " ", "\n", "\t \r\n"]))
    return doc, pad + text + pad


@PROPS
@given(reformatted())
def test_x402_payload_in_any_formatting_normalizes_the_same(case):
    doc, text = case
    a = _x402_for(doc)
    want = a.normalize_proof("x402_payment_payload", json.dumps(doc))
    assert a.normalize_proof("x402_payment_payload", text) == want
    assert want == want.lower() and want.count(":") == 3
    fp = lambda ref: fingerprint("x402", a.rail.network, "x402_payment_payload", ref)  # noqa: E731
    assert fp(a.normalize_proof("x402_payment_payload", text)) == fp(want)


def _decode_all(text: str) -> None:
    try:
        parse_payment(decode_proof(text))
    except ProofMalformed:
        pass
    for a in (X402, X402_SEPOLIA):
        try:
            a.normalize_proof("x402_payment_payload", text)
        except ProofMalformed:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@PROPS
@given(st.binary(max_size=400))
def test_x402_arbitrary_bytes_raise_only_proof_malformed(raw):
    _decode_all(raw.decode("latin-1"))
    _decode_all(base64.b64encode(raw).decode())


@PROPS
@given(st.text(max_size=300))
@example("{")
@example("=")
@example("-_-_")
@example("{" * 5000)
def test_x402_arbitrary_text_raises_only_proof_malformed(text):
    _decode_all(text)


@st.composite
def mutated_payload(draw):
    """A real payload with one field replaced by arbitrary JSON, or removed."""
    doc = copy.deepcopy(draw(st.sampled_from(PAYLOADS + BASE_PAYLOADS)))
    paths = [(), ("payload",), ("payload", "authorization")]
    if "accepted" in doc:
        paths.append(("accepted",))
    path = draw(st.sampled_from(paths))
    target = doc
    for p in path:
        target = target[p]
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        del target[key]
    else:
        target[key] = draw(json_values)
    return doc


@PROPS
@given(mutated_payload())
def test_x402_mutated_payload_raises_only_proof_malformed(doc):
    text = json.dumps(doc)
    _decode_all(text)
    _decode_all(base64.b64encode(text.encode()).decode())


@PROPS
@given(json_values)
def test_x402_arbitrary_json_raises_only_proof_malformed(value):
    text = json.dumps(value)
    _decode_all(text)
    _decode_all(base64.b64encode(text.encode()).decode())


def test_x402_lone_surrogate_is_proof_malformed():
    # JSON's \ud800 escape decodes to a lone surrogate, which has no UTF-8 encoding.
    for text in ("{\ud800", "\ud800", '{"x402Version": 1, "scheme": "\ud800"}'):
        _decode_all(text)


# -- the cassette reader ------------------------------------------------------------------


def _read(tmp: Path, content: bytes):
    path = tmp / "c.json"
    path.write_bytes(content)
    try:
        doc = read_cassette(path)
    except CassetteUnreadable:
        return None
    CassetteTransport.from_files([path])  # a readable cassette also loads as a transport
    return doc


@PROPS
@given(st.binary(max_size=400))
@example(b"")
@example(b"\xff\xfe")
@example(b"[" * 5000)
def test_cassette_arbitrary_bytes_raise_only_cassette_unreadable(tmp_path_factory, content):
    _read(tmp_path_factory.mktemp("c"), content)


@st.composite
def cassette_like(draw):
    """Documents shaped almost like cassettes: each member may be missing or of a wrong type."""
    call = st.fixed_dictionaries(
        {},
        optional={
            "method": st.text(max_size=10) | json_values,
            "params": st.lists(json_values, max_size=3) | json_values,
            "result": json_values,
            "error": json_values,
        },
    )
    doc = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "cassette": st.sampled_from([1, 1.0, True, "1", 2, None]),
                "network": st.text(max_size=10) | json_values,
                "calls": st.lists(call, max_size=4) | json_values,
                "source": json_values,
            },
        )
    )
    return doc


@PROPS
@given(cassette_like())
def test_cassette_malformed_documents_raise_only_cassette_unreadable(tmp_path_factory, doc):
    tmp = tmp_path_factory.mktemp("c")
    got = _read(tmp, json.dumps(doc).encode())
    if got is not None:
        # Whatever was accepted can be replayed: every call answers or is unmatched.
        t = CassetteTransport.from_files([tmp / "c.json"])
        for c in got["calls"]:
            try:
                t.call(c["method"], list(c.get("params") or []))
            except (UnmatchedRequest, RpcErrorResponse):
                pass


# Matching: JSON scalars without booleans, so Python's 1 == True cannot blur two values.
scalar = st.integers(-5, 5) | st.text(alphabet="abcXYZ019", max_size=6) | st.none()
options = st.dictionaries(
    st.sampled_from(
        [
            "encoding",
            "commitment",
            "maxSupportedTransactionVersion",
            "searchTransactionHistory",
            "x",
        ]
    ),
    scalar,
    max_size=4,
)


@PROPS
@given(st.lists(scalar, min_size=1, max_size=3), options, st.booleans(), options)
def test_cassette_matching_rules(positional, recorded_opts, recorded_has_opts, asked_extra):
    recorded = {
        "method": "m",
        "params": positional + ([recorded_opts] if recorded_has_opts else []),
        "result": "answer",
    }
    t = CassetteTransport([Call(recorded)])
    asked_opts = {**asked_extra, **(recorded_opts if recorded_has_opts else {})}

    # The same positional params with a trailing options object: always a match when the
    # request carries every recorded option (extra options are ignored), or when the
    # recording kept no options at all.
    assert t.call("m", positional + [asked_opts]) == "answer"
    if not recorded_has_opts:
        assert t.call("m", list(positional)) == "answer"

    # A recorded option asked with another value is not a match.
    if recorded_has_opts and recorded_opts:
        k = sorted(recorded_opts)[0]
        changed = {**asked_opts, k: "something-else"}
        assume(changed[k] != recorded_opts[k])
        with pytest.raises(UnmatchedRequest):
            t.call("m", positional + [changed])
        missing = {kk: v for kk, v in asked_opts.items() if kk != k}
        with pytest.raises(UnmatchedRequest):
            t.call("m", positional + [missing])

    # Another method or another positional param never matches, whatever the options.
    with pytest.raises(UnmatchedRequest):
        t.call("other", positional + [asked_opts])
    other = list(positional)
    other[0] = ["not", "the", "same"]
    with pytest.raises(UnmatchedRequest) as e:
        t.call("m", other + [asked_opts])
    assert "m" in str(e.value)  # an unmatched request names its method


def test_cassette_first_file_in_sorted_order_wins(tmp_path):
    for name, answer in (("b.json", "second"), ("a.json", "first")):
        (tmp_path / name).write_text(
            json.dumps(
                {
                    "cassette": 1,
                    "network": "n",
                    "calls": [{"method": "m", "params": [1], "result": answer}],
                }
            )
        )
    assert CassetteTransport.from_dir(tmp_path, "n").call("m", [1]) == "first"


# -- hostile HTTP input: NUL and control characters -----------------------------------------

# Text where NUL and other control characters are common, not one draw in thousands.
nasty_text = st.text(st.sampled_from('\x00\x01\x1f\x7f\t\n\\"/%=&a\u00e9\u2028'), max_size=8)
nasty_json = st.recursive(
    st.none() | st.booleans() | st.integers() | nasty_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
    max_leaves=12,
)


def _nul_paths(value, path=""):
    """Every name the API may give a NUL: a string's dotted path, or a key's object."""
    if isinstance(value, str):
        return {path or "body"} if "\x00" in value else set()
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    out = set()
    for k, v in items:
        if "\x00" in str(k):
            out.add(path or "body")
        out |= _nul_paths(v, f"{path}.{k}" if path else str(k))
    return out


@PROPS
@given(nasty_json, st.booleans())
def test_every_nul_in_a_json_body_is_found_and_named(value, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    refusal = body_refusal(body)
    found = refusal[0] if refusal else None
    expected = _nul_paths(value)
    assert (found is None) == (not expected)
    assert found is None or found in expected


@PROPS
@given(
    st.lists(st.tuples(nasty_text, nasty_text), max_size=4),
    st.lists(
        st.tuples(
            st.sampled_from([b"idempotency-key", b"x-operator-reason"]), st.binary(max_size=6)
        ),
        max_size=2,
    ),
)
def test_every_control_character_in_a_query_or_header_is_named(query, headers):
    qs = urlencode(query)
    field = param_control_field({"query_string": qs.encode(), "headers": headers})
    control = lambda t: any(ord(c) < 0x20 or c == "\x7f" for c in t)  # noqa: E731
    bad = [
        n.decode().title() for n, v in headers if control(v.decode("latin-1").replace("\t", ""))
    ]  # HTTP allows HTAB there
    bad += [
        "query" if control(n) else n
        for n, v in parse_qsl(qs, keep_blank_values=True)
        if control(n + v)
    ]
    assert field == (bad[0] if bad else None)


@PROPS
@given(
    st.text(max_size=40)
    | st.builds(lambda a, n: a * n, st.sampled_from(["A", "a/", "/"]), st.integers(1, 2500))
)
@example("x" * 700)
@example("\x00")
@example("/" * 5000)
@example(".")
def test_offline_proof_argument_is_text_or_a_usage_error(arg):
    try:
        text = proof_text(arg)
    except UsageError:
        return
    assert isinstance(text, str)
