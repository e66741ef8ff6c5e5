"""The Solana rail family (solana_usdc live, solana_usdt review-only).

A payment is proved from the ledger's effect, not from what an instruction claims: the
received amount is the net change of the rail's mint across the token accounts the recipient
owns, read from `preTokenBalances`/`postTokenBalances` of one `getTransaction` answer. That
makes the verdict independent of instruction order and of whatever else a wallet put in the
transaction (compute budget, assertions, memos, swaps).

Checks run in a fixed order, each a small function returning a `Finding` or None:

    shape (the node answered about the asked signature) → tx_failed_onchain →
    reference_missing → wrong_asset → decimals_mismatch → ambiguous_transfer (owners
    unknown) → wrong_recipient → amount_mismatch → memo_mismatch →
    session_not_open/session_expired

The session's reference comes first: a transfer that does not carry it is another session's
payment, whatever else it is (and must not end in review, which would hold it).

A verification is at most two calls: `getTransaction`, then — unless a check fails on the
transaction's own content (reference_missing, memo_mismatch) or holds it for review — one
`getSignatureStatuses` for the settlement. Every other failure is read from the effect the
transaction had where it ran (its balances, its error, its block time), which another slot
may change if its block is dropped: it is `failed` only once the status meets the rail's
finality, `pending not_final` before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn
from urllib.parse import quote

import base58
from solders import compute_budget, system_program, sysvar
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from rails.base import (
    FAILS_ONCE_FINAL,
    FAILS_ONCE_FINAL_KEY,
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
    chain_int,
    first_finding,
)
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed
from registry.catalog import FinalityPolicy, Rail

PROOF_TYPE = "solana_tx_signature"
TOKEN_PROGRAMS = frozenset(
    {
        "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",  # SPL Token
        "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb",  # Token-2022
    }
)
ATA_PROGRAM = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
MEMO_PROGRAMS = frozenset(
    {
        "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",  # spl-memo v2/v3
        "Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo",  # spl-memo v1
    }
)
# The programs whose instructions a payment's reference rides on (Solana Pay appends it to
# the transfer; a memo may carry it): any other program's accounts are shared state.
_REFERENCE_CARRIERS = TOKEN_PROGRAMS | MEMO_PROGRAMS | {str(system_program.ID)}
# getSignatureStatuses accepts at most this many signatures per request.
STATUS_BATCH = 256
COMMITMENT_RANK = {"processed": 0, "confirmed": 1, "finalized": 2}
MEMO_EVIDENCE_MAX = 200

GET_TX_OPTIONS = {
    "encoding": "jsonParsed",
    "maxSupportedTransactionVersion": 0,
    "commitment": "confirmed",
}
STATUS_OPTIONS = {"searchTransactionHistory": True}


# -- finality policy (pure) ------------------------------------------------------------------


def is_final(commitment: str | None, policy: FinalityPolicy) -> bool:
    """Whether a Solana commitment level satisfies the rail's policy.

    processed < confirmed < finalized; anything else (not_found, unknown) is never final.
    """
    # SECURITY: "confirmed" can still be rolled back; it passes only a policy that asks for
    # no more than "confirmed". The live rail asks for "finalized".
    if policy.mode != "commitment" or policy.level is None:
        return False
    rank = COMMITMENT_RANK.get(commitment or "")
    return rank is not None and rank >= COMMITMENT_RANK[policy.level]


def finality_code(settlement: Settlement | None) -> FailureCode | None:
    """`not_final` while a settlement does not satisfy its policy (for gates and the worker)."""
    if settlement is None or not settlement.is_final:
        return FailureCode.not_final
    return None


def settlement_from_status(ref: str, status: Any, policy: FinalityPolicy) -> Settlement:
    """One entry of a getSignatureStatuses `value` list, read against the rail's policy."""
    if status is None:
        return Settlement(
            ref=ref, finality="not_found", detail="the node has no status for this signature"
        )
    if not isinstance(status, dict):
        raise MalformedResponse(f"getSignatureStatuses: status entry is not an object: {status!r}")
    commitment = status.get("confirmationStatus")
    if commitment is None:
        # Older nodes omit confirmationStatus; `confirmations: null` there means rooted.
        confs = status.get("confirmations")
        commitment = "finalized" if confs is None else ("processed" if confs == 0 else "confirmed")
    if not isinstance(commitment, str) or commitment not in COMMITMENT_RANK:
        raise MalformedResponse(f"getSignatureStatuses: unknown confirmationStatus {commitment!r}")
    slot, confs = status.get("slot"), status.get("confirmations")
    failed = status.get("err") is not None
    return Settlement(
        ref=ref,
        finality=commitment,
        # SECURITY: a transaction that failed on chain settles nothing, however final.
        is_final=is_final(commitment, policy) and not failed,
        slot=chain_int(slot, "getSignatureStatuses: slot") if isinstance(slot, int) else None,
        confirmations=chain_int(confs, "getSignatureStatuses: confirmations")
        if isinstance(confs, int)
        else None,
        detail="failed on chain" if failed else "",
    )


# -- what a getTransaction answer says ---------------------------------------------------------


