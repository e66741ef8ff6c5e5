"""EVM rail family (`base_usdc`, `evm_usdc`, review-only `erc20_usdt`): an ERC-20 payment
proven from the transaction's receipt.

What a proof is worth is read from the ledger's effect, never from the transaction's input:
the amount is the sum of the ERC-20 `Transfer(from, to, value)` logs that the rail's token
contract emitted from the session's payer to the session's recipient. A receipt may hold other
tokens' logs (a swap), other senders' transfers to the same recipient (a batch, an ERC-4337
bundle), and `tx.to` may be a router rather than the token; none of them counts.

Check order (one check, one code; chain calls just before the checks that need them):

    shape (proof_malformed) → eth_chainId (a node on another chain: pending rpc_unavailable)
    → eth_getTransactionReceipt (null: pending tx_not_found)
    → eth_getBlockByNumber(receipt block) (its hash is not the receipt's: pending reorged,
    before any verdict) → status 0 (tx_failed_onchain) → wrong_asset → wrong_recipient
    → amount_mismatch → sender_mismatch (only when the terms name a payer) → reference/memo
    (EVM transfers carry none: requires_review) → time window (session_not_open,
    session_expired) → settlement (eth_blockNumber, `finalized` block).

Every failure after the block read is read from what the transaction did in that block (its
status, its logs, the block's time): the same signed transaction re-mined in another block,
if this one is dropped, may succeed or pay in full. Such a failure is `failed` only once the
block is final under the rail's policy (the settlement's reads, as on success); before that
it is `pending not_final`, its detail naming the failure it will become, and the worker asks
again.

Finality is a pure policy (`is_final_at_depth`) over an observation the adapter refreshes:

    confirmations = head − block + 1;
    final  ⇔ confirmations ≥ policy.confirmations, or (policy.finalized_tag and
             block ≤ the node's `finalized` block).

Why the catalog defaults are what they are:

- Ethereum (`evm_usdc`, `erc20_usdt`): 64 confirmations ≈ two epochs of 32 slots, the depth
  at which Casper FFG normally finalizes a block (≈ 13 minutes); the `finalized` tag reports
  exactly that checkpoint, so a block at or under it is final even if the count is short.
- Base (`base_usdc`, x402): 10 confirmations of 2-second L2 blocks (≈ 20 s) makes a reorg by
  the sequencer unlikely but not impossible; `finalized` means the L2 block's batch was posted
  to L1 and that L1 block is finalized (≈ 15–20 minutes), which is the only point where the
  block cannot change. A deployment wanting that strictly drops the depth rule in the catalog.

Reorg detection: the canonical block hash at the receipt's height (eth_getBlockByNumber) no
longer equals the receipt's `blockHash`, or the receipt vanished → `Settlement(reorged=True,
finality="reorged")` in a finality sweep; the apply gate blocks on it. At verification the
same mismatch is `pending reorged`: no verdict is taken from a fork's receipt.

Transport exceptions (rails.errors.TransportError) are not caught here: the engine turns them
into `pending rpc_unavailable`. A receipt about another transaction than the one asked for, a
node that serves another chain than the rail's, or fields that are not what JSON-RPC promises
(a quantity that is not hex, a timestamp no calendar holds, a receipt's log without its
logIndex, a Transfer log of the rail's token that no ERC-20 can emit) are a
`MalformedResponse` (a lying, broken or misconfigured node), never a verdict.

Reusable pieces for other EVM-settled rails (x402): `transfers_in_receipt`, `token_transfers`,
`parse_receipt`, `settlement_for_receipt`, `is_final_at_depth`, `newest_final_block`,
`read_head`, and `EvmAdapter(rail).verify` for any Rail with a chain_id and an asset.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import (
    is_checksum_address,
    is_checksum_formatted_address,
    to_checksum_address,
)
from eth_utils.crypto import keccak

from rails.base import (
    MAX_CHAIN_INT,
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
    eip3009_key,
    first_finding,
)
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed
from registry.catalog import FinalityPolicy, Rail

PROOF_TYPE = "evm_tx_hash"
# keccak256("Transfer(address,address,uint256)"): topic0 of every ERC-20 (and ERC-721) Transfer.
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()

_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_QUANTITY = re.compile(r"0[xX][0-9a-fA-F]+")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Shapes: proofs and addresses
# --------------------------------------------------------------------------------------------


def normalize_tx_hash(raw: str, field: str = "proof") -> str:
    if not isinstance(raw, str) or not _TX_HASH.fullmatch(raw):
        raise ProofMalformed(field, "an EVM transaction hash is 0x followed by 64 hex digits")
    return raw.lower()


def normalize_evm_address(address: str, field: str = "recipient") -> str:
    """A 20-byte hex address in checksum form. An all-lower or all-upper address is accepted
    as is; a mixed-case one must carry a valid EIP-55 checksum (a typo guard)."""
    if not isinstance(address, str) or not _HEX_ADDRESS.fullmatch(address):
        raise ProofMalformed(field, "an EVM address is 0x followed by 40 hex digits")
    # eth_utils 6's is_address no longer checks EIP-55, so the checksum is checked here.
    if is_checksum_formatted_address(address) and not is_checksum_address(address):
        raise ProofMalformed(field, "mixed-case address with an invalid EIP-55 checksum")
    return to_checksum_address(address)


def same_address(a: object, b: object) -> bool:
    # A node's log may carry anything where an address belongs: only text compares.
    return isinstance(a, str) and isinstance(b, str) and a.lower() == b.lower()


# --------------------------------------------------------------------------------------------
# Receipts and Transfer logs (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenTransfer:
    """One ERC-20 Transfer log, decoded."""

    token: str  # checksum address of the emitting contract
    sender: str
    recipient: str
    value: int
    log_index: int | None


@dataclass(frozen=True)
class Receipt:
    """The fields of an eth_getTransactionReceipt result the rail relies on, typed."""

    tx_hash: str
    success: bool
    block_number: int
    block_hash: str
    tx_from: str | None
    tx_to: str | None
    logs: tuple[dict[str, Any], ...]


def hex_int(value: Any, what: str) -> int:
    """A JSON-RPC quantity ("0x1a") as an int; anything else is a malformed answer."""
    # Only hex digits: int() alone would also take "0x1_0" or trailing whitespace.
    if isinstance(value, str) and _QUANTITY.fullmatch(value):
        return int(value, 16)
    raise MalformedResponse(f"{what}: expected a hex quantity, got {value!r:.80}")


def block_int(value: Any, what: str) -> int:
    """A block number: a hex quantity the settlement columns hold (`chain_int`)."""
    return chain_int(hex_int(value, what), what)


def unix_time(seconds: int, what: str) -> datetime:
    """A node's Unix timestamp as a UTC datetime; one no calendar holds (negative, or past
    year 9999) is a malformed answer, not an OverflowError out of the adapter."""
    try:
        if seconds < 0:
            raise ValueError("negative")
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedResponse(f"{what}: {seconds} is not a time") from None


def _hex_str(value: Any, what: str) -> str:
    if isinstance(value, str) and value.startswith("0x"):
        return value.lower()
    raise MalformedResponse(f"{what}: expected hex data, got {value!r}")


def parse_receipt(raw: Any, tx_hash: str) -> Receipt:
    """Type a receipt and make sure it is about `tx_hash`."""
    if not isinstance(raw, dict):
        raise MalformedResponse(f"receipt: expected an object, got {type(raw).__name__}")
    got = raw.get("transactionHash")
    # SECURITY: a node answering with another transaction's receipt (lying, buggy or a
    # mis-keyed cache) must not make that transaction's transfer count for this proof.
    if not isinstance(got, str) or got.lower() != tx_hash.lower():
        raise MalformedResponse(f"receipt is for {got!r}, not the asked {tx_hash}")
    if "status" not in raw:
        # Pre-Byzantium receipts carry a state root instead; success cannot be read.
        raise MalformedResponse("receipt has no status field")
    status = hex_int(raw["status"], "receipt.status")
    if status not in (0, 1):  # EIP-658: a status is 1 (success) or 0, nothing else
        raise MalformedResponse(f"receipt.status: {status} is neither 0 nor 1")
    logs = raw.get("logs")
    if not isinstance(logs, list) or not all(isinstance(x, dict) for x in logs):
        raise MalformedResponse("receipt.logs: expected a list of objects")
    receipt = Receipt(
        tx_hash=tx_hash.lower(),
        success=status == 1,
        block_number=block_int(raw.get("blockNumber"), "receipt.blockNumber"),
        block_hash=_hex_str(raw.get("blockHash"), "receipt.blockHash"),
        tx_from=raw.get("from"),
        tx_to=raw.get("to"),
        logs=tuple(logs),
    )
    _check_logs(receipt)
    return receipt


def _check_logs(r: Receipt) -> None:
    """SECURITY: the logs are this receipt's, each once. One listed twice would be counted
    twice (a second payment made of the first); one naming another transaction or block is
    not this transaction's transfer; one the node marks removed is of a block that left the
    chain, so the receipt is a fork's (read again, never a verdict on what it lacks). A
    receipt is of a mined transaction, so every log has its place in the block: one without
    a logIndex could be one listed twice that no index tells apart."""
    seen: set[int] = set()
    for log in r.logs:
        if log.get("removed") is True:
            raise MalformedResponse("receipt: a log marked removed (the block left the chain)")
        tx, block, number = log.get("transactionHash"), log.get("blockHash"), log.get("blockNumber")
        if tx is not None and (not isinstance(tx, str) or tx.lower() != r.tx_hash):
            raise MalformedResponse(f"receipt: a log of another transaction ({tx!r:.80})")
        if block is not None and (not isinstance(block, str) or block.lower() != r.block_hash):
            raise MalformedResponse(f"receipt: a log of another block ({block!r:.80})")
        if number is not None and hex_int(number, "log.blockNumber") != r.block_number:
            raise MalformedResponse(f"receipt: a log of block {number!r:.40}")
        index = log.get("logIndex")
        if index is None:
            raise MalformedResponse("receipt: a log without a logIndex")
        i = hex_int(index, "log.logIndex")
        if i in seen:
            raise MalformedResponse(f"receipt: log {i} listed twice")
        seen.add(i)


def decode_transfer(log: dict[str, Any]) -> TokenTransfer | None:
    """The ERC-20 Transfer a log records, or None when the log is something else.

    Only the exact ERC-20 shape counts: topic0 = Transfer, from/to indexed (3 topics) and one
    32-byte value in data. ERC-721 Transfers (tokenId indexed, 4 topics) and logs with dirty
    address padding are not ERC-20 transfers and are skipped, never guessed at."""
    topics = log.get("topics")
    if not isinstance(topics, list) or len(topics) != 3:
        return None
    if not isinstance(topics[0], str) or topics[0].lower() != TRANSFER_TOPIC:
        return None
    # SECURITY: a log the node marks removed belongs to a block that left the canonical chain.
    if log.get("removed") is True:
        return None
    address = log.get("address")
    if not isinstance(address, str) or not _HEX_ADDRESS.fullmatch(address):
        return None
    try:
        data = bytes.fromhex(_strip0x(log.get("data")))
        if len(data) != 32:
            return None
        (sender,) = abi_decode(["address"], bytes.fromhex(_strip0x(topics[1])))
        (recipient,) = abi_decode(["address"], bytes.fromhex(_strip0x(topics[2])))
        (value,) = abi_decode(["uint256"], data)
    except (DecodingError, ValueError, TypeError):
        return None
    index = log.get("logIndex")
    return TokenTransfer(
        token=to_checksum_address(address),
        sender=to_checksum_address(sender),
        recipient=to_checksum_address(recipient),
        value=value,
        # null in a pending block's log; anything else but a quantity is a broken answer.
        log_index=None if index is None else hex_int(index, "log.logIndex"),
    )


def check_token_transfers(logs: Iterable[dict[str, Any]], token: str) -> None:
    """SECURITY: every Transfer log `token` emitted is an ERC-20 Transfer. The rail's token
    (Solidity's ABI encoder) cannot emit one with dirty address padding or a value that is not
    one word: such a log is a broken node's (a proxy or cache mangling it), like a log marked
    removed or listed twice, so it is read again, never skipped into a definitive verdict on
    what the receipt then lacks. Other contracts' logs are not this check's to judge."""
    for log in logs:
        topics = log.get("topics")
        address = log.get("address")
        if (
            isinstance(topics, list)
            and topics
            and isinstance(topics[0], str)
            and topics[0].lower() == TRANSFER_TOPIC
            and isinstance(address, str)
            and address.lower() == token.lower()
            and decode_transfer(log) is None
        ):
            raise MalformedResponse(
                f"receipt: a Transfer log of the token {token} that no ERC-20 can emit"
            )


def _strip0x(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("hex string expected")
    return value[2:] if value[:2] in ("0x", "0X") else value


def token_transfers(logs: Iterable[dict[str, Any]]) -> list[TokenTransfer]:
    """Every ERC-20 Transfer in a receipt's logs, any token."""
    return [t for t in (decode_transfer(log) for log in logs) if t is not None]


def transfers_in_receipt(
    receipt: dict[str, Any] | Receipt, token: str, recipient: str, payer: str | None = None
) -> tuple[int, list[str]]:
    """(amount, senders): the sum of Transfer values emitted by `token` to `recipient`, and
    the distinct senders of those logs in log order. Pure; addresses compared case-insensitively.
    Accepts a raw JSON-RPC receipt or a parsed `Receipt`.

    With a `payer` who sent the recipient anything, only the payer's transfers count; without
    one, or when the payer sent nothing, every sender's (what arrived, and from whom, for the
    checks to name)."""
    logs = receipt.logs if isinstance(receipt, Receipt) else receipt.get("logs") or []
    counted = counted_transfers(token_transfers(logs), token, recipient, payer)
    return sum(t.value for t in counted), _senders(counted)


def counted_transfers(
    transfers: Iterable[TokenTransfer], token: str, recipient: str, payer: str | None
) -> list[TokenTransfer]:
    """The transfers that make the payment: `token`'s to `recipient`, only `payer`'s when the
    payer sent any (see `transfers_in_receipt`)."""
    # SECURITY: only the rail's token contract mints value; a look-alike token's Transfer
    # (or any other contract emitting the same event) is not a payment.
    to_recipient = [
        t
        for t in transfers
        if same_address(t.token, token) and same_address(t.recipient, recipient)
    ]
    # SECURITY: another sender's transfer in the same transaction (a batch, an ERC-4337
    # bundle: whoever builds it can add one) is never the payer's money: added to the payer's,
    # it would fail an exact payment (amount_mismatch, for good) or make up a short one.
    own = [t for t in to_recipient if payer is not None and same_address(t.sender, payer)]
    return own or to_recipient


def _senders(transfers: Iterable[TokenTransfer]) -> list[str]:
    return list(dict.fromkeys(t.sender for t in transfers))


# --------------------------------------------------------------------------------------------
# Finality (pure policy + the observation it needs)
# --------------------------------------------------------------------------------------------


def confirmations_at(head: int, block_number: int) -> int:
    """Blocks on top of and including the transfer's block; 0 when the node is behind it."""
    # Held to what the settlement column holds (head MAX_CHAIN_INT over block 0 is one more):
    # a count that large is final under any policy either way.
    return min(MAX_CHAIN_INT, max(0, head - block_number + 1))


def is_final_at_depth(
    policy: FinalityPolicy, block_number: int, head: int, finalized_block: int | None = None
) -> bool:
    """The depth policy: deep enough, or (when the policy trusts the tag) at or below the
    node's `finalized` block."""
    if policy.mode != "depth":
        raise ValueError(f"not a depth finality policy: {policy.mode}")
    deep = (
        policy.confirmations is not None
        and confirmations_at(head, block_number) >= policy.confirmations
    )
    tagged = (
        policy.finalized_tag and finalized_block is not None and block_number <= finalized_block
    )
    return deep or tagged


@dataclass(frozen=True)
class Head:
    """One sweep's view of the chain tip: the latest block and the `finalized` block."""

    number: int
    finalized: int | None


def newest_final_block(policy: FinalityPolicy, head: Head) -> int | None:
    """The highest block `is_final_at_depth` calls final under this head (None: none is yet);
    every block below it is final too."""
    if policy.mode != "depth":
        raise ValueError(f"not a depth finality policy: {policy.mode}")
    deepest = head.number - policy.confirmations + 1 if policy.confirmations is not None else -1
    tagged = head.finalized if policy.finalized_tag and head.finalized is not None else -1
    newest = max(deepest, tagged)
    return newest if newest >= 0 else None


def read_head(chain: Transport, policy: FinalityPolicy) -> Head:
    """eth_blockNumber, plus the `finalized` block when the policy uses the tag (a node that
    does not know the tag answers null: then only depth counts)."""
    number = block_int(chain.call("eth_blockNumber", []), "eth_blockNumber")
    finalized = None
    if policy.finalized_tag:
        block = chain.call("eth_getBlockByNumber", ["finalized", False])
        if block is not None:
            finalized = block_int(
                _as_dict(block, "finalized block").get("number"), "finalized.number"
            )
    return Head(number, finalized)


def read_block(chain: Transport, number: int) -> dict[str, Any] | None:
    """The canonical block at `number` (header only), checked to be the block asked for."""
    block = chain.call("eth_getBlockByNumber", [hex(number), False])
    if block is None:
        return None
    block = _as_dict(block, "block")
    if hex_int(block.get("number"), "block.number") != number:
        raise MalformedResponse(f"asked for block {number}, got {block.get('number')!r}")
    _hex_str(block.get("hash"), "block.hash")
    return block


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedResponse(f"{what}: expected an object, got {type(value).__name__}")
    return value


def settlement_for_receipt(
    ref: str,
    block_number: int,
    block_hash: str,
    canonical_hash: str | None,
    head: Head,
    policy: FinalityPolicy,
) -> Settlement:
    """Pure: how final a transfer mined in (block_number, block_hash) is, given the canonical
    hash at that height now (None: the node has no block there yet) and the chain head."""
    confirmations = confirmations_at(head.number, block_number)
    # SECURITY: the block holding the transfer is no longer the chain's block at that height,
    # so the transfer may not exist any more; nothing may be applied from it.
    if canonical_hash is not None and canonical_hash.lower() != block_hash.lower():
        return Settlement(
            ref=ref,
            finality="reorged",
            is_final=False,
            reorged=True,
            block_number=block_number,
            block_hash=block_hash,
            confirmations=0,
            detail=f"block {block_number} is now {canonical_hash}, not {block_hash}",
        )
    if canonical_hash is None:
        return Settlement(
            ref=ref,
            finality="confirmed",
            is_final=False,
            block_number=block_number,
            block_hash=block_hash,
            confirmations=confirmations,
            detail=f"the node has no canonical block {block_number} yet",
        )
    final = is_final_at_depth(policy, block_number, head.number, head.finalized)
    return Settlement(
        ref=ref,
        finality="finalized" if final else "confirmed",
        is_final=final,
        block_number=block_number,
        block_hash=block_hash,
        confirmations=confirmations,
        detail=_finality_detail(policy, confirmations, block_number, head.finalized, final),
    )


def _finality_detail(
    policy: FinalityPolicy,
    confirmations: int,
    block_number: int,
    finalized: int | None,
    final: bool,
) -> str:
    need = f"{confirmations}/{policy.confirmations} confirmations"
    if policy.finalized_tag:
        tag = "unknown" if finalized is None else str(finalized)
        need += f"; finalized block {tag}"
    return ("final: " if final else "not final: ") + need


def vanished_settlement(ref: str, detail: str) -> Settlement:
    # SECURITY: a verified receipt that is gone (or no longer a success) means the transfer
    # left the canonical chain; it counts as reorged until a new verification says otherwise.
    return Settlement(ref=ref, finality="reorged", reorged=True, is_final=False, detail=detail)


# --------------------------------------------------------------------------------------------
# Time window (shared with the Tron rail)
# --------------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    # Session times without a zone are stored as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class TokenCtx:
    """What the token-transfer checks read, shared by the EVM and Tron families: the session's
    terms and what the receipt's Transfer logs add up to for the session's recipient."""

    terms: Terms
    token: str
    recipient: str
    amount: int
    senders: list[str]
    kind: str  # "ERC-20", "TRC-20": how a detail names the transfer
    when: datetime | None = None  # the block's time, once read
    # The block's time is whole seconds (EVM), not milliseconds (Tron): the session's opening
    # is then compared at that resolution.
    whole_seconds: bool = True


@dataclass
class EvmCtx(TokenCtx):
    transfers: list[TokenTransfer] = field(default_factory=list)


def check_window(c: TokenCtx) -> Finding | None:
    """The transfer's chain time must fall inside the session's window."""
    when, terms = c.when, c.terms
    if when is None:  # no window asked for, so the block time was not needed
        return None
    # SECURITY: a transfer older than the session cannot pay it (stops re-using an old payment
    # to the same treasury for a new session).
    # A block time in whole seconds: the second the session opened in is inside it (as the
    # apply gate and the other rails judge it; an Ethereum block's time is its slot's start,
    # and it carries transactions sent after that).
    opened = terms.not_before
    if opened is not None and c.whole_seconds:
        opened = _utc(opened).replace(microsecond=0)
    if opened is not None and when < _utc(opened):
        return Finding(
            FailureCode.session_not_open,
            f"transfer at {when.isoformat()} predates the session's window "
            f"({_utc(opened).isoformat()})",
        )
    # SECURITY: a payment after the session expired does not pay it (the price may be stale).
    if terms.not_after is not None and when > _utc(terms.not_after):
        return Finding(
            FailureCode.session_expired,
            f"transfer at {when.isoformat()} is after the session expired "
            f"({_utc(terms.not_after).isoformat()})",
        )
    return None


def check_amount(c: TokenCtx) -> Finding | None:
    terms = c.terms
    # SECURITY: exact amount (or at least it, when the session says so): stops underpayment.
    ok = c.amount >= terms.amount if terms.at_least else c.amount == terms.amount
    if ok:
        return None
    want = f"at least {terms.amount}" if terms.at_least else str(terms.amount)
    return Finding(
        FailureCode.amount_mismatch, f"received {c.amount} base units, session asks {want}"
    )


def check_no_binding(c: TokenCtx) -> Finding | None:
    """EVM and TRC-20 transfers carry no reference key or memo. A session that asks for one
    cannot be proven bound to this transfer, so it goes to a human instead of passing."""
    if c.terms.reference is not None:
        return Finding(
            FailureCode.reference_missing,
            f"{c.kind} token transfers carry no reference; the session's "
            "reference cannot be proven",
            review=True,
        )
    if c.terms.memo is not None:
        return Finding(
            FailureCode.memo_mismatch,
            f"{c.kind} token transfers carry no memo; the session's memo cannot be proven",
            review=True,
        )
    return None


def check_asset(c: EvmCtx) -> Finding | None:
    if any(same_address(t.token, c.token) for t in c.transfers):
        return None
    others = sorted({t.token for t in c.transfers})
    return Finding(
        FailureCode.wrong_asset,
        f"no Transfer emitted by {c.token}"
        + (f" (transfers of {', '.join(others)} only)" if others else ""),
        evidence={"other_tokens": others},
    )


def check_recipient(c: EvmCtx) -> Finding | None:
    # SECURITY: value moved by the right token to someone else does not pay this session.
    if any(
        same_address(t.token, c.token) and same_address(t.recipient, c.recipient)
        for t in c.transfers
    ):
        return None
    got = sorted({t.recipient for t in c.transfers if same_address(t.token, c.token)})
    return Finding(
        FailureCode.wrong_recipient,
        f"{c.token} moved only to {', '.join(got)}, not to {c.recipient}",
        evidence={"token_recipients": got},
    )


def check_sender(c: TokenCtx) -> Finding | None:
    if c.terms.sender is None:
        return None
    # SECURITY: when the terms name the payer (a session's on EVM and Tron), the counted
    # transfers must be that payer's: they are only when the payer sent the recipient
    # anything (counted_transfers); someone else's transfer to the treasury is not a payment.
    if c.senders and all(same_address(s, c.terms.sender) for s in c.senders):
        return None
    return Finding(
        FailureCode.sender_mismatch,
        f"paid by {', '.join(c.senders)}, the payment names {c.terms.sender}",
    )


# The receipt alone decides the first ones, the block's time the last (both once the block
# is known to be the canonical one).
RECEIPT_CHECKS: tuple[Check[EvmCtx], ...] = (
    check_asset,
    check_recipient,
    check_amount,
    check_sender,
    check_no_binding,
)
BLOCK_CHECKS: tuple[Check[EvmCtx], ...] = (check_window,)


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


AUTHORIZATION_USED_TOPIC = "0x" + keccak(b"AuthorizationUsed(address,bytes32)").hex()


def authorization_keys(receipt: Receipt, token: str, chain_id: int) -> list[str]:
    """eip3009_key of every AuthorizationUsed(authorizer, nonce) the token emitted in the
    receipt: the transaction settled those authorizations."""
    return [key for key, _ in _authorizations(receipt, token, chain_id)]


def authorizations_paid(receipt: Receipt, token: str, chain_id: int) -> list[dict[str, str]]:
    """Each authorization the transaction settled with what it paid: its key, the payer,
    and the recipient and amount of the token's Transfer that follows it (EIP-3009 tokens
    mark the authorization used, then transfer), as evidence of the authorization on its own
    (a transaction can settle several, or transfer more besides)."""
    token_logs = [
        lg for lg in receipt.logs if isinstance(lg, dict) and same_address(lg.get("address"), token)
    ]
    out = []
    for key, i in _authorizations(receipt, token, chain_id):
        at = next((j for j, lg in enumerate(token_logs) if lg is receipt.logs[i]), None)
        following = token_logs[at + 1] if at is not None and at + 1 < len(token_logs) else None
        transfer = decode_transfer(following) if following is not None else None
        payer = _authorizer(key)
        if transfer is not None and transfer.sender.lower() == payer:
            out.append(
                {
                    "key": key,
                    "sender": payer,
                    "recipient": to_checksum_address(transfer.recipient),
                    "amount": str(transfer.value),
                }
            )
    return out


def _authorizer(key: str) -> str:
    """The payer of an eip3009_key, lower-case."""
    return "0x" + key.split(":")[3][-40:]


def _authorizations(receipt: Receipt, token: str, chain_id: int) -> list[tuple[str, int]]:
    """(eip3009_key, index in receipt.logs) of every AuthorizationUsed the token emitted."""
    keys = []
    for index, log in enumerate(receipt.logs):
        topics = log.get("topics")
        if (
            log.get("removed") is True
            or not isinstance(topics, list)
            or len(topics) != 3
            or not isinstance(topics[0], str)
            or topics[0].lower() != AUTHORIZATION_USED_TOPIC
            or not same_address(log.get("address"), token)
        ):
            continue
        authorizer, nonce = str(topics[1]), str(topics[2])
        if len(authorizer) == 66 and len(nonce) == 66:
            keys.append((eip3009_key(chain_id, token, "0x" + authorizer[-40:], nonce), index))
    return keys


def _others_to(
    transfers: list[TokenTransfer], counted: list[TokenTransfer], token: str, recipient: str
) -> dict[str, Any]:
    """Evidence of the token's transfers to the recipient that were not counted (other
    senders' in the same transaction): {"other_senders": [{sender, amount}]}, or nothing."""
    kept = {id(t) for t in counted}
    others: dict[str, int] = {}
    for t in counted_transfers(transfers, token, recipient, None):
        if id(t) not in kept:
            others[t.sender] = others.get(t.sender, 0) + t.value
    if not others:
        return {}
    return {"other_senders": [{"sender": k, "amount": str(v)} for k, v in others.items()]}


def require_chain(chain: Transport, chain_id: int, rail: Rail) -> None:
    """The node serves the rail's chain, or its answers are unusable (`MalformedResponse`)."""
    served = hex_int(chain.call("eth_chainId", []), "eth_chainId")
    # SECURITY: the same hash format exists on every EVM chain; a receipt read from a
    # testnet or another L2 must not pay a mainnet session. Nor may its silence fail one:
    # the node's chain is configuration (an RPC URL of another network), not a fact about
    # the transaction, so it is an unusable answer (pending rpc_unavailable, counted in
    # rpc_errors_total) until the URL is fixed.
    if served != chain_id:
        raise MalformedResponse(
            f"the RPC node is on chain {served}; rail {rail.rail_id} is on "
            f"{chain_id} ({rail.network}): an RPC URL of another network?"
        )


class EvmAdapter:
    family: ClassVar[str] = "evm"
    network_family: ClassVar[str] = "evm"
    proof_types: ClassVar[tuple[str, ...]] = (PROOF_TYPE,)
    proof_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        PROOF_TYPE: ("transaction hash (0x + 64 hex)",),
    }
    reads_chain: ClassVar[bool] = True
    binds_reference: ClassVar[bool] = False
    # SECURITY: an ERC-20 transfer carries no session reference; the payer binds it.
    binds_payer: ClassVar[bool] = True
    requires_payer: ClassVar[bool] = True
    replay_code: ClassVar[FailureCode] = FailureCode.duplicate_payment
    paid_at_submission: ClassVar[bool] = False
    chain_time_margin_s: ClassVar[int] = 0
    paid_by: ClassVar[str | None] = None
    inflow_scan: ClassVar[InflowScan | None] = InflowScan.transfer_logs
    inflow_scan_gap: ClassVar[str] = ""

    def __init__(self, rail: Rail):
        if rail.chain_id is None:
            raise ValueError(f"rail {rail.rail_id}: an EVM rail needs a chain id")
        if rail.finality.mode != "depth":
            raise ValueError(f"rail {rail.rail_id}: EVM finality is depth-based")
        self.rail = rail
        self.chain_id: int = rail.chain_id
        self.token = normalize_evm_address(rail.asset, "asset")

    # -- shapes ------------------------------------------------------------------------------

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        if proof_type != PROOF_TYPE:
            raise ProofMalformed("proof_type", f"EVM rails take {PROOF_TYPE}, not {proof_type!r}")
        return normalize_tx_hash(raw)

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        return normalize_evm_address(address, field)

    def proof_of(self, transfer_key: str) -> str | None:
        return None  # a transaction is named by its hash, which no transfer key holds

    def new_reference(self, seed: bytes | None = None) -> str | None:
        return None  # an ERC-20 transfer has nowhere to carry a reference key

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        return frozenset()

    def prepare(self, session: SessionShape) -> PaymentRequirements:
        recipient = self.normalize_address(session.recipient)
        data = {
            "recipient": recipient,
            "contract": self.token,
            "chain_id": self.rail.chain_id,
            "amount": str(session.amount),
            "decimals": self.rail.decimals,
            "network": self.rail.network,
        }
        return PaymentRequirements(
            rail_id=self.rail.rail_id,
            network=self.rail.network,
            asset=self.token,
            recipient=recipient,
            amount=str(session.amount),
            data=data,
        )

    # -- verification ------------------------------------------------------------------------

    def _receipt_block(self, chain: Transport, receipt: Receipt) -> dict[str, Any]:
        block = read_block(chain, receipt.block_number)
        if block is None:
            raise MalformedResponse(
                f"receipt in block {receipt.block_number} but the node has no such block"
            )
        return block

    def _settlement(
        self, chain: Transport, tx_hash: str, receipt: Receipt, block: Mapping[str, Any]
    ) -> Settlement:
        return settlement_for_receipt(
            tx_hash,
            receipt.block_number,
            receipt.block_hash,
            block["hash"],
            read_head(chain, self.rail.finality),
            self.rail.finality,
        )

    @staticmethod
    def _forked(
        tx_hash: str, receipt: Receipt, block: Mapping[str, Any], observed: Observed
    ) -> Verdict | None:
        """A wait when the receipt's block is not the chain's block at its height."""
        canonical = str(block["hash"]).lower()
        if canonical == receipt.block_hash:
            return None
        # SECURITY: a node behind a reorg serves a fork's receipt. Nothing in it is a fact
        # about the chain: its logs may not be there, its block's time is not the canonical
        # block's, and the transaction may be re-mined elsewhere (inside the window, paying
        # in full). No verdict, failed or verified, is given on it; it is asked again.
        return Verdict.wait(
            FailureCode.reorged,
            f"transaction {tx_hash} is in block {receipt.block_number} {receipt.block_hash}, "
            f"which is no longer the chain's block at that height ({canonical}): asked again",
            observed=observed,
        )

    def _failed(
        self,
        chain: Transport,
        tx_hash: str,
        receipt: Receipt,
        block: Mapping[str, Any],
        found: Finding,
        observed: Observed,
    ) -> Verdict:
        """A failure read from what the transaction did in its block (it reverted, moved
        another token, recipient, amount or sender than asked, or its block is outside the
        session's window): `failed` only once that block is final, `pending not_final` before.
        A review (a reference or memo asked of a transfer that carries none) is not read from
        the block and needs no finality."""
        if found.review:
            return found.verdict(observed)
        # The block is the canonical one (`_forked` came first). The settlement's reads
        # (eth_blockNumber, the `finalized` block) are the ones a success makes.
        return found.verdict_once_final(self._settlement(chain, tx_hash, receipt, block), observed)

    def verify(self, proof: str, terms: Terms, chain: Transport) -> Verdict:
        tx_hash = normalize_tx_hash(proof)
        token = normalize_evm_address(terms.asset or self.rail.asset, "asset")
        recipient = normalize_evm_address(terms.recipient)

        self._check_chain_id(chain)
        raw = chain.call("eth_getTransactionReceipt", [tx_hash])
        if raw is None:
            return Verdict.wait(
                FailureCode.tx_not_found, f"no receipt for {tx_hash} on {self.rail.network} (yet)"
            )
        receipt = parse_receipt(raw, tx_hash)
        observed = self._observed(receipt, token, recipient)
        # The block first: every check after it, definitive or not, is about a receipt of the
        # canonical chain.
        block = self._receipt_block(chain, receipt)
        forked = self._forked(tx_hash, receipt, block, observed)
        if forked is not None:
            return forked
        # SECURITY: a reverted transaction moved nothing, whatever its input or logs say. It
        # is a definitive `failed` only from a final block: one not final yet may be replaced
        # by one where the transaction succeeds.
        if not receipt.success:
            said = f"transaction {tx_hash} reverted (status 0) in block {receipt.block_number}"
            reverted = Finding(FailureCode.tx_failed_onchain, said)
            return self._failed(chain, tx_hash, receipt, block, reverted, observed)

        check_token_transfers(receipt.logs, token)
        transfers = token_transfers(receipt.logs)
        counted = counted_transfers(transfers, token, recipient, terms.sender)
        amount, senders = sum(t.value for t in counted), _senders(counted)
        observed = observed.model_copy(
            update={
                "amount": str(amount),
                "sender": senders[0] if len(senders) == 1 else None,
                "senders": senders,
                **_others_to(transfers, counted, token, recipient),
            }
        )
        ctx = EvmCtx(terms, token, recipient, amount, senders, "ERC-20", transfers=transfers)
        # SECURITY: what the logs moved and when the block was stamped are the block's: the
        # same signed transaction re-mined in another block (this one dropped) may pay in
        # full, or inside the window. A failure from them is definitive only once final.
        found = first_finding(RECEIPT_CHECKS, ctx)
        if found is not None:
            return self._failed(chain, tx_hash, receipt, block, found, observed)

        ctx.when = self._block_time(block, receipt, terms)
        if ctx.when is not None:
            observed = observed.model_copy(update={"block_time": ctx.when})
        found = first_finding(BLOCK_CHECKS, ctx)
        if found is not None:
            return self._failed(chain, tx_hash, receipt, block, found, observed)

        settlement = self._settlement(chain, tx_hash, receipt, block)
        paid = authorizations_paid(receipt, token, self.chain_id)
        # SECURITY: an authorization the transaction settled to another address is another
        # merchant's payment: this proof neither holds it nor is matched on it. One whose
        # Transfer cannot be told is kept (it may be this payment, counted once). Nor is one
        # another payer authorized: only the payer's transfers were counted.
        elsewhere = {a["key"] for a in paid if not same_address(a["recipient"], recipient)}
        if terms.sender is not None:
            elsewhere |= {
                k
                for k in authorization_keys(receipt, token, self.chain_id)
                if not same_address(_authorizer(k), terms.sender)
            }
        paid = [a for a in paid if a["key"] not in elsewhere]
        if paid:
            # What each EIP-3009 authorization in it paid on its own: another rail's session
            # (x402) can be paid by one of them, not by the transaction's total.
            observed = observed.model_copy(update={"authorizations": paid})
        return Verdict.ok(
            f"{amount} base units of {token} to {recipient} in block {receipt.block_number}",
            observed=observed,
            settlement=settlement,
            # The transfers counted: each sender's of the token to the recipient in it.
            transfer_keys=(
                *(
                    f"eip155:{self.chain_id}:{tx_hash}:{token.lower()}:{recipient.lower()}"
                    f":{sender.lower()}"
                    for sender in senders
                ),
                *(
                    k
                    for k in authorization_keys(receipt, token, self.chain_id)
                    if k not in elsewhere
                ),
            ),
        )

    def _check_chain_id(self, chain: Transport) -> None:
        require_chain(chain, self.chain_id, self.rail)

    def _observed(self, receipt: Receipt, token: str, recipient: str) -> Observed:
        return Observed(
            tx_hash=receipt.tx_hash,
            chain_id=self.rail.chain_id,
            network=self.rail.network,
            status="success" if receipt.success else "reverted",
            block_number=receipt.block_number,
            block_hash=receipt.block_hash,
            tx_from=receipt.tx_from,
            tx_to=receipt.tx_to,
            asset=token,
            recipient=recipient,
        )

    @staticmethod
    def _block_time(block: dict[str, Any], receipt: Receipt, terms: Terms) -> datetime | None:
        """The block's timestamp; newer nodes also put it on each log (`blockTimestamp`)."""
        raw = block.get("timestamp")
        if raw is None:
            raw = next(
                (
                    log.get("blockTimestamp")
                    for log in receipt.logs
                    if log.get("blockTimestamp") is not None
                ),
                None,
            )
        if raw is None:
            if terms.not_before is None and terms.not_after is None:
                return None
            # Real nodes always return the timestamp; without it the window cannot be checked.
            raise MalformedResponse(f"block {receipt.block_number} has no timestamp")
        return unix_time(hex_int(raw, "block.timestamp"), "block.timestamp")

    # -- finality ----------------------------------------------------------------------------

    def finality(
        self,
        refs: list[str],
        chain: Transport,
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[Settlement]:
        # `expected` is unused: the ref (a signature / tx hash) is the very transfer verified.
        """One eth_blockNumber (+ one `finalized` read) per sweep, then per ref the receipt and
        the canonical hash at its height."""
        if not refs:
            return []
        # A node on another chain has none of these receipts: not a reorg, an unusable node.
        self._check_chain_id(chain)
        head = read_head(chain, self.rail.finality)
        settled = (self._settle_one(normalize_tx_hash(ref), head, chain) for ref in refs)
        return [st for st in settled if st is not None]  # left out: nothing decided

    def _settle_one(self, tx_hash: str, head: Head, chain: Transport) -> Settlement | None:
        raw = chain.call("eth_getTransactionReceipt", [tx_hash])
        if raw is None:
            return self._receipt_missing(tx_hash, chain)
        receipt = parse_receipt(raw, tx_hash)
        if not receipt.success:
            return vanished_settlement(tx_hash, "the transaction was re-mined and reverted")
        block = read_block(chain, receipt.block_number)
        canonical = block["hash"] if block is not None else None
        return settlement_for_receipt(
            tx_hash, receipt.block_number, receipt.block_hash, canonical, head, self.rail.finality
        )

    @staticmethod
    def _receipt_missing(tx_hash: str, chain: Transport) -> Settlement | None:
        """No receipt for a transfer verified before: it left the canonical chain, or this
        node cannot answer for it (a pool member that is behind or pruned). The transaction
        decides: mined in the block the node holds as canonical at its height, the node's
        answers disagree and nothing is decided; back in the mempool, in a block that is not
        canonical, or unknown, the settlement is gone (`reorged`: verified again at once)."""
        tx = chain.call("eth_getTransactionByHash", [tx_hash])
        if tx is None:
            return vanished_settlement(tx_hash, "the receipt and the transaction are gone")
        tx = _as_dict(tx, "transaction")
        if tx.get("blockHash") is None:
            return vanished_settlement(tx_hash, "the transaction is back in the mempool")
        mined_in = _hex_str(tx.get("blockHash"), "transaction.blockHash")
        block = read_block(chain, block_int(tx.get("blockNumber"), "transaction.blockNumber"))
        if block is not None and str(block["hash"]).lower() == mined_in.lower():
            return None
        return vanished_settlement(tx_hash, "the receipt is gone; its block is not canonical")

    # -- transport ---------------------------------------------------------------------------

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Transport:
        from rails.transport.evm_http import EvmHttpTransport  # loads web3 only when needed

        return EvmHttpTransport(urls, network)


__all__ = [
    "EvmAdapter",
    "Head",
    "Receipt",
    "TokenTransfer",
    "TRANSFER_TOPIC",
    "check_token_transfers",
    "check_window",
    "confirmations_at",
    "counted_transfers",
    "decode_transfer",
    "is_final_at_depth",
    "normalize_evm_address",
    "require_chain",
    "normalize_tx_hash",
    "parse_receipt",
    "read_block",
    "read_head",
    "settlement_for_receipt",
    "token_transfers",
    "transfers_in_receipt",
    "unix_time",
]


if TYPE_CHECKING:  # mypy holds the family to the Adapter protocol
    _conforms: type[Adapter] = EvmAdapter
