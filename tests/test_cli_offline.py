"""`railproof verify-offline` as the design's contract states: one JSON object on stdout,
exit 0 whatever the verdict, exit 2 with a message on stderr for bad arguments or an
unreadable cassette. Run as a real subprocess, as other tools call it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
SOL_SIG = "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"
SOL_TO = "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui"
RAILPROOF = str(Path(sys.executable).parent / "railproof")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAILPROOF, "verify-offline", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def solana(*extra: str, amount: str = "1000", cassette: str = "solana/usdc_transfer.json"):
    return run(
        "--rail",
        "solana_usdc",
        "--cassette",
        str(FIX / cassette),
        "--proof",
        SOL_SIG,
        "--recipient",
        SOL_TO,
        "--amount",
        amount,
        *extra,
    )


def test_verified_json_contract():
    r = solana("--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"status", "failure_code", "detail", "observed", "rpc_calls", "source"}
    assert out["status"] == "verified" and out["failure_code"] is None
    assert out["observed"]["amount"] == "1000" and out["observed"]["recipient"] == SOL_TO
    assert out["observed"]["sender"] == "8fusVwhgo4oS1fGpZKeRaXrJXQk9auKnAgcj9A97wR3t"
    assert out["observed"]["finality"] == "finalized" and out["observed"]["slot"] == 184930610
    assert out["rpc_calls"] == 2 and out["source"] == "cassette"


def test_failed_verdict_still_exits_zero():
    out = json.loads(solana("--json", amount="2000").stdout)
    assert (out["status"], out["failure_code"]) == ("failed", "amount_mismatch")


def test_table_output_without_json():
    r = solana()
    assert r.returncode == 0 and "verified" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--rail", "nope"], "--rail"),
        (["--amount", "1.5"], "--amount"),
        (["--amount", "-3"], "--amount"),
        (["--proof", SOL_SIG[:40]], "--proof"),
        (["--recipient", "0xnot-solana"], "--recipient"),
        (["--not-before", "yesterday"], "--not-before"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, needle):
    base = {
        "--rail": "solana_usdc",
        "--cassette": str(FIX / "solana/usdc_transfer.json"),
        "--proof": SOL_SIG,
        "--recipient": SOL_TO,
        "--amount": "1000",
    }
    flags = dict(base)
    extra = []
    for k, v in zip(args[::2], args[1::2], strict=False):
        if k in flags:
            flags[k] = v
        else:
            extra += [k, v]
    r = run(*[x for kv in flags.items() for x in kv], *extra, "--json")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_unreadable_cassette_exits_2(tmp_path):
    missing = run(
        "--rail",
        "solana_usdc",
        "--cassette",
        str(tmp_path / "none.json"),
        "--proof",
        SOL_SIG,
        "--recipient",
        SOL_TO,
        "--amount",
        "1000",
        "--json",
    )
    assert missing.returncode == 2 and "--cassette" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run(
        "--rail",
        "solana_usdc",
        "--cassette",
        str(bad),
        "--proof",
        SOL_SIG,
        "--recipient",
        SOL_TO,
        "--amount",
        "1000",
        "--json",
    )
    assert r.returncode == 2 and "--cassette" in r.stderr and "Traceback" not in r.stderr
    notcassette = tmp_path / "x.json"
    notcassette.write_text('{"hello": 1}')
    r = run(
        "--rail",
        "solana_usdc",
        "--cassette",
        str(notcassette),
        "--proof",
        SOL_SIG,
        "--recipient",
        SOL_TO,
        "--amount",
        "1000",
        "--json",
    )
    assert r.returncode == 2 and "not a cassette" in r.stderr


def test_a_garbled_recorded_answer_is_pending_never_a_traceback(tmp_path):
    # A parsed instruction whose `info` is not an object escaped the Solana adapter as an
    # AttributeError traceback. A node's garbage is `pending rpc_unavailable`.
    doc = json.loads((FIX / "solana/usdc_transfer.json").read_text())
    inner = doc["calls"][0]["result"]["meta"]["innerInstructions"][0]["instructions"]
    inner[3]["parsed"]["info"] = "x"
    garbled = tmp_path / "garbled.json"
    garbled.write_text(json.dumps(doc))
    r = solana("--json", cassette=str(garbled))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-600:]
    out = json.loads(r.stdout)
    assert (out["status"], out["failure_code"]) == ("pending", "rpc_unavailable")


def test_an_adapter_that_raises_is_pending_and_logged_offline_too(monkeypatch, caplog):
    # Offline verification runs the service's run_verify: an adapter's bug over an answer
    # leaves the proof pending (never verified, never failed) and is logged with its traceback.
    from rails.solana import SolanaAdapter
    from verifier.services.offline import OfflineRequest, verify_offline

    def trips(self, proof, terms, chain):
        chain.call("getTransaction", [proof, {}])
        return {}["missing"]

    monkeypatch.setattr(SolanaAdapter, "verify", trips)
    req = OfflineRequest(
        rail="solana_usdc",
        proof=SOL_SIG,
        recipient=SOL_TO,
        amount=1000,
        cassette=FIX / "solana/usdc_transfer.json",
    )
    with caplog.at_level("ERROR", logger="railproof.verify"):
        out = verify_offline(req)
    assert (out["status"], out["failure_code"]) == ("pending", "rpc_unavailable")
    (rec,) = caplog.records
    assert rec.exc_info and rec.exc_info[0] is KeyError and "solana_usdc" in rec.getMessage()
    assert SOL_SIG not in caplog.text  # a signature never reaches a log


def test_proof_missing_from_the_cassette_names_the_call():
    other = (
        "5hJfaZoyjTrJcchXLFXRySgDMtGRiLsqvmrtpXcQjZq1Zc2d7Qj3LisaAtaFDtS9tDdv4aZ5n4fbtJNfVMCNV8Lj"
    )
    r = run(
        "--rail",
        "solana_usdc",
        "--cassette",
        str(FIX / "solana/usdc_transfer.json"),
        "--proof",
        other,
        "--recipient",
        SOL_TO,
        "--amount",
        "1000",
        "--json",
    )
    assert r.returncode == 2 and "getTransaction" in r.stderr and other in r.stderr


def test_evm_rail():
    r = run(*EVM_ARGS)
    out = json.loads(r.stdout)
    assert out["status"] == "verified", out
    assert out["observed"]["block_number"] == 21915751


def test_review_only_rails_end_in_review():
    r = run(*TRON_ARGS)
    out = json.loads(r.stdout)
    assert (out["status"], out["failure_code"]) == ("requires_review", "review_only_rail")
    assert out["observed"]["sender"] == "TJoaVSdktrnndU4dmKm33SWMKoXt4LLFbU"


@pytest.mark.parametrize(
    "proof_file", ["x402_base_sepolia_payload_v1.json", "x402_base_sepolia_payload_v1.b64"]
)
def test_x402_payload_file_or_header_with_pinned_clock(proof_file):
    common = [
        "--rail",
        "x402",
        "--network",
        "base-sepolia",
        "--proof",
        str(FIX / "x402" / proof_file),
        "--recipient",
        "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "--amount",
        "10000",
        "--json",
    ]
    inside = json.loads(run(*common, "--now", "2025-02-27T16:02:00Z").stdout)
    assert inside["status"] == "verified", inside
    assert inside["observed"]["sender"].lower() == "0x857b06519e91e3a54538791bdbb0e22373e36b66"
    assert inside["rpc_calls"] == 0
    late = json.loads(run(*common).stdout)
    assert (late["status"], late["failure_code"]) == ("failed", "authorization_expired")


# -- x402: addresses, terms it cannot check, and --payer -----------------------------------

X402_PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
X402_SIGNER = "0x857b06519E91e3A54538791bDbb0E22373e36b66"
SPACED = X402_PAY_TO[:40].lower() + "  "  # 42 characters that bytes.fromhex read as 19 bytes
OTHER = "0x000000000000000000000000000000000000bEEF"


def x402(*extra: str, proof: str = str(FIX / "x402" / "x402_base_sepolia_payload_v1.json")):
    return run(
        "--rail",
        "x402",
        "--network",
        "base-sepolia",
        "--proof",
        proof,
        "--amount",
        "10000",
        "--now",
        "2025-02-27T16:01:40Z",
        "--json",
        *extra,
    )


X402_ARGS = [
    "--rail",
    "x402",
    "--network",
    "base-sepolia",
    "--proof",
    str(FIX / "x402" / "x402_base_sepolia_payload_v1.json"),
    "--recipient",
    X402_PAY_TO,
    "--amount",
    "10000",
    "--now",
    "2025-02-27T16:01:40Z",
    "--json",
]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--recipient", SPACED], "--recipient"),  # was a ValueError traceback, exit 1
        (["--recipient", X402_PAY_TO, "--payer", SPACED], "--payer"),
        # was exit 0, `failed signature_invalid` under a 19-byte token contract
        (["--recipient", X402_PAY_TO, "--asset", SPACED], "--asset"),
    ],
)
def test_x402_address_with_spaces_exits_2_naming_the_option(args, needle):
    r = x402(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-400:])
    assert needle in r.stderr and "40 hex digits" in r.stderr and r.stdout == ""
    assert "Traceback" not in r.stderr


def test_x402_payload_address_with_spaces_exits_2_naming_the_proof(tmp_path):
    doc = json.loads((FIX / "x402" / "x402_base_sepolia_payload_v1.json").read_text())
    doc["payload"]["authorization"]["to"] = SPACED
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps(doc))
    r = x402("--recipient", X402_PAY_TO, proof=str(payload))
    assert r.returncode == 2, (r.returncode, r.stdout)
    assert "--proof: authorization.to" in r.stderr


@pytest.mark.parametrize("flag", ["--memo", "--reference"])
def test_x402_refuses_a_memo_or_reference_it_cannot_check(flag):
    """An authorization signs no memo or reference (x402 sessions refuse both). The command
    used to ignore the term and answer `verified`."""
    r = x402("--recipient", X402_PAY_TO, flag, "order-42")
    assert r.returncode == 2, r.stdout
    assert flag in r.stderr and r.stdout == ""


EVM_ARGS = [
    "--rail",
    "evm_usdc",
    "--cassette",
    str(FIX / "evm/eth_usdc_transfer.json"),
    "--proof",
    "0x225853c513c75a4276979841a480ad1856bc649c496c16765107cb5d62d1def7",
    "--recipient",
    "0xc1AF05a7A4F27Cd1b61De823EA31aB5049b38eA8",
    "--amount",
    "59691936965",
    "--json",
]
TRON_ARGS = [
    "--rail",
    "tron_usdt",
    "--cassette",
    str(FIX / "tron/usdt_transfer.json"),
    "--proof",
    "b69c51db8f9d974e6a38c76852c8ce1adcb682dbacb25ad8ad4f6876121fe9dc",
    "--recipient",
    "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn",
    "--amount",
    "3500000",
    "--json",
]


@pytest.mark.parametrize(
    "args,payer,want",
    [
        (X402_ARGS, X402_SIGNER.lower(), ("verified", None)),
        (X402_ARGS, OTHER, ("failed", "sender_mismatch")),
        (EVM_ARGS, "0x28C6c06298d514Db089934071355E5743bf21d60", ("verified", None)),
        (EVM_ARGS, OTHER, ("failed", "sender_mismatch")),
        (TRON_ARGS, "TJoaVSdktrnndU4dmKm33SWMKoXt4LLFbU", ("requires_review", "review_only_rail")),
        (TRON_ARGS, "TUikLT3nTTjTkXPAuC4xUGj84vfSERCWRn", ("failed", "sender_mismatch")),
    ],
)
def test_payer_is_checked_on_the_rails_that_bind_one(args, payer, want):
    """The design's optional --payer (the session's payer term) was missing: a payment could
    not be checked offline against the payer it had to come from."""
    r = run(*args, "--payer", payer)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["status"], out["failure_code"]) == want, out


def test_payer_on_a_rail_that_binds_by_reference_exits_2():
    r = solana("--payer", "8fusVwhgo4oS1fGpZKeRaXrJXQk9auKnAgcj9A97wR3t", "--json")
    assert r.returncode == 2 and "--payer" in r.stderr and r.stdout == ""


def _edited(tmp_path: Path, edit) -> str:
    doc = json.loads((FIX / "solana" / "usdc_transfer.json").read_text())
    edit(doc)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(doc))
    return str(out)


def test_a_cassette_recorded_on_another_network_is_refused_naming_both(tmp_path):
    # Nothing in a Solana answer names its cluster: the cassette's label is the only evidence,
    # and a devnet transfer used to come back `verified` for the mainnet rail.
    cassette = _edited(tmp_path, lambda d: d.update(network="solana-devnet"))
    r = solana("--json", cassette=cassette)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert "--cassette: recorded on solana-devnet" in r.stderr and "solana-mainnet" in r.stderr
    # On its own network it is checked (there USDC is another mint: wrong_asset).
    there = solana("--json", "--network", "solana-devnet", cassette=cassette)
    assert there.returncode == 0, there.stderr
    assert json.loads(there.stdout)["failure_code"] == "wrong_asset"


def test_a_settlement_its_node_contradicts_is_reported_not_final(tmp_path):
    # getTransaction says it succeeded, getSignatureStatuses that it failed on chain: the
    # settlement is not final (the apply gate would block it), which the report left out.
    def contradict(doc: dict) -> None:
        status = doc["calls"][1]["result"]["value"][0]
        status["err"] = {"InstructionError": [0, {"Custom": 1}]}
        status["status"] = {"Err": {"InstructionError": [0, {"Custom": 1}]}}

    out = json.loads(solana("--json", cassette=_edited(tmp_path, contradict)).stdout)
    assert out["observed"]["is_final"] is False and out["observed"]["settlement_detail"], out
    plain = json.loads(solana("--json").stdout)["observed"]
    assert plain["is_final"] is True and "settlement_detail" not in plain


def test_an_amount_no_token_holds_exits_2_naming_amount():
    r = solana(amount="9" * 5000)
    assert r.returncode == 2 and "--amount" in r.stderr and "Traceback" not in r.stderr
    assert solana("--json", amount="0" * 100 + "1000").returncode == 0