@dataclass(frozen=True)
class Instr:
    program_id: str
    parsed: Any  # dict for parsed instructions, str for memos, None when only raw data is known
    accounts: tuple[str, ...] = ()
    data: str | None = None


@dataclass(frozen=True)
class TokenBalance:
    account: str
    mint: str
    owner: str | None
    amount: int
    decimals: int


@dataclass(frozen=True)
class TxView:
    signature: str
    slot: int | None
    block_time: int | None
    err: Any
    account_keys: tuple[str, ...]
    instructions: tuple[Instr, ...]  # top-level then inner, in order
    pre: tuple[TokenBalance, ...]
    post: tuple[TokenBalance, ...]
    signers: frozenset[str] = frozenset()
    writable: frozenset[str] = frozenset()


# 9999-12-31T23:59:59Z + 1 s: the last second a datetime holds.
_MAX_TIME = 253402300800


def _bad(msg: str) -> NoReturn:
    raise MalformedResponse(f"getTransaction: {msg}")


def account_keys_of(message: dict[str, Any], meta: dict[str, Any]) -> tuple[str, ...]:
    """The transaction's account index space.

    jsonParsed lists every key as an object, lookup-table keys already merged in (source
    "lookupTable"). The raw json encoding lists only the static keys as strings; the loaded
    ones follow in `meta.loadedAddresses`: static ++ writable ++ readonly.
    """
    keys = message.get("accountKeys")
    if not isinstance(keys, list):
        _bad("message.accountKeys is not a list")
    out: list[str] = []
    for k in keys:
        key = k.get("pubkey") if isinstance(k, dict) else k
        if not isinstance(key, str):
            _bad(f"bad account key {k!r}")
        out.append(key)
    if keys and all(isinstance(k, str) for k in keys):
        loaded = meta.get("loadedAddresses") or {}
        for part in ("writable", "readonly"):
            extra = loaded.get(part) or []
            if not all(isinstance(x, str) for x in extra):
                _bad(f"bad loadedAddresses.{part}")
            out.extend(extra)
    return tuple(out)


def signers_of(message: dict[str, Any], keys: tuple[str, ...]) -> frozenset[str]:
    """The keys that signed: jsonParsed marks each key; the raw json encoding puts the
    header's `numRequiredSignatures` signers first. The fee payer (the first key) always
    signs."""
    listed = message.get("accountKeys") or []
    marked = {k.get("pubkey") for k in listed if isinstance(k, dict) and k.get("signer") is True}
    header = message.get("header")
    n = header.get("numRequiredSignatures") if isinstance(header, dict) else None
    first = keys[: n if isinstance(n, int) and n > 0 else 1]
    return frozenset(k for k in (*marked, *first) if isinstance(k, str))


def writable_of(
    message: dict[str, Any], meta: dict[str, Any], keys: tuple[str, ...]
) -> frozenset[str]:
    """The keys the transaction may change (lamports, data): jsonParsed marks each key; the raw
    json encoding orders the static keys writable signers, read-only signers, writable
    non-signers, read-only non-signers (the header counts them), and lists the lookup tables'
    writable keys in `meta.loadedAddresses.writable`."""
    listed = message.get("accountKeys") or []
    if listed and all(isinstance(k, dict) for k in listed):
        if not all(isinstance(k.get("writable"), bool) for k in listed):
            _bad("an account key without its writable flag")
        return frozenset(k["pubkey"] for k in listed if k["writable"])
    header = message.get("header")
    header = header if isinstance(header, dict) else {}
    n = len(listed)
    counts: list[int] = []
    for f in ("numRequiredSignatures", "numReadonlySignedAccounts", "numReadonlyUnsignedAccounts"):
        c = header.get(f)
        if not (isinstance(c, int) and 0 <= c <= n):
            _bad("message.header does not count the signers and read-only keys")
        counts.append(c)
    signed, ro_signed, ro_unsigned = counts
    if ro_signed > signed or signed + ro_unsigned > n:
        _bad("message.header counts more keys than the message lists")
    out = {
        k for i, k in enumerate(keys[:n]) if i < signed - ro_signed or signed <= i < n - ro_unsigned
    }
    out.update((meta.get("loadedAddresses") or {}).get("writable") or ())
    return frozenset(out)


# The programs whose parsed instructions are read (`owners_from_instructions`).
_PARSED_READ = TOKEN_PROGRAMS | {ATA_PROGRAM}


def _instr(raw: dict[str, Any], keys: tuple[str, ...]) -> Instr:
    if not isinstance(raw, dict):
        _bad(f"bad instruction {raw!r:.200}")
    data = raw.get("data")
    if not (data is None or isinstance(data, str)):
        _bad("instruction data is not a string")
    if "programIdIndex" in raw:  # json encoding: indices into the account index space
        idx = [raw["programIdIndex"], *raw.get("accounts", [])]
        if not all(isinstance(i, int) and 0 <= i < len(keys) for i in idx):
            _bad("instruction index out of range")
        return Instr(keys[idx[0]], None, tuple(keys[i] for i in idx[1:]), data)
    pid = raw.get("programId")
    if not isinstance(pid, str):
        _bad(f"instruction without programId {raw!r:.200}")
    accounts = raw.get("accounts") or []
    if not (isinstance(accounts, list) and all(isinstance(a, str) for a in accounts)):
        _bad(f"instruction accounts of {pid} are not a list of keys")
    parsed = raw.get("parsed")
    if pid in _PARSED_READ and isinstance(parsed, dict):
        # A parsed instruction is {"type": str, "info": {...}}; its info names token-account
        # owners, so anything else is a node's garbage, not a transaction to decide on.
        kind, info = parsed.get("type"), parsed.get("info")
        if not (kind is None or isinstance(kind, str)) or not (
            info is None or isinstance(info, dict)
        ):
            _bad(f"parsed instruction of {pid} is not {{type, info}} ({parsed!r:.200})")
    return Instr(pid, parsed, tuple(accounts), data)


