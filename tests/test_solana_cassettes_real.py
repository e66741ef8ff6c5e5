"""Every real Solana cassette (mainnet answers found in public repositories, see
fixtures/raw/SOURCES.md) verifies as its source says it should."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import base58
import orjson
import pytest

from rails import adapter_for
from rails.base import Status, Terms
from rails.codes import FailureCode
from rails.errors import MalformedResponse
from rails.solana import (
    memos_of,
    movements,
    owners_from_instructions,
    parse_transaction,
    reference_candidates,
)
from rails.transport.cassette import Call, CassetteTransport
from registry.catalog import load_catalog
from verifier.core.checking import run_verify

SOL = Path(__file__).resolve().parent.parent / "fixtures" / "solana"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
USDT = "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB"
KIN = "kinXdEcpDQeHPEuQnqmUgtYykqKGVFq6CeVX5iAHJq6"

USDC_SIG = (
    "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"
)
USDC_TO = "3i476kTBBTy7pBGx4CXwJpJ6phuwLQgcwLTdHhU3c7ui"
USDC_FROM = "8fusVwhgo4oS1fGpZKeRaXrJXQk9auKnAgcj9A97wR3t"
USDC_NEW_ATA = "H51DXRt3ubThhdhNeDMScfkbC5X4AWzYfHaZS3JKEfPh"
FEE_PAYER = "FG4Y3yX4AAchp1HvNZ7LfzFTewF2f6nDoMDCohTFrdpT"
FAILED_SIG = (
    "376DxeSPgG1ynjpGFLLx5xFTTkVmQ54MmUcTuopKyEQXWQCu9PRzUZ2EijYi4YZq4eAPpRDdoQHzy59bfuNndLX4"
)
FAILED_OWNER = "G8PrkEwmVx3kt3rXBin5o1bdDC1cvz7oBnXbHksNg7R4"
SWAP_SIG = (
    "2ML2h2YwBmRqgmF86EvxdZMJCBwBDtspaqANpqdm4ajuKCnL7K7nXuHK7AMeBe9Zk7yJp3KR4V28WZ8tPApaQB6t"
)

NATIVE = [  # (cassette, signature, recipient, lamports) — native SOL, no token moved
    (
        "native_transfer_memo.json",
        "5QMfuqThWSMMpLCRe3tk7qn7iSwWKfJV8EvD1ZPvyqAWa7Z2JftZ4rPq8YCxCwzSykX7dMkDB8RrovQMoL9ZZWKY",
        "2b7iQq3PbWwWTotRSDFNXT9DauU418aCHK4jcAzETUem",
        1_000_000,
    ),
    (
        "native_transfer_plain.json",
        "5hJfaZoyjTrJcchXLFXRySgDMtGRiLsqvmrtpXcQjZq1Zc2d7Qj3LisaAtaFDtS9tDdv4aZ5n4fbtJNfVMCNV8Lj",
        "3h1zGmCwsRJnVk5BuRNMLsPaQu1y2aqXqXDWYCgrp5UG",
        10_000_000,
    ),
    (
        "v0_lookup_table_native_transfer.json",
        "4LwygRtiF9ZCrbGKoh8MEzmxowaRHPaDc1nsinkv72uXU2cUCuZ8YskBBgsvbBEMZ5Pqpf6C6WcXtCkqAuLZand1",
        "buffaAJKmNLao65TDTUGq8oB9HgxkfPLGqPMFQapotJ",
        1_000,
    ),
]


@pytest.fixture(scope="module")
def adapter():
    return adapter_for(load_catalog().resolve("solana_usdc"))


def verify(adapter, name: str, sig: str, **t: Any):
    return run_verify(adapter, sig, Terms(now=NOW, **t), CassetteTransport.from_files([SOL / name]))


def result_of(name: str) -> dict[str, Any]:
    return orjson.loads((SOL / name).read_bytes())["calls"][0]["result"]


def test_every_real_solana_cassette_is_covered_here():
    covered = {"usdc_transfer.json", "failed_tx.json", "v0_json_loadedaddresses_usdc_swap.json"} | {
        n[0] for n in NATIVE
    }
    assert {p.name for p in SOL.glob("*.json")} == covered


# -- sol_usdc_transferchecked_memo_mainnet ---------------------------------------------------------------


def test_usdc_transfer_verifies_1000_to_the_new_ata_owner(adapter):
    res = result_of("usdc_transfer.json")
    keys = [k["pubkey"] for k in res["transaction"]["message"]["accountKeys"]]
    assert keys.index(USDC_NEW_ATA) not in {
        b["accountIndex"] for b in res["meta"]["preTokenBalances"]
    }
    c = verify(
        adapter, "usdc_transfer.json", USDC_SIG, recipient=USDC_TO, amount=1000, memo="transfer"
    )
    v = c.verdict
    assert v.status is Status.verified and c.rpc_calls == 2
    assert v.observed["amount"] == "1000"
    assert (v.observed["sender"], v.observed["asset"], v.observed["decimals"]) == (
        USDC_FROM,
        USDC,
        6,
    )
    assert (v.observed["slot"], v.observed["block_time"], v.observed["memo"]) == (
        184930610,
        "2023-03-27T06:50:45+00:00",
        "transfer",
    )
    assert v.settlement.finality == "finalized" and v.settlement.is_final


def test_usdc_transfer_required_2000_is_amount_mismatch(adapter):
    v = verify(adapter, "usdc_transfer.json", USDC_SIG, recipient=USDC_TO, amount=2000).verdict
    assert (v.status, v.code, v.observed["amount"]) == (
        Status.failed,
        FailureCode.amount_mismatch,
        "1000",
    )


def test_usdc_transfer_to_someone_else_is_wrong_recipient(adapter):
    for other in (FEE_PAYER, USDC_FROM):
        v = verify(adapter, "usdc_transfer.json", USDC_SIG, recipient=other, amount=1000).verdict
        assert (v.status, v.code) == (Status.failed, FailureCode.wrong_recipient)


def test_usdc_transfer_is_not_a_usdt_payment(adapter):
    v = verify(
        adapter, "usdc_transfer.json", USDC_SIG, recipient=USDC_TO, amount=1000, asset=USDT
    ).verdict
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_asset)


def test_usdc_transfer_reference_and_memo(adapter):
    # The recipient's new token account is among the keys, but it is where the funds went:
    # every payment to that wallet carries it, so it never binds this one to a session.
    ata = verify(
        adapter,
        "usdc_transfer.json",
        USDC_SIG,
        recipient=USDC_TO,
        amount=1000,
        reference=USDC_NEW_ATA,
    ).verdict
    assert (ata.status, ata.code) == (Status.failed, FailureCode.reference_missing)
    assert "moves funds with" in ata.detail and ata.observed["reference_found"] is False
    for ledger in (FEE_PAYER, USDC_FROM, USDC_TO):  # a signer, a source, an owner
        v = verify(
            adapter,
            "usdc_transfer.json",
            USDC_SIG,
            recipient=USDC_TO,
            amount=1000,
            reference=ledger,
        ).verdict
        assert v.code is FailureCode.reference_missing, ledger
    missing = verify(
        adapter,
        "usdc_transfer.json",
        USDC_SIG,
        recipient=USDC_TO,
        amount=1000,
        reference="So11111111111111111111111111111111111111112",
    ).verdict
    assert missing.code is FailureCode.reference_missing
    memo = verify(
        adapter, "usdc_transfer.json", USDC_SIG, recipient=USDC_TO, amount=1000, memo="Transfer"
    ).verdict
    assert memo.code is FailureCode.memo_mismatch  # memos compare exactly


# -- native SOL transfers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,sig,recipient,lamports", NATIVE)
def test_native_sol_transfers_are_wrong_asset_for_the_usdc_rail(
    adapter, name, sig, recipient, lamports
):
    res = result_of(name)
    keys = [k["pubkey"] for k in res["transaction"]["message"]["accountKeys"]]
    i = keys.index(recipient)
    assert (
        res["meta"]["postBalances"][i] - res["meta"]["preBalances"][i] == lamports
    )  # what the source shows
    c = verify(adapter, name, sig, recipient=recipient, amount=lamports)
    # Two calls: a failure read from the transaction's effect is definitive only once its
    # status is finalized.
    assert (c.verdict.status, c.verdict.code, c.rpc_calls) == (
        Status.failed,
        FailureCode.wrong_asset,
        2,
    )


def test_v0_native_transfer_recipient_is_a_lookup_table_key(adapter):
    name, sig, recipient, _ = NATIVE[2]
    view = parse_transaction(result_of(name), sig)
    keys = result_of(name)["transaction"]["message"]["accountKeys"]
    assert (
        recipient in view.account_keys
        and keys[view.account_keys.index(recipient)]["source"] == "lookupTable"
    )
    # The lookup-table key is seen as an account key, and as one the transaction pays into
    # (writable): named as a reference it is among the keys but is not taken for one, as no
    # account that moves funds is (the reference check answers before the asset's).
    assert view.writable == {"web3xFMwEPrc92NeeXdAigni95NDnnd2NPuajTirao2", recipient}
    v = verify(adapter, name, sig, recipient=recipient, amount=1000, reference=recipient).verdict
    assert v.observed["reference_found"] is False
    assert (v.status, v.code) == (Status.failed, FailureCode.reference_missing), v
    assert f"reference {recipient} is one of the accounts" in v.detail


# -- sol_failed_tx_err_instructionerror_mainnet -----------------------------------------------------------


@pytest.mark.parametrize("asset", [None, KIN, "So11111111111111111111111111111111111111112"])
def test_failed_transaction_is_failed_whatever_its_instructions_say(adapter, asset):
    c = verify(
        adapter,
        "failed_tx.json",
        FAILED_SIG,
        recipient=FAILED_OWNER,
        amount=10_000_000,
        asset=asset,
    )
    # Two calls: the failure is definitive only once the status is finalized.
    assert (c.verdict.status, c.verdict.code, c.rpc_calls) == (
        Status.failed,
        FailureCode.tx_failed_onchain,
        2,
    )


def _failed_with_status(status: dict[str, Any] | None) -> CassetteTransport:
    calls = orjson.loads((SOL / "failed_tx.json").read_bytes())["calls"]
    tx = next(c for c in calls if c["method"] == "getTransaction")
    st = copy.deepcopy(next(c for c in calls if c["method"] == "getSignatureStatuses"))
    st["result"]["value"] = [status]
    return CassetteTransport([Call(tx), Call(st)])


@pytest.mark.parametrize(
    "status",
    [
        {"slot": 83929593, "confirmations": 12, "confirmationStatus": "confirmed"},
        {"slot": 83929593, "confirmations": 0, "confirmationStatus": "processed"},
        {"slot": 83929593, "confirmations": 3},  # an older node: no level, some confirmations
        None,  # the node answered the transaction but has no status for it
    ],
    ids=["confirmed", "processed", "confirmations", "no-status"],
)
def test_a_failed_transaction_not_final_yet_is_pending_not_failed(adapter, status):
    # Read at `confirmed`, the failed transaction's block may still be dropped and the same
    # signed transaction land in another block, where it may succeed: no `failed` yet.
    err = {"InstructionError": [3, {"Custom": 16}]}
    if status is not None:
        status = status | {"err": err, "status": {"Err": err}}
    c = run_verify(
        adapter,
        FAILED_SIG,
        Terms(recipient=FAILED_OWNER, amount=10_000_000, now=NOW),
        _failed_with_status(status),
    )
    v = c.verdict
    assert (v.status, v.code, c.rpc_calls) == (Status.pending, FailureCode.not_final, 2), v
    assert "failed on chain" in v.detail and "failed once final" in v.detail


def test_old_format_owners_resolved_only_from_owner_proving_instructions():
    view = parse_transaction(result_of("failed_tx.json"), FAILED_SIG)
    assert all(b.owner is None for b in view.pre + view.post)
    owners, changed = owners_from_instructions(view)
    # initializeAccount names the temporary wSOL account's owner; approve is signed by the
    # KIN account's owner. The swap's pool accounts stay unknown.
    assert owners == {
        "5tDsFnGDNvosPizMhtmGkhhjFheiCmUBM7rLZdcNkz2b": FAILED_OWNER,
        "2xKofw1wK2CVMVUssGTv3G5pVrUALAR9r8J9zZnwtrUG": FAILED_OWNER,
    }
    assert changed == set()
    kin = {m.account: m.owner for m in movements(view, KIN)}
    assert kin == {
        "2xKofw1wK2CVMVUssGTv3G5pVrUALAR9r8J9zZnwtrUG": FAILED_OWNER,
        "CzcUkjjimSCHSCnCapqsbrkpvKzVbgWfDHchBYmzG8sB": None,
    }


def test_old_format_movement_to_an_unknown_owner_goes_to_review(adapter):
    # Had the swap succeeded and moved KIN from the user's account to the pool's, whose owner
    # no instruction proves, the verdict must be review, never a guessed owner: for a
    # recipient who may own the pool's account. The user (who owns the account it left) gets
    # at most nothing whoever owns the other: that is decided, not held.
    r = copy.deepcopy(result_of("failed_tx.json"))
    r["meta"]["err"] = None
    pre = {b["accountIndex"]: b for b in r["meta"]["preTokenBalances"]}
    post = {b["accountIndex"]: b for b in r["meta"]["postTokenBalances"]}
    post[3]["uiTokenAmount"]["amount"] = str(int(pre[3]["uiTokenAmount"]["amount"]) - 1000)
    post[4]["uiTokenAmount"]["amount"] = str(int(pre[4]["uiTokenAmount"]["amount"]) + 1000)
    calls = orjson.loads((SOL / "failed_tx.json").read_bytes())["calls"]
    status = next(c for c in calls if c["method"] == "getSignatureStatuses")
    status["result"]["value"][0].update(err=None, status={"Ok": None})  # finalized, succeeded
    tr = CassetteTransport(
        [Call({"method": "getTransaction", "params": [FAILED_SIG], "result": r}), Call(status)]
    )
    kin_rail = load_catalog().resolve("solana_usdc").model_copy(update={"decimals": 5})
    review = (Status.requires_review, FailureCode.ambiguous_transfer)
    for recipient, verdict in (
        ("CzcUkjjimSCHSCnCapqsbrkpvKzVbgWfDHchBYmzG8sB", review),
        ("9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin", review),
        (FAILED_OWNER, (Status.failed, FailureCode.wrong_recipient)),
    ):
        c = run_verify(
            adapter_for(kin_rail),
            FAILED_SIG,
            Terms(recipient=recipient, amount=1000, asset=KIN, now=NOW),
            tr,
        )
        assert (c.verdict.status, c.verdict.code) == verdict, recipient


# -- sol_v0_json_loadedaddresses_usdc_swap_mainnet (encoding json) ---------------------------------------


def test_json_encoding_index_space_includes_loaded_addresses():
    view = parse_transaction(result_of("v0_json_loadedaddresses_usdc_swap.json"), SWAP_SIG)
    assert len(view.account_keys) == 16 + 17 + 9
    moves = {m.account: (m.owner, m.delta) for m in movements(view, USDC) if m.delta}
    assert moves[view.account_keys[24]] == (
        "3HSYXeGc3LjEPCuzoNDjQN37F1ebsSiR4CqXVqQCdekZ",
        54_178_834,
    )
    assert moves["JSvtokJbtGsYhneKomFBjnJh4djEQLdHV2kAeS43bBZ"] == (
        "2MFoS3MPtvyQ4Wh4M9pdfPjz6UhVoNbFbGJAskCPCj3h",
        14_516,
    )
    assert sum(d for _, d in moves.values()) == 0


def test_json_encoding_writable_keys_come_from_the_header_and_the_loaded_writable_list():
    """Header {1 signer, 0 read-only signed, 6 read-only unsigned} over 16 static keys: the fee
    payer and static keys 1-9 may change, 10-15 (ComputeBudget, Jupiter, ...) may not; the 17
    loaded writable keys may, the 9 loaded read-only ones (Token program, pools' programs) not.
    A reference is only ever one of the read-only ones that is no program."""
    result = result_of("v0_json_loadedaddresses_usdc_swap.json")
    view = parse_transaction(result, SWAP_SIG)
    static = result["transaction"]["message"]["accountKeys"]
    loaded = result["meta"]["loadedAddresses"]
    assert view.writable == {*static[:10], *loaded["writable"]}
    assert not view.writable & {*static[10:], *loaded["readonly"]}


# Read-only keys of the swap that other payments routed the same way carry too: Jupiter v6's
# event authority, OpenBook v3 passed to a pool, the pools' and markets' accounts.
SWAP_SHARED = [
    "D8cy77BBepLMngZx6ZukaTff5hCt1HrWyKk3Hnd9oitf",
    "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
    "923j69hYbT5Set5kYfiQr1D8jPL6z15tbfTbVLSwUWJD",
    "7aDTsspkQNGKmrexAN7FLx9oxU3iPczSSvHNggyuqYkR",
    "H8oVxtJnyN81BjE5wZTz4DkX53k1BNRNyC9eT61q2bRH",
]


@pytest.mark.parametrize("shared", SWAP_SHARED)
def test_a_key_passed_to_a_swap_program_is_no_reference(adapter, shared):
    """Each is read-only, no signer, no token account and no program the transaction calls,
    but each is passed to a program other than the token, system and memo programs: that
    program's state, in every payment routed through it. Named as a session's reference it
    would find this payment (and any like it) for a session it was never made for."""
    view = parse_transaction(result_of("v0_json_loadedaddresses_usdc_swap.json"), SWAP_SIG)
    assert shared in view.account_keys and shared not in view.writable
    assert reference_candidates(view) == ()
    owner = "3HSYXeGc3LjEPCuzoNDjQN37F1ebsSiR4CqXVqQCdekZ"
    v = verify(
        adapter,
        "v0_json_loadedaddresses_usdc_swap.json",
        SWAP_SIG,
        recipient=owner,
        amount=54_178_834,
        reference=shared,
    ).verdict
    assert (v.status, v.code, v.observed["reference_found"]) == (
        Status.failed,
        FailureCode.reference_missing,
        False,
    ), v
    # Without a reference asked, the same payment is the recipient's as before.
    plain = verify(
        adapter,
        "v0_json_loadedaddresses_usdc_swap.json",
        SWAP_SIG,
        recipient=owner,
        amount=54_178_834,
    ).verdict
    assert plain.status is Status.verified, plain


def test_a_header_that_counts_more_keys_than_listed_is_malformed():
    result = copy.deepcopy(result_of("v0_json_loadedaddresses_usdc_swap.json"))
    result["transaction"]["message"]["header"]["numReadonlyUnsignedAccounts"] = 16
    with pytest.raises(MalformedResponse, match="header"):
        parse_transaction(result, SWAP_SIG)
    del result["transaction"]["message"]["header"]
    with pytest.raises(MalformedResponse, match="header"):
        parse_transaction(result, SWAP_SIG)


def test_swap_pays_the_loaded_address_owner(adapter):
    name = "v0_json_loadedaddresses_usdc_swap.json"
    owner = "3HSYXeGc3LjEPCuzoNDjQN37F1ebsSiR4CqXVqQCdekZ"
    at_least = verify(
        adapter, name, SWAP_SIG, recipient=owner, amount=54_000_000, at_least=True
    ).verdict
    assert at_least.status is Status.verified and at_least.observed["amount"] == "54178834"
    assert at_least.observed["sender"] == "5Q544fKrFoe6tsEbD7S8EmxGTJYAKtTVhAW5Q5pge4j1"
    exact = verify(adapter, name, SWAP_SIG, recipient=owner, amount=54_000_000).verdict
    assert exact.code is FailureCode.amount_mismatch


def test_swap_signer_received_no_usdc(adapter):
    v = verify(
        adapter,
        "v0_json_loadedaddresses_usdc_swap.json",
        SWAP_SIG,
        recipient="8dbEDtUgZZ3EFFGfeAg65cCiBCrj4ccxGeijQFiVwxjt",
        amount=1,
    ).verdict
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_recipient)


def test_memo_in_json_encoding_is_read_from_raw_instruction_data(adapter):
    # The json encoding has no parsed memos: the memo program's data is the memo's bytes.
    r = copy.deepcopy(result_of("v0_json_loadedaddresses_usdc_swap.json"))
    # The memo program as one more loaded read-only key: index 16 + 17 + 9 = 42.
    r["meta"]["loadedAddresses"]["readonly"].append("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
    r["transaction"]["message"]["instructions"].append(
        {"programIdIndex": 42, "accounts": [], "data": base58.b58encode(b"invoice 7").decode()}
    )
    assert memos_of(parse_transaction(r, SWAP_SIG)) == ["invoice 7"]
    tr = CassetteTransport(
        [
            Call({"method": "getTransaction", "params": [SWAP_SIG], "result": r}),
            *[
                Call(c)
                for c in orjson.loads(
                    (SOL / "v0_json_loadedaddresses_usdc_swap.json").read_bytes()
                )["calls"][1:]
            ],
        ]
    )
    owner = "3HSYXeGc3LjEPCuzoNDjQN37F1ebsSiR4CqXVqQCdekZ"
    ok = run_verify(
        adapter, SWAP_SIG, Terms(recipient=owner, amount=54_178_834, memo="invoice 7", now=NOW), tr
    )
    assert ok.verdict.status is Status.verified
    bad = run_verify(
        adapter, SWAP_SIG, Terms(recipient=owner, amount=54_178_834, memo="invoice 8", now=NOW), tr
    )
    assert bad.verdict.code is FailureCode.memo_mismatch


# -- a node's garbage inside the real answer ----------------------------------------------------


def _inner(r: dict[str, Any]) -> list[dict[str, Any]]:
    return r["meta"]["innerInstructions"][0]["instructions"]


def _top(r: dict[str, Any]) -> list[dict[str, Any]]:
    return r["transaction"]["message"]["instructions"]


def _memo_data_not_text(r: dict[str, Any]) -> None:
    memo = _top(r)[2]
    del memo["parsed"]
    memo["data"] = 7


def _status_level_a_list(r: dict[str, Any]) -> None:
    r["value"][0]["confirmationStatus"] = ["finalized"]


GARBLED = {
    "initializeAccount3 info a string": lambda r: _inner(r)[3]["parsed"].update(info="x"),
    "ata create info a list": lambda r: _top(r)[0]["parsed"].update(info=["x"]),
    "instruction type a list": lambda r: _inner(r)[3]["parsed"].update(type=["x"]),
    "system accounts not keys": lambda r: _inner(r)[1].update(accounts=[{"k": 1}]),
    "memo data not text": _memo_data_not_text,
    "blockTime past any calendar": lambda r: r.update(blockTime=10**20),
    "slot past any column": lambda r: r.update(slot=2**63),
}


@pytest.mark.parametrize("edit", list(GARBLED.values()), ids=list(GARBLED))
def test_a_garbled_answer_is_malformed_and_pending_never_a_crash(adapter, caplog, edit):
    # Used to escape the adapter as AttributeError/TypeError/OverflowError: POST /v1/proofs
    # answered 500 and verify-offline printed a traceback. A node's garbage decides nothing.
    doc = orjson.loads((SOL / "usdc_transfer.json").read_bytes())
    edit(doc["calls"][0]["result"])
    chain = CassetteTransport([Call(c) for c in doc["calls"]])
    t = Terms(recipient=USDC_TO, amount=1000, now=NOW)
    with pytest.raises(MalformedResponse):
        adapter.verify(USDC_SIG, t, chain)
    with caplog.at_level("ERROR", logger="railproof.verify"):
        v = run_verify(adapter, USDC_SIG, t, chain).verdict
    assert (v.status, v.code) == (Status.pending, FailureCode.rpc_unavailable)
    assert not caplog.records  # read as malformed by the adapter, not caught as a bug


def test_a_status_whose_level_is_not_text_is_malformed(adapter):
    # Used to raise TypeError (an unhashable level looked up among the known levels).
    doc = orjson.loads((SOL / "usdc_transfer.json").read_bytes())
    _status_level_a_list(doc["calls"][1]["result"])
    chain = CassetteTransport([Call(c) for c in doc["calls"]])
    with pytest.raises(MalformedResponse):
        adapter.finality([USDC_SIG], chain)
    v = run_verify(adapter, USDC_SIG, Terms(recipient=USDC_TO, amount=1000, now=NOW), chain)
    assert (v.verdict.status, v.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)


@pytest.mark.parametrize(
    "over",
    [
        {"slot": 2**63},
        {"slot": -1},
        {"confirmations": 2**64, "confirmationStatus": "confirmed"},
    ],
    ids=["slot", "negative-slot", "confirmations"],
)
def test_a_status_integer_no_column_holds_is_malformed(adapter, over):
    # Any int was taken for the slot and the confirmations, both stored in BIGINT columns:
    # POST /v1/proofs answered 500 (and a finality sweep raised) on a node's huge number.
    doc = orjson.loads((SOL / "usdc_transfer.json").read_bytes())
    doc["calls"][1]["result"]["value"][0].update(over)
    chain = CassetteTransport([Call(c) for c in doc["calls"]])
    with pytest.raises(MalformedResponse, match="not a slot or block number"):
        adapter.finality([USDC_SIG], chain)
    v = run_verify(adapter, USDC_SIG, Terms(recipient=USDC_TO, amount=1000, now=NOW), chain)
    assert (v.verdict.status, v.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
