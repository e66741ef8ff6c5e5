"""The Solana adapter on the generated cassettes (real transactions executed by the SPL
programs in LiteSVM, see scripts/make_solana_cassettes.py): every failure code reachable on
Solana, the call budget, finality batching and policy, proof/address shapes and prepare()."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from solders.keypair import Keypair

from rails import adapter_for
from rails.base import SessionShape, Status, Terms
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed, UnmatchedRequest
from rails.solana import (
    STATUS_BATCH,
    SolanaAdapter,
    finality_code,
    is_final,
    parse_transaction,
    ui_amount,
)
from rails.transport.cassette import Call, CassetteTransport, CountingTransport
from registry.catalog import FinalityPolicy, load_catalog
from verifier.core.checking import run_verify

GEN = Path(__file__).resolve().parent.parent / "fixtures" / "solana" / "generated"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def rail(rail_id: str = "solana_usdc"):
    return load_catalog().resolve(rail_id)


@pytest.fixture(scope="module")
def adapter() -> SolanaAdapter:
    a = adapter_for(rail())
    assert isinstance(a, SolanaAdapter)
    return a


def doc(name: str) -> dict[str, Any]:
    return orjson.loads((GEN / f"{name}.json").read_bytes())


def sig_of(name: str) -> str:
    d = doc(name)
    return d["calls"][0]["params"][0]


def chain(name: str) -> CassetteTransport:
    return CassetteTransport.from_files([GEN / f"{name}.json"])


def terms(name: str, **over: Any) -> Terms:
    exp = doc(name).get("expect", {})
    base = {"recipient": exp.get("recipient"), "amount": exp.get("amount"), "now": NOW}
    if "asset" in exp:
        base["asset"] = exp["asset"]
    base.update(over)
    return Terms(**base)


def check(adapter: SolanaAdapter, name: str, **over: Any):
    return run_verify(adapter, sig_of(name), terms(name, **over), chain(name))


class MethodLog:
    """Counts calls and keeps their methods (CountingTransport counts; this also names)."""

    def __init__(self, inner: Any):
        self.inner, self.source, self.methods = inner, inner.source, []

    def call(self, method: str, params: list[Any]) -> Any:
        self.methods.append(method)
        return self.inner.call(method, params)


# -- shapes -------------------------------------------------------------------------------------

REAL_SIG = (
    "2S2rTZjaqzxYRw9mnqzwtyqitKtSsnE8GVqLn1KrD5R2YpXZnU4GdjppsgfSAbrzJfaqadfi8CtrqEBy588WVQ3E"
)


def test_normalize_proof_keeps_a_signature_exactly_as_given(adapter):
    assert adapter.normalize_proof("solana_tx_signature", REAL_SIG) == REAL_SIG


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "abc",
        REAL_SIG[:40],
        REAL_SIG + "1",
        " " + REAL_SIG,
        "0x" + "ab" * 64,
        REAL_SIG.replace("2", "0", 1),  # '0' is not a base58 digit
        "1" * 43,
    ],
)
def test_normalize_proof_rejects_what_is_not_a_64_byte_base58_signature(adapter, raw):
    with pytest.raises(ProofMalformed) as e:
        adapter.normalize_proof("solana_tx_signature", raw)
    assert e.value.field == "proof"


def test_normalize_proof_rejects_another_families_proof_type(adapter):
    with pytest.raises(ProofMalformed) as e:
        adapter.normalize_proof("evm_tx_hash", REAL_SIG)
    assert e.value.field == "proof_type"


def test_normalize_address(adapter):
    assert adapter.normalize_address(USDC) == USDC
    for bad in [
        "",
        "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEG",
        "0xdAC17F958D2ee523a2206206994597C13D831ec7",
        "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v ",
    ]:
        with pytest.raises(ProofMalformed) as e:
            adapter.normalize_address(bad, field="recipient")
        assert e.value.field == "recipient"


def test_new_reference_is_a_fresh_valid_pubkey(adapter):
    refs = {adapter.new_reference() for _ in range(20)}
    assert len(refs) == 20
    for r in refs:
        assert adapter.normalize_address(r, "reference") == r


# -- prepare --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "units,decimals,ui",
    [
        (25_000_000, 6, "25"),
        (1_500, 6, "0.0015"),
        (1, 6, "0.000001"),
        (0, 6, "0"),
        (10**18 + 1, 6, "1000000000000.000001"),
        (123_456_789, 6, "123.456789"),
        (7, 0, "7"),
    ],
)
def test_ui_amount_is_exact_decimal_text(units, decimals, ui):
    assert ui_amount(units, decimals) == ui


def test_prepare_builds_a_solana_pay_transfer_request(adapter):
    ref = str(Keypair.from_seed(bytes([9] * 32)).pubkey())
    treasury = str(Keypair.from_seed(bytes([8] * 32)).pubkey())
    s = SessionShape(
        id="s1",
        recipient=treasury,
        amount=25_000_000,
        reference=ref,
        memo="order 1/2&x=y",
        expires_at=NOW,
        access_product_id="p1",
    )
    req = adapter.prepare(s)
    assert req.url == (
        f"solana:{treasury}?amount=25&spl-token={USDC}&reference={ref}&memo=order%201%2F2%26x%3Dy"
    )
    assert (req.rail_id, req.network, req.asset, req.amount) == (
        "solana_usdc",
        "solana-mainnet",
        USDC,
        "25000000",
    )
    assert req.data["amount"] == "25000000" and req.data["ui_amount"] == "25"
    bare = adapter.prepare(s.model_copy(update={"reference": None, "memo": None, "amount": 1_500}))
    assert bare.url == f"solana:{treasury}?amount=0.0015&spl-token={USDC}"


# -- finality policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "commitment,level,final",
    [
        ("processed", "finalized", False),
        ("confirmed", "finalized", False),
        ("finalized", "finalized", True),
        ("processed", "confirmed", False),
        ("confirmed", "confirmed", True),
        ("finalized", "confirmed", True),
        ("not_found", "finalized", False),
        (None, "processed", False),
    ],
)
def test_is_final_policy(commitment, level, final):
    assert is_final(commitment, FinalityPolicy(mode="commitment", level=level)) is final


def test_the_live_rail_needs_finalized():
    assert rail().finality.level == "finalized"
    assert not is_final("confirmed", rail().finality)


# -- generated cassettes: passing cases ---------------------------------------------------------------


def test_reference_and_memo_transfer_verifies_with_two_calls(adapter):
    exp = doc("usdc_reference_memo")["expect"]
    log = MethodLog(chain("usdc_reference_memo"))
    meter = CountingTransport(log)
    v = adapter.verify(
        sig_of("usdc_reference_memo"),
        terms("usdc_reference_memo", reference=exp["reference"], memo=exp["memo"]),
        meter,
    )
    assert v.status is Status.verified, v.detail
    assert meter.calls == 2 and log.methods == ["getTransaction", "getSignatureStatuses"]
    assert v.observed["amount"] == "1500000" and isinstance(v.observed["amount"], str)
    assert v.observed["sender"] == exp["sender"]
    assert v.observed["reference_found"] is True and v.observed["memo"] == "order-1001"
    assert v.observed["asset"] == USDC and v.observed["decimals"] == 6
    assert v.settlement.finality == "finalized" and v.settlement.is_final
    assert finality_code(v.settlement) is None


def test_reference_appended_to_transfer_checked_shows_as_multisig_signer():
    # The scenario the generated data must show: the node reads the appended reference as a signer.
    exp = doc("usdc_reference_memo")["expect"]
    ins = doc("usdc_reference_memo")["calls"][0]["result"]["transaction"]["message"]["instructions"]
    tc = next(
        i
        for i in ins
        if isinstance(i.get("parsed"), dict) and i["parsed"]["type"] == "transferChecked"
    )
    assert (
        tc["parsed"]["info"]["signers"] == [exp["reference"]]
        and "authority" not in tc["parsed"]["info"]
    )


def test_v0_recipient_token_account_from_lookup_table_verifies(adapter):
    res = doc("v0_lookup_table_usdc")["calls"][0]["result"]
    keys = res["transaction"]["message"]["accountKeys"]
    post = {b["accountIndex"]: b for b in res["meta"]["postTokenBalances"]}
    recipient_idx = next(
        i
        for i, b in post.items()
        if b["owner"] == doc("v0_lookup_table_usdc")["expect"]["recipient"]
    )
    assert res["version"] == 0 and keys[recipient_idx]["source"] == "lookupTable"
    c = check(adapter, "v0_lookup_table_usdc")
    assert c.verdict.status is Status.verified and c.verdict.observed["amount"] == "2000000"


def test_extra_wallet_instructions_in_any_order_do_not_change_the_verdict(adapter):
    a = check(adapter, "extra_instructions_a", memo="order-1002").verdict
    b = check(adapter, "extra_instructions_b", memo="order-1002").verdict
    assert a.status is b.status is Status.verified
    same = ("amount", "recipient", "sender", "asset", "decimals", "memo")
    assert {k: a.observed[k] for k in same} == {k: b.observed[k] for k in same}


def test_every_permutation_of_instructions_gives_the_same_verdict(adapter):
    d = doc("extra_instructions_a")
    result = d["calls"][0]["result"]
    sig = result["transaction"]["signatures"][0]
    t = terms("extra_instructions_a", memo="order-1002")
    seen = set()
    for perm in itertools.permutations(result["transaction"]["message"]["instructions"]):
        r = copy.deepcopy(result)
        r["transaction"]["message"]["instructions"] = list(perm)
        tr = CassetteTransport(
            [Call({"method": "getTransaction", "params": [sig], "result": r}), Call(d["calls"][1])]
        )
        v = adapter.verify(sig, t, tr)
        seen.add((v.status, v.code, v.observed["amount"]))
    assert seen == {(Status.verified, None, "3000000")}


def test_ata_created_in_the_same_transaction_has_no_pre_balance_and_counts(adapter):
    res = doc("ata_created_same_tx")["calls"][0]["result"]
    exp = doc("ata_created_same_tx")["expect"]
    post_idx = {
        b["accountIndex"]
        for b in res["meta"]["postTokenBalances"]
        if b["owner"] == exp["recipient"]
    }
    pre_idx = {b["accountIndex"] for b in res["meta"]["preTokenBalances"]}
    assert post_idx and not (post_idx & pre_idx)
    v = check(adapter, "ata_created_same_tx").verdict
    assert (
        v.status is Status.verified
        and v.observed["amount"] == "4200000"
        and v.observed["sender"] == exp["sender"]
    )


def test_token2022_transfer_fee_counts_the_recipients_net(adapter):
    exp = doc("token2022_transfer_fee")["expect"]
    assert check(adapter, "token2022_transfer_fee").verdict.status is Status.verified  # 990000 net
    gross = check(adapter, "token2022_transfer_fee", amount=exp["gross"]).verdict
    assert gross.code is FailureCode.amount_mismatch and gross.observed["amount"] == "990000"
    at_least = check(adapter, "token2022_transfer_fee", amount=exp["gross"], at_least=True).verdict
    assert at_least.code is FailureCode.amount_mismatch
    # On the default rail (USDC mint) this token is simply the wrong asset.
    assert (
        check(adapter, "token2022_transfer_fee", asset=None).verdict.code is FailureCode.wrong_asset
    )


def test_old_format_balances_resolved_through_the_transactions_own_instructions(adapter):
    res = doc("old_format_resolved")["calls"][0]["result"]
    assert all(
        "owner" not in b for b in res["meta"]["preTokenBalances"] + res["meta"]["postTokenBalances"]
    )
    v = check(adapter, "old_format_resolved").verdict
    assert v.status is Status.verified, v.detail
    assert v.observed["sender"] == doc("old_format_resolved")["expect"]["sender"]


def test_demo_payment_verifies_inside_its_window(adapter):
    demo = doc("demo_payment")["demo"]
    t = Terms(
        recipient=demo["recipient"],
        amount=int(demo["amount"]),
        reference=demo["reference"],
        memo=demo["memo"],
        not_before=datetime.fromisoformat(demo["clock"]),
        not_after=datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
        now=NOW,
    )
    c = run_verify(
        adapter, demo["signature"], t, CassetteTransport.from_files([GEN / "demo_payment.json"])
    )
    assert c.verdict.status is Status.verified and c.rpc_calls == 2 and c.source == "cassette"
    assert (
        c.verdict.observed["block_time"] == "2026-01-01T00:01:00+00:00"
        and c.verdict.settlement.is_final
    )


# -- generated cassettes: every failure code ------------------------------------------------------------


def test_tx_not_found_is_pending_after_one_call(adapter):
    c = run_verify(
        adapter,
        sig_of("tx_not_found"),
        Terms(recipient=USDC, amount=1, now=NOW),
        chain("tx_not_found"),
    )
    assert (c.verdict.status, c.verdict.code, c.rpc_calls) == (
        Status.pending,
        FailureCode.tx_not_found,
        1,
    )


def test_rpc_error_is_pending_rpc_unavailable_never_failed(adapter):
    c = run_verify(
        adapter, sig_of("rpc_error"), Terms(recipient=USDC, amount=1, now=NOW), chain("rpc_error")
    )
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)


def test_unmatched_cassette_request_is_pending_not_failed(adapter):
    other = Keypair.from_seed(bytes([7] * 32)).sign_message(b"x")
    c = run_verify(
        adapter, str(other), Terms(recipient=USDC, amount=1, now=NOW), chain("demo_payment")
    )
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)
    with pytest.raises(UnmatchedRequest):
        adapter.verify(str(other), Terms(recipient=USDC, amount=1, now=NOW), chain("demo_payment"))


def test_a_lying_node_answering_another_transaction_is_never_verified(adapter):
    name = "lying_node"
    t = terms("demo_payment", recipient=doc("demo_payment")["demo"]["recipient"], amount=25_000_000)
    with pytest.raises(MalformedResponse):
        adapter.verify(sig_of(name), t, chain(name))
    c = run_verify(adapter, sig_of(name), t, chain(name))
    assert (c.verdict.status, c.verdict.code) == (Status.pending, FailureCode.rpc_unavailable)


def test_wrong_asset_for_a_look_alike_mint(adapter):
    v = check(adapter, "wrong_mint", asset=None).verdict
    assert (v.status, v.code) == (Status.failed, FailureCode.wrong_asset)
    # The same transaction is a fine payment of that other token: only the mint differs.
    assert check(adapter, "wrong_mint").verdict.status is Status.verified


def test_decimals_mismatch(adapter):
    v = check(adapter, "decimals_mismatch").verdict
    assert (v.status, v.code) == (Status.failed, FailureCode.decimals_mismatch)


def test_wrong_recipient(adapter):
    exp = doc("usdc_reference_memo")["expect"]
    stranger = str(Keypair.from_seed(bytes([3] * 32)).pubkey())
    for who in (stranger, exp["sender"]):  # nobody, and the payer (whose balance fell)
        v = check(adapter, "usdc_reference_memo", recipient=who).verdict
        assert (v.status, v.code) == (Status.failed, FailureCode.wrong_recipient)


def test_amount_mismatch_on_underpayment_and_at_least_policy(adapter):
    v = check(adapter, "underpayment").verdict
    assert (v.status, v.code, v.observed["amount"]) == (
        Status.failed,
        FailureCode.amount_mismatch,
        "24000000",
    )
    assert check(adapter, "underpayment", amount=24_000_000).verdict.status is Status.verified
    assert (
        check(adapter, "underpayment", amount=20_000_000, at_least=True).verdict.status
        is Status.verified
    )
    # Exact by default: an overpayment is a mismatch too.
    assert (
        check(adapter, "underpayment", amount=20_000_000).verdict.code
        is FailureCode.amount_mismatch
    )


def test_reference_missing(adapter):
    fresh = adapter.new_reference()
    v = check(adapter, "usdc_reference_memo", reference=fresh).verdict
    assert (v.status, v.code, v.observed["reference_found"]) == (
        Status.failed,
        FailureCode.reference_missing,
        False,
    )


def test_memo_mismatch(adapter):
    v = check(adapter, "usdc_reference_memo", memo="order-9999").verdict
    assert (v.status, v.code) == (Status.failed, FailureCode.memo_mismatch)
    assert (
        check(adapter, "confirmed_not_final", memo="anything").verdict.code
        is FailureCode.memo_mismatch
    )


def test_session_window(adapter):
    demo = doc("demo_payment")["demo"]
    base = dict(recipient=demo["recipient"], amount=25_000_000, now=NOW)
    tr = CassetteTransport.from_files([GEN / "demo_payment.json"])
    late = run_verify(
        adapter,
        demo["signature"],
        Terms(**base, not_after=datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)),
        tr,
    )
    assert (late.verdict.status, late.verdict.code) == (Status.failed, FailureCode.session_expired)
    early = run_verify(
        adapter,
        demo["signature"],
        Terms(**base, not_before=datetime(2026, 1, 1, 0, 2, tzinfo=UTC)),
        tr,
    )
    assert (early.verdict.status, early.verdict.code) == (
        Status.failed,
        FailureCode.session_not_open,
    )
    edge = run_verify(
        adapter,
        demo["signature"],
        Terms(
            **base,
            not_before=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
            not_after=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        ),
        tr,
    )
    assert edge.verdict.status is Status.verified


def test_ambiguous_owners_go_to_review_never_a_guess(adapter):
    c = check(adapter, "old_format_ambiguous")
    assert (c.verdict.status, c.verdict.code) == (
        Status.requires_review,
        FailureCode.ambiguous_transfer,
    )
    assert c.verdict.observed["amount"] is None and c.rpc_calls == 1


def test_token_account_owner_change_is_ambiguous(adapter):
    d = doc("usdc_reference_memo")
    r = copy.deepcopy(d["calls"][0]["result"])
    exp = d["expect"]
    # The recipient "receives" by being made owner of a funded account: not an ordinary transfer.
    for b in r["meta"]["postTokenBalances"]:
        if b["owner"] == exp["sender"]:
            b["owner"] = exp["recipient"]
    sig = r["transaction"]["signatures"][0]
    v = adapter.verify(
        sig,
        terms("usdc_reference_memo"),
        CassetteTransport([Call({"method": "getTransaction", "params": [sig], "result": r})]),
    )
    assert (v.status, v.code) == (Status.requires_review, FailureCode.ambiguous_transfer)


@pytest.mark.parametrize(
    "new_owner,sent,left,verdict",
    [
        # 1 base unit from an account handed to a third wallet: whoever owns it, 1 is not the
        # price (anyone knowing a reference could otherwise hold its session for review)
        ("third", 1, 999_999_999, (Status.failed, FailureCode.amount_mismatch)),
        # ...or handed to the recipient with far more than the price in it
        ("recipient", 1, 999_999_999, (Status.failed, FailureCode.amount_mismatch)),
        # handed to the recipient holding the rest of the price: worth the price, for a person
        ("recipient", 1, 1_499_999, (Status.requires_review, FailureCode.ambiguous_transfer)),
        # handed to a third wallet, the price transferred: the transfer may be the payment
        ("third", 1_500_000, 5, (Status.requires_review, FailureCode.ambiguous_transfer)),
    ],
)
def test_an_account_handed_over_is_held_only_when_it_could_pay(
    adapter, new_owner, sent, left, verdict
):
    d = doc("usdc_reference_memo")
    r = copy.deepcopy(d["calls"][0]["result"])
    exp = d["expect"]
    third = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
    for b in r["meta"]["postTokenBalances"]:
        if b["owner"] == exp["sender"]:
            b["owner"] = exp["recipient"] if new_owner == "recipient" else third
            b["uiTokenAmount"]["amount"] = str(left)
        else:
            b["uiTokenAmount"]["amount"] = str(sent)
    sig = r["transaction"]["signatures"][0]
    v = adapter.verify(
        sig,
        terms("usdc_reference_memo"),
        CassetteTransport(
            [Call({"method": "getTransaction", "params": [sig], "result": r}), Call(d["calls"][1])]
        ),
    )
    assert (v.status, v.code) == verdict, v.detail


def test_confirmed_is_verified_but_not_final(adapter):
    c = check(adapter, "confirmed_not_final")
    s = c.verdict.settlement
    assert c.verdict.status is Status.verified and c.rpc_calls == 2
    assert (s.finality, s.is_final) == ("confirmed", False)
    assert finality_code(s) is FailureCode.not_final
    assert c.verdict.observed["finality"] == "confirmed"
    lenient = SolanaAdapter(
        rail().model_copy(update={"finality": FinalityPolicy(mode="commitment", level="confirmed")})
    )
    assert check(lenient, "confirmed_not_final").verdict.settlement.is_final


def test_review_only_rail_never_ends_verified():
    usdt = adapter_for(rail("solana_usdt"))
    c = check(usdt, "usdc_reference_memo", asset=USDC)
    assert (c.verdict.status, c.verdict.code) == (
        Status.requires_review,
        FailureCode.review_only_rail,
    )


def test_failing_checks_cost_one_call_and_one_status_when_read_from_the_effect(adapter):
    # The reference and the memo are the transaction's own content: one call decides them.
    for over in ({"reference": adapter.new_reference()}, {"memo": "order-9999"}):
        c = check(adapter, "usdc_reference_memo", **over)
        assert (c.verdict.status, c.rpc_calls) == (Status.failed, 1)
    # What it did (asset, decimals, amount) fails only with a final status: one call more.
    for name, over in [
        ("wrong_mint", {"asset": None}),
        ("underpayment", {}),
        ("decimals_mismatch", {}),
    ]:
        c = check(adapter, name, **over)
        assert (c.verdict.status, c.rpc_calls) == (Status.failed, 2)


@pytest.mark.parametrize(
    "over,code",
    [
        ({"amount": 5_000_001}, FailureCode.amount_mismatch),
        (
            {"recipient": str(Keypair.from_seed(bytes([3] * 32)).pubkey())},
            FailureCode.wrong_recipient,
        ),
        ({"asset": "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB"}, FailureCode.wrong_asset),
    ],
    ids=["amount", "recipient", "asset"],
)
def test_a_failure_read_from_a_confirmed_block_waits_for_finality(adapter, over, code):
    # The same signed transaction, dropped with its fork, may run again in another slot,
    # where state-dependent effects (a swap routed to the treasury, a program branching on
    # state) move another amount: what it moved is no definitive `failed` before its block is
    # final, exactly as a transaction that failed on chain is not (a failed proof is terminal
    # and the same signature submitted again returns it).
    c = check(adapter, "confirmed_not_final", **over)
    v = c.verdict
    assert (v.status, v.code, c.rpc_calls) == (Status.pending, FailureCode.not_final, 2), v
    assert v.detail.startswith(f"{code.value}: ") and "failed once final" in v.detail
    assert v.observed["finality"] == "confirmed"
    # Once the status is finalized, the same answer fails.
    calls = doc("confirmed_not_final")["calls"]
    calls[1]["result"]["value"][0].update(confirmations=None, confirmationStatus="finalized")
    final = CassetteTransport([Call(x) for x in calls])
    v = run_verify(
        adapter, sig_of("confirmed_not_final"), terms("confirmed_not_final", **over), final
    ).verdict
    assert (v.status, v.code) == (Status.failed, code)


def test_a_failure_of_the_transactions_own_content_needs_no_finality(adapter):
    # A reference or memo the transaction does not carry is missing in whichever slot it runs.
    c = check(adapter, "confirmed_not_final", reference=adapter.new_reference())
    assert (c.verdict.status, c.verdict.code, c.rpc_calls) == (
        Status.failed,
        FailureCode.reference_missing,
        1,
    )
    c = check(adapter, "confirmed_not_final", memo="anything")
    assert (c.verdict.status, c.verdict.code, c.rpc_calls) == (
        Status.failed,
        FailureCode.memo_mismatch,
        1,
    )


# -- finality batching ------------------------------------------------------------------------------------


class StatusNode:
    """Answers getSignatureStatuses for any batch: finalized, except unknown signatures."""

    source = "cassette"

    def __init__(self, unknown: set[str], has_tx: frozenset[str] = frozenset()):
        self.unknown, self.has_tx, self.batches, self.tx_asked = unknown, has_tx, [], []

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "getTransaction":  # of an unknown signature: has the node the transaction?
            self.tx_asked.append(params[0])
            return {"slot": 10} if params[0] in self.has_tx else None
        assert method == "getSignatureStatuses" and params[1] == {"searchTransactionHistory": True}
        sigs = params[0]
        self.batches.append(len(sigs))
        value = [
            None
            if s in self.unknown
            else {
                "slot": 10,
                "confirmations": None,
                "err": None,
                "status": {"Ok": None},
                "confirmationStatus": "finalized",
            }
            for s in sigs
        ]
        return {"context": {"slot": 50}, "value": value}


def test_finality_for_600_proofs_costs_3_calls(adapter):
    refs = [str(Keypair.from_seed(i.to_bytes(32, "big")).sign_message(b"r")) for i in range(1, 601)]
    node = StatusNode(unknown=set())
    meter = CountingTransport(node)
    out = adapter.finality(refs, meter)
    assert meter.calls == 3 == -(-600 // STATUS_BATCH)
    assert node.batches == [256, 256, 88]
    assert [s.ref for s in out] == refs and all(s.is_final for s in out)


def test_a_transfer_without_status_is_gone_only_when_its_transaction_is_too(adapter):
    # Statuses are searched through history: a verified transfer without one went with a
    # dropped fork, or the node lacks it. One getTransaction per such signature decides.
    refs = [str(Keypair.from_seed(i.to_bytes(32, "big")).sign_message(b"r")) for i in range(1, 601)]
    unknown = refs[::100]
    node = StatusNode(unknown=set(unknown), has_tx=frozenset(unknown[::2]))
    meter = CountingTransport(node)
    out = {s.ref: s for s in adapter.finality(refs, meter)}
    assert meter.calls == 3 + 6 and node.tx_asked == unknown
    gone = [r for r in unknown if r not in node.has_tx]
    assert all(out[r].reorged and not out[r].is_final for r in gone)
    # The node has the transaction but no status for it: nothing is decided (left out).
    assert not any(r in out for r in node.has_tx)
    assert sum(1 for s in out.values() if s.is_final) == 594


def test_finality_rejects_a_status_list_of_the_wrong_length(adapter):
    class Short:
        source = "cassette"

        def call(self, method, params):
            return {"context": {"slot": 1}, "value": []}

    with pytest.raises(MalformedResponse):
        adapter.finality([REAL_SIG], Short())


def test_parse_rejects_garbage_shapes():
    for bad in [[], {"transaction": {}}, {"meta": {}, "transaction": {"signatures": []}}]:
        with pytest.raises(MalformedResponse):
            parse_transaction(bad, REAL_SIG)
    r = copy.deepcopy(doc("demo_payment")["calls"][0]["result"])
    r["meta"]["postTokenBalances"][0]["uiTokenAmount"]["amount"] = "1.5"
    with pytest.raises(MalformedResponse):
        parse_transaction(r, r["transaction"]["signatures"][0])
    # Entries that are not objects, or values of another type where a list or object
    # belongs: a malformed answer (pending rpc_unavailable), never an exception out of it.
    sig = r["transaction"]["signatures"][0]
    for spoil in (
        lambda m: m.__setitem__("preTokenBalances", [None]),
        lambda m: m.__setitem__("postTokenBalances", ["x"]),
        lambda m: m["postTokenBalances"][0].__setitem__("uiTokenAmount", "25"),
        lambda m: m.__setitem__("innerInstructions", [None]),
        lambda m: m.__setitem__("preTokenBalances", 7),
    ):
        bad = copy.deepcopy(doc("demo_payment")["calls"][0]["result"])
        spoil(bad["meta"])
        with pytest.raises(MalformedResponse):
            parse_transaction(bad, sig)


def test_the_whole_fixtures_directory_replays_each_case_as_alone(adapter):
    # RAILPROOF_CASSETTE_DIR replays every cassette together; no case may shadow another.
    everything = CassetteTransport.from_dir(GEN.parent.parent, "solana-mainnet")
    demo = doc("demo_payment")["demo"]
    t = Terms(
        recipient=demo["recipient"],
        amount=25_000_000,
        reference=demo["reference"],
        memo=demo["memo"],
        now=NOW,
    )
    assert run_verify(adapter, demo["signature"], t, everything).verdict.status is Status.verified
    for name, code in [
        ("tx_not_found", FailureCode.tx_not_found),
        ("rpc_error", FailureCode.rpc_unavailable),
        ("lying_node", FailureCode.rpc_unavailable),
    ]:
        alone = run_verify(adapter, sig_of(name), t, chain(name)).verdict
        together = run_verify(adapter, sig_of(name), t, everything).verdict
        assert alone.code is together.code is code