def instructions_of(
    message: dict[str, Any], meta: dict[str, Any], keys: tuple[str, ...]
) -> tuple[Instr, ...]:
    out = [_instr(i, keys) for i in message.get("instructions") or []]
    for group in meta.get("innerInstructions") or []:
        if not isinstance(group, dict):
            _bad(f"bad inner instruction group {group!r:.200}")
        out.extend(_instr(i, keys) for i in group.get("instructions") or [])
    return tuple(out)


def _balance(raw: dict[str, Any], keys: tuple[str, ...]) -> TokenBalance:
    if not isinstance(raw, dict):
        _bad(f"bad token balance {raw!r:.200}")
    idx = raw.get("accountIndex")
    if not (isinstance(idx, int) and 0 <= idx < len(keys)):
        _bad(f"token balance index {idx!r} out of range")
    ui = raw.get("uiTokenAmount")
    if not isinstance(ui, dict):
        _bad(f"token balance without uiTokenAmount ({ui!r:.80})")
    amount, decimals = ui.get("amount"), ui.get("decimals")
    # Integer base units only: uiAmount is a float and is never read.
    if not (isinstance(amount, str) and amount.isdigit()):
        _bad(f"token amount {amount!r} is not an integer string")
    if not isinstance(decimals, int):
        _bad(f"token decimals {decimals!r} is not an integer")
    owner = raw.get("owner")
    if not (owner is None or isinstance(owner, str)):
        _bad(f"bad token owner {owner!r}")
    if not isinstance(raw.get("mint"), str):
        _bad("token balance without mint")
    return TokenBalance(keys[idx], raw["mint"], owner, int(amount), decimals)


def parse_transaction(result: Any, asked: str) -> TxView:
    """Read a getTransaction result (jsonParsed or json encoding); raise MalformedResponse for
    anything that is not the shape of a transaction, or not the transaction asked for."""
    try:
        return _parse_transaction(result, asked)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        # A shape no check above foresaw is a broken answer too, never a crash: every caller
        # (verification, the treasury watch, reconciliation) then treats it as one node
        # answer it could not read, and their rules for those (retry, pass over) apply.
        raise MalformedResponse(f"getTransaction: unexpected shape ({e!r:.200})") from e


def _parse_transaction(result: Any, asked: str) -> TxView:
    if not isinstance(result, dict):
        _bad("result is not an object")
    tx, meta = result.get("transaction"), result.get("meta")
    if not (isinstance(tx, dict) and isinstance(meta, dict)):
        _bad("no transaction/meta")
    sigs = tx.get("signatures")
    if not (isinstance(sigs, list) and sigs):
        _bad("no signatures")
    # SECURITY: a broken or lying node could answer with another (successful) transaction;
    # the first signature is the transaction's id and must be the one we asked about.
    if sigs[0] != asked:
        raise MalformedResponse(f"getTransaction: asked for {asked}, the node answered {sigs[0]}")
    message = tx.get("message")
    if not isinstance(message, dict):
        _bad("no message")
    keys = account_keys_of(message, meta)
    slot, block_time = result.get("slot"), result.get("blockTime")
    if slot is not None:
        chain_int(slot, "getTransaction: slot")
    # The window check and the evidence read it as a date: one no calendar holds is garbage.
    if not (block_time is None or (isinstance(block_time, int) and 0 <= block_time < _MAX_TIME)):
        _bad("blockTime is not an integer time")
    return TxView(
        signature=asked,
        slot=slot,
        block_time=block_time,
        err=meta.get("err"),
        account_keys=keys,
        instructions=instructions_of(message, meta, keys),
        pre=tuple(_balance(b, keys) for b in meta.get("preTokenBalances") or []),
        post=tuple(_balance(b, keys) for b in meta.get("postTokenBalances") or []),
        signers=signers_of(message, keys),
        writable=writable_of(message, meta, keys),
    )


def memos_of(view: TxView) -> list[str]:
    out = []
    for ins in view.instructions:
        if ins.program_id not in MEMO_PROGRAMS:
            continue
        if isinstance(ins.parsed, str):
            out.append(ins.parsed)
        elif ins.data:
            try:
                out.append(base58.b58decode(ins.data).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue  # not text: cannot equal a session memo
    return out


# -- token-account ownership -----------------------------------------------------------------

_INIT_TYPES = {"initializeAccount", "initializeAccount2", "initializeAccount3"}
_OWNER_SIGNED = {"approve", "approveChecked", "revoke"}


def owners_from_instructions(view: TxView) -> tuple[dict[str, str], set[str]]:
    """Token-account owners that the transaction itself proves, for balances that lack `owner`
    (older nodes). Returns (owner by account, accounts whose owner changed in this tx).

    Only instructions that can succeed solely for the true owner count: initializeAccount*
    (sets it), the associated-token-account program's create (derives the account from the
    wallet), approve/revoke (signed by the owner). A transfer's `authority` may be a delegate,
    so it never names an owner.
    """
    owners: dict[str, str] = {}
    changed: set[str] = set()
    for ins in view.instructions:
        if ins.program_id not in _PARSED_READ or not isinstance(ins.parsed, dict):
            continue
        # parse_transaction holds these to {"type": str, "info": object}.
        kind, info = ins.parsed.get("type"), ins.parsed.get("info") or {}
        if ins.program_id in TOKEN_PROGRAMS and kind in _INIT_TYPES:
            _claim(owners, info.get("account"), info.get("owner"))
        elif ins.program_id == ATA_PROGRAM and kind in {"create", "createIdempotent"}:
            _claim(owners, info.get("account"), info.get("wallet"))
        elif ins.program_id in TOKEN_PROGRAMS and kind in _OWNER_SIGNED:
            _claim(owners, info.get("source"), info.get("owner") or info.get("multisigOwner"))
        elif (
            ins.program_id in TOKEN_PROGRAMS
            and kind == "setAuthority"
            and info.get("authorityType") == "accountOwner"
            and isinstance(info.get("account"), str)
        ):
            changed.add(info["account"])
    return owners, changed


def _claim(owners: dict[str, str], account: Any, owner: Any) -> None:
    if not (isinstance(account, str) and isinstance(owner, str)):
        return
    # Two instructions naming different owners: keep neither (the caller sees "unknown").
    if owners.setdefault(account, owner) != owner:
        owners[account] = ""


@dataclass(frozen=True)
class Movement:
    """The net effect on one token account of the asked mint."""

    account: str
    owner: str | None  # None: unknown
    delta: int
    decimals: frozenset[int]
    owner_changed: bool = False
    # Each side as the balances list it: (owner or None, amount); None: no account then.
    before: tuple[str | None, int] | None = None
    after: tuple[str | None, int] | None = None

    def worth_to(self, wallet: str) -> tuple[int, int]:
        """What this account's change is worth to `wallet` at least and at most: exact when
        its owners are known on each side it exists (an account handed over between owners
        is its whole balance to whoever got or gave it); else anything its owner could be."""
        if self.owner is not None and not self.owner_changed:
            gain = self.delta if self.owner == wallet else 0
            return gain, gain
        sides = [x for x in (self.before, self.after) if x is not None]
        if self.owner_changed and sides and all(owner for owner, _ in sides):
            got = self.after[1] if self.after and self.after[0] == wallet else 0
            gave = self.before[1] if self.before and self.before[0] == wallet else 0
            return got - gave, got - gave
        if not self.owner_changed:  # one owner, not named: the wallet's or not
            return min(0, self.delta), max(0, self.delta)
        return -(self.before[1] if self.before else 0), (self.after[1] if self.after else 0)


def movements(view: TxView, mint: str) -> list[Movement]:
    """Per token account of `mint`, post minus pre (a missing entry is 0: an account created
    or closed in this transaction)."""
    pre = {b.account: b for b in view.pre if b.mint == mint}
    post = {b.account: b for b in view.post if b.mint == mint}
    resolved, reassigned = owners_from_instructions(view)
    out = []
    for account in sorted(pre.keys() | post.keys()):
        a, b = pre.get(account), post.get(account)
        owners = {x.owner for x in (a, b) if x is not None and x.owner}
        if not owners and account not in reassigned:
            owners = {resolved[account]} if resolved.get(account) else set()
        out.append(
            Movement(
                account=account,
                owner=next(iter(owners)) if len(owners) == 1 else None,
                delta=(b.amount if b else 0) - (a.amount if a else 0),
                decimals=frozenset(x.decimals for x in (a, b) if x is not None),
                owner_changed=len(owners) > 1 or account in reassigned,
                before=(a.owner or None, a.amount) if a else None,
                after=(b.owner or None, b.amount) if b else None,
            )
        )
    return out


def ledger_accounts(view: TxView) -> frozenset[str]:
    """The accounts a transfer carries for what it does, whoever it pays: its signers, every
    account it may change (a SOL transfer's destination, a tip or fee account: writable), every
    account it passes to a program other than the token, system and memo programs (a swap's
    markets, pools and event authorities), every token account it lists a balance for with
    that account's owner and mint, and the programs it calls. A repeat payer's wallet and
    token account, a treasury's token account, a wallet's fee or tip account, a swap's pool
    are in many payments: none of them can single one out as its reference (Solana Pay adds a
    reference as a read-only, non-signer key of the transfer)."""
    # SECURITY: a writable key is one the transaction may pay into; tip and fee accounts are
    # shared by many payments, so another tenant could name one as its session's reference.
    out = set(view.signers) | view.writable
    # SECURITY: a key passed to any program but the ones a Solana Pay transfer carries its
    # reference to (the token programs, the system program, a memo) is that program's state:
    # a swap's market, pool, oracle or event authority, the same in every payment routed
    # through it. Named as a reference, it would find (and take, or hold) those payments.
    for ins in view.instructions:
        if ins.program_id not in _REFERENCE_CARRIERS:
            out.update(ins.accounts)
    for b in (*view.pre, *view.post):
        out.update((b.account, b.mint))
        if b.owner:
            out.add(b.owner)
    out.update(owners_from_instructions(view)[0].values())
    out.update(i.program_id for i in view.instructions)
    return frozenset(out)


def reference_candidates(view: TxView) -> tuple[str, ...]:
    """The transaction's keys that could be a session's reference (not a ledger account)."""
    ledger = ledger_accounts(view)
    return tuple(dict.fromkeys(k for k in view.account_keys if k not in ledger))


@lru_cache(maxsize=4096)
def token_account(owner: str, mint: str, token_program: str = TOKEN_PROGRAM) -> str:
    """The associated token account of `owner` for `mint` under `token_program`. Cached: the
    derivation (a search for an off-curve point) is ~20 µs, and every session opened on the
    rail asks it again for the same treasuries (`SolanaAdapter.reserved_references`)."""
    addr, _ = Pubkey.find_program_address(
        [
            bytes(Pubkey.from_string(owner)),
            bytes(Pubkey.from_string(token_program)),
            bytes(Pubkey.from_string(mint)),
        ],
        Pubkey.from_string(ATA_PROGRAM),
    )
    return str(addr)


# -- the checks ------------------------------------------------------------------------------


@dataclass
class Context:
    view: TxView
    terms: Terms
    mint: str
    decimals: int
    moves: list[Movement] = field(default_factory=list)
    memos: list[str] = field(default_factory=list)
    candidates: tuple[str, ...] = ()  # reference_candidates(view)

    @property
    def changed(self) -> list[Movement]:
        return [m for m in self.moves if m.delta != 0]

    def received(self) -> int:
        return sum(m.delta for m in self.changed if m.owner == self.terms.recipient)


def check_not_failed(c: Context) -> Finding | None:
    # SECURITY: a failed transaction moves no tokens, whatever its instructions say.
    if c.view.err is not None:
        return Finding(FailureCode.tx_failed_onchain, f"transaction failed on chain: {c.view.err}")
    return None


def check_asset(c: Context) -> Finding | None:
    # SECURITY: only the rail's mint counts; a look-alike token with the same decimals is not USDC.
    if not c.changed:
        return Finding(FailureCode.wrong_asset, f"no balance of mint {c.mint} changed")
    return None


def check_decimals(c: Context) -> Finding | None:
    seen = set().union(*(m.decimals for m in c.moves))
    if seen != {c.decimals}:
        return Finding(
            FailureCode.decimals_mismatch,
            f"mint decimals {sorted(seen)}, rail expects {c.decimals}",
        )
    return None


def check_owners_known(c: Context) -> Finding | None:
    # SECURITY: never guess whose account moved; an unknown or changed owner goes to review,
    # unless no reading of it pays the session: then the chain has decided, and a review
    # would hold the transfer for a session it cannot pay. (Anyone who knows a reference can
    # send 1 base unit carrying it from an account whose owner they change: held for review,
    # the session was watched no more and its real payment never discovered.)
    unknown = [m for m in c.changed if m.owner is None or m.owner_changed]
    if not unknown:
        return None
    worth = [m.worth_to(c.terms.recipient) for m in c.changed]
    lo, hi = sum(w[0] for w in worth), sum(w[1] for w in worth)
    want = c.terms.amount

    def pays(low: int, high: int) -> bool:
        return high >= want if c.terms.at_least else low <= want <= high

    accounts = ", ".join(m.account for m in unknown)
    # Two readings: an account handed over is worth its balance to whoever got it, or only
    # the transfers count (what `received` sums). Either paying the session is for a person.
    plain = c.received()
    if hi <= 0 and plain <= 0:
        return Finding(
            FailureCode.wrong_recipient,
            f"{c.terms.recipient} received no {c.mint}, whoever owns {accounts}",
        )
    if not (pays(lo, hi) or pays(plain, plain)):
        return Finding(
            FailureCode.amount_mismatch,
            f"received {lo} to {hi} base units whoever owns {accounts}, expected "
            f"{'at least ' if c.terms.at_least else ''}{want}",
        )
    return Finding(
        FailureCode.ambiguous_transfer,
        f"owner of token account(s) {accounts} is unknown or changed in the transaction",
        review=True,
    )


def check_recipient(c: Context) -> Finding | None:
    # SECURITY: the session's wallet must end up with more of the mint than it started with.
    if c.received() <= 0:
        return Finding(FailureCode.wrong_recipient, f"{c.terms.recipient} received no {c.mint}")
    return None


def check_amount(c: Context) -> Finding | None:
    got, want = c.received(), c.terms.amount
    # SECURITY: exact by default, so an overpayment is not silently accepted as another price.
    ok = got >= want if c.terms.at_least else got == want
    if not ok:
        policy = "at least " if c.terms.at_least else ""
        return Finding(
            FailureCode.amount_mismatch, f"received {got}, expected {policy}{want} base units"
        )
    return None


def check_reference(c: Context) -> Finding | None:
    # SECURITY: binds the transfer to this session, so one payment cannot be claimed twice.
    ref = c.terms.reference
    if ref is None:
        return None
    if ref not in c.view.account_keys:
        return Finding(
            FailureCode.reference_missing, f"reference {ref} is not among the account keys"
        )
    # SECURITY: a signer, an account the transaction may pay into (writable: a tip or fee
    # account), a token account, its owner or mint, or a program is in other payments too (a
    # treasury's token account is in every payment to it): it is never what binds this
    # transfer to one session.
    if c.terms.reference_generated:
        # SECURITY: railproof made this key from a secret for this session alone: nobody else
        # can have put it in a transaction, wherever it sits (a smart wallet's execute, a
        # swap's route). A key the client chose is taken only where no shared account can be.
        return None
    if ref not in c.candidates:
        return Finding(
            FailureCode.reference_missing,
            f"reference {ref} is one of the accounts the transfer moves funds with (a signer, "
            "a writable account, a token account, its owner or mint, or a program), not a "
            "reference (a read-only key)",
        )
    return None


def _reference_found(c: Context) -> bool:
    ref = c.terms.reference
    if c.terms.reference_generated:
        return ref in c.view.account_keys
    return ref in c.candidates


def check_memo(c: Context) -> Finding | None:
    memo = c.terms.memo
    if memo is not None and memo not in c.memos:
        return Finding(FailureCode.memo_mismatch, f"no memo instruction equals {memo!r}")
    return None


def check_window(c: Context) -> Finding | None:
    lo, hi = c.terms.not_before, c.terms.not_after
    if lo is None and hi is None:
        return None
    t = c.view.block_time
    if t is None:
        return Finding(
            FailureCode.ambiguous_transfer,
            "no blockTime: the transfer cannot be placed in the session window",
            review=True,
        )
    # SECURITY: a transfer made before the session opened (or after it expired) pays another
    # session.
    if lo is not None and t < _epoch(lo):
        return Finding(
            FailureCode.session_not_open,
            f"blockTime {t} is before the session's window opened ({lo.isoformat()})",
        )
    if hi is not None and t > _epoch(hi):
        return Finding(
            FailureCode.session_expired,
            f"blockTime {t} is after the session expired ({hi.isoformat()})",
        )
    return None


def _epoch(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


CHECKS: tuple[Check[Context], ...] = (
    check_not_failed,
    # SECURITY: before anything that can end in review: a transfer without the session's
    # reference is not this session's payment, and a review verdict would hold it for the
    # session that claimed it (blocking the session it was made for).
    check_reference,
    check_asset,
    check_decimals,
    check_owners_known,
    check_recipient,
    check_amount,
    check_memo,
    check_window,
)


def observe(c: Context) -> Observed:
    """Redacted evidence: what the chain said, amounts as strings of base units."""
    known = all(m.owner is not None and not m.owner_changed for m in c.changed)
    senders = sorted({m.owner for m in c.changed if m.delta < 0 and m.owner})
    decimals = sorted(set().union(*(m.decimals for m in c.moves))) if c.moves else []
    memo = c.terms.memo if c.terms.memo in c.memos else (c.memos[0] if c.memos else None)
    t = c.view.block_time
    return Observed(
        amount=str(c.received()) if known else None,
        recipient=c.terms.recipient,
        sender=",".join(senders) or None,
        asset=c.mint,
        decimals=decimals[0] if len(decimals) == 1 else (decimals or None),
        slot=c.view.slot,
        block_time=datetime.fromtimestamp(t, tz=UTC) if t is not None else None,
        reference_found=_reference_found(c) if c.terms.reference else None,
        memo=memo[:MEMO_EVIDENCE_MAX] if memo is not None else None,
    )


# -- the adapter -----------------------------------------------------------------------------

# Failures read from what the transaction says, not from what it did: the same signed
# transaction carries the same keys and memos in whichever slot it runs.
CONTENT_FAILURES = frozenset({FailureCode.reference_missing, FailureCode.memo_mismatch})


def ui_amount(base_units: int, decimals: int) -> str:
    """Base units as a decimal string (25000000, 6 → "25"; 1500, 6 → "0.0015"), no floats."""
    if base_units < 0:
        raise ValueError("amount must not be negative")
    whole, frac = divmod(base_units, 10**decimals)
    frac_s = str(frac).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole}.{frac_s}" if frac_s else str(whole)


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# Accounts that ordinary transfers carry whoever pays (programs a wallet invokes, sysvars,
# the native mint): a session reference equal to one of them would be "found" in other
# tenants' payments. Library constants where the libraries have them.
WELL_KNOWN_ACCOUNTS = (
    TOKEN_PROGRAMS
    | MEMO_PROGRAMS
    | {ATA_PROGRAM}
    | frozenset(
        str(k)
        for k in (
            system_program.ID,
            compute_budget.ID,
            sysvar.CLOCK,
            sysvar.EPOCH_SCHEDULE,
            sysvar.INSTRUCTIONS,
            sysvar.RECENT_BLOCKHASHES,
            sysvar.RENT,
            sysvar.REWARDS,
            sysvar.SLOT_HASHES,
            sysvar.STAKE_HISTORY,
        )
    )
    | frozenset(
        (
            "So11111111111111111111111111111111111111112",  # wrapped SOL mint
            "AddressLookupTab1e1111111111111111111111111",
            "BPFLoaderUpgradeab1e11111111111111111111111",
            "BPFLoader2111111111111111111111111111111111",
            "BPFLoader1111111111111111111111111111111111",
            "Config1111111111111111111111111111111111111",
            "Stake11111111111111111111111111111111111111",
            "Vote111111111111111111111111111111111111111",
            "Ed25519SigVerify111111111111111111111111111",
            "KeccakSecp256k11111111111111111111111111111",
            "SysvarFees111111111111111111111111111111111",
            "SysvarS1otHistory11111111111111111111111111",
            "SysvarEpochRewards1111111111111111111111111",
            "SysvarLastRestartS1ot1111111111111111111111",
            "JUP6LkbZbjS1jKKwapdHNy74zcZ3tLUZoi5QNyVTaV4",  # Jupiter v6 aggregator
        )
    )
)


class SolanaAdapter:
    family: ClassVar[str] = "solana"
    network_family: ClassVar[str] = "solana"
    proof_types: ClassVar[tuple[str, ...]] = (PROOF_TYPE,)
    proof_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        PROOF_TYPE: ("signature (base58, 64 bytes)",),
    }
    reads_chain: ClassVar[bool] = True
    binds_reference: ClassVar[bool] = True
    binds_payer: ClassVar[bool] = False
    requires_payer: ClassVar[bool] = False
    replay_code: ClassVar[FailureCode] = FailureCode.duplicate_payment
    paid_at_submission: ClassVar[bool] = False
    chain_time_margin_s: ClassVar[int] = 0
    paid_by: ClassVar[str | None] = None
    inflow_scan: ClassVar[InflowScan | None] = InflowScan.signatures
    inflow_scan_gap: ClassVar[str] = ""

    def __init__(self, rail: Rail):
        self.rail = rail

    # -- shapes ---------------------------------------------------------------------------------

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        if proof_type != PROOF_TYPE:
            raise ProofMalformed(
                "proof_type", f"the {self.family} family takes {PROOF_TYPE}, not {proof_type!r}"
            )
        if not isinstance(raw, str) or not raw:
            raise ProofMalformed("proof", "a transaction signature (base58) is required")
        try:
            sig = Signature.from_string(raw)
        except ValueError as e:
            raise ProofMalformed(
                "proof", f"not a base58 transaction signature of 64 bytes ({e})"
            ) from None
        # base58 is case-sensitive and canonical: the signature is kept exactly as given. A
        # string that re-encodes to itself is the canonical form of those 64 bytes.
        if str(sig) != raw:
            raise ProofMalformed("proof", "not the canonical base58 form of a 64-byte signature")
        return raw

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        if not isinstance(address, str) or not address:
            raise ProofMalformed(field, "a base58 Solana address is required")
        try:
            key = Pubkey.from_string(address)
        except ValueError as e:
            raise ProofMalformed(field, f"not a base58 Solana address of 32 bytes ({e})") from None
        if str(key) != address:
            raise ProofMalformed(field, "not the canonical base58 form of a 32-byte address")
        return address

    def proof_of(self, transfer_key: str) -> str | None:
        return None  # a transaction is named by its hash, which no transfer key holds

    def new_reference(self, seed: bytes | None = None) -> str | None:
        # A fresh public key nobody holds the secret of: it only marks the transaction. From a
        # seed, 32 bytes taken as the key: no secret key exists for it either.
        if seed is not None:
            return str(Pubkey.from_bytes(seed[:32]))
        return str(Keypair().pubkey())

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        # A wallet's associated token accounts for the rail's mint (under either token
        # program) are in every payment to it.
        atas: set[str] = set()
        for w in wallets:
            try:
                atas.update(token_account(w, self.rail.asset, p) for p in TOKEN_PROGRAMS)
            except ValueError:  # not a Solana address (another family's treasury)
                continue
            atas.add(w)
        return WELL_KNOWN_ACCOUNTS | {self.rail.asset} | atas

    # -- what the payer must do -----------------------------------------------------------------

    def prepare(self, session: SessionShape) -> PaymentRequirements:
        amount_ui = ui_amount(session.amount, self.rail.decimals)
        query = [f"amount={amount_ui}", f"spl-token={self.rail.asset}"]
        if session.reference:
            query.append(f"reference={session.reference}")
        if session.memo:
            query.append(f"memo={quote(session.memo, safe='')}")
        url = f"solana:{session.recipient}?{'&'.join(query)}"
        return PaymentRequirements(
            rail_id=self.rail.rail_id,
            network=self.rail.network,
            asset=self.rail.asset,
            recipient=session.recipient,
            amount=str(session.amount),
            reference=session.reference,
            memo=session.memo,
            url=url,
            data={
                "scheme": "solana-pay-transfer-request",
                "recipient": session.recipient,
                "spl_token": self.rail.asset,
                "amount": str(session.amount),
                "ui_amount": amount_ui,
                "decimals": self.rail.decimals,
                "reference": session.reference,
                "memo": session.memo,
                "expires_at": session.expires_at.isoformat(),
                "session_id": session.id,
            },
        )

    # -- verification -----------------------------------------------------------------------------

    def verify(self, proof: str, terms: Terms, chain: Transport) -> Verdict:
        result = chain.call("getTransaction", [proof, dict(GET_TX_OPTIONS)])
        if result is None:
            # Not found is transient (not yet propagated, or another node): never "failed".
            return Verdict.wait(
                FailureCode.tx_not_found, f"the node does not know transaction {proof} (yet)"
            )
        view = parse_transaction(result, proof)
        mint = terms.asset or self.rail.asset
        ctx = Context(
            view,
            terms,
            mint,
            self.rail.decimals,
            movements(view, mint),
            memos_of(view),
            reference_candidates(view),
        )
        observed = observe(ctx)
        found = first_finding(CHECKS, ctx)
        # SECURITY: a failed proof is terminal (the signature submitted again returns it):
        # what a block that may still be dropped says the transaction did decides it only
        # once that block is final.
        if found is not None and not found.review and found.code not in CONTENT_FAILURES:
            return self._failed(proof, chain, found, observed)
        if found is not None:
            return found.verdict(observed)
        settlement = self._status(proof, chain)
        return Verdict.ok(
            f"received {observed.amount} base units of {mint}; {settlement.finality}",
            observed=observed.model_copy(update={"finality": settlement.finality}),
            settlement=settlement,
            transfer_keys=(f"solana:{self.rail.network}:{proof}:{mint}:{terms.recipient}",),
            references=ctx.candidates,
        )

    def _failed(self, sig: str, chain: Transport, found: Finding, observed: Observed) -> Verdict:
        """A failure read from the transaction's effect (it failed on chain, or moved another
        amount, asset or recipient than asked, or ran outside the session's window) is a
        definitive `failed` only once its status meets the rail's finality: read at
        `confirmed`, its block may still be dropped and the same signed transaction run in
        another slot, where state-dependent effects (a swap routed to the treasury, a program
        branching on state) may succeed, or pay another amount."""
        # SECURITY: a wrong "failed" is final for the customer; the status answer comes in
        # the same batch as the transaction on the live path, so this costs no round trip.
        st = self._status(sig, chain)
        if is_final(st.finality, self.rail.finality):
            return found.verdict(observed)
        return Verdict.wait(
            FailureCode.not_final,
            f"{found.code.value}: {found.detail}; {st.finality}, not final yet: "
            + FAILS_ONCE_FINAL,
            observed=observed.model_copy(
                update={"finality": st.finality, FAILS_ONCE_FINAL_KEY: found.code.value}
            ),
        )

    def _status(self, sig: str, chain: Transport) -> Settlement:
        return self._statuses([sig], chain)[0]

    def _statuses(self, sigs: list[str], chain: Transport) -> list[Settlement]:
        result = chain.call("getSignatureStatuses", [list(sigs), dict(STATUS_OPTIONS)])
        values = result.get("value") if isinstance(result, dict) else None
        if not isinstance(values, list) or len(values) != len(sigs):
            raise MalformedResponse(
                f"getSignatureStatuses: expected {len(sigs)} statuses, got {result!r:.200}"
            )
        return [
            settlement_from_status(s, v, self.rail.finality)
            for s, v in zip(sigs, values, strict=True)
        ]

    def finality(
        self,
        refs: list[str],
        chain: Transport,
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[Settlement]:
        # `expected` is unused: the ref (a signature / tx hash) is the very transfer verified.
        out: list[Settlement] = []
        for batch in _batches(list(refs), STATUS_BATCH):
            for st in self._statuses(batch, chain):
                decided = self._gone_or_undecided(st, chain) if st.finality == "not_found" else st
                if decided is not None:  # left out: nothing decided, asked again later
                    out.append(decided)
        return out

    def _gone_or_undecided(self, st: Settlement, chain: Transport) -> Settlement | None:
        """A verified transfer the node has no status for (statuses are searched through
        history): gone with an abandoned fork, or the node lacks it (behind, pruned, another
        node of a pool). The transaction decides: none either, and the settlement is gone
        (`reorged`: the proof is verified again, and fails once not found past the session
        and the grace); the transaction there, and the node's answers disagree: nothing."""
        # SECURITY: a transfer "confirmed" on a fork that was dropped must not stay verified.
        if chain.call("getTransaction", [st.ref, dict(GET_TX_OPTIONS)]) is None:
            return Settlement(
                ref=st.ref,
                finality="reorged",
                reorged=True,
                is_final=False,
                detail="the node has neither a status nor the transaction: its fork was dropped",
            )
        return None

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Transport:
        from rails.transport.solana_http import (
            SolanaRpcTransport,  # the HTTP stack loads only when needed
        )

        return SolanaRpcTransport(urls, network)


if TYPE_CHECKING:  # mypy holds the family to the Adapter protocol
    _conforms: type[Adapter] = SolanaAdapter
