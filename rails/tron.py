"""Tron rail family (review-only `tron_usdt`): a TRC-20 payment proven from
`wallet/gettransactioninfobyid`.

A TRC-20 transfer emits the same `Transfer(address,address,uint256)` event as ERC-20, so the
log is decoded with eth-abi; only the address forms differ:

- a T-address is base58check of 21 bytes: 0x41 followed by the 20-byte account;
- the node writes hex addresses 41-prefixed (`contract_address`) or as bare 20 bytes
  (`log[].address`, and the low 20 bytes of the indexed topics).

`normalize_address` accepts all three and returns the T-address; comparisons are on the
20-byte account.

The amount is the sum of the token's Transfer logs from the session's payer to its recipient;
another sender's transfer to the same recipient in the transaction is not counted. A field the
node answers that is not what its API promises (an id of another transaction, a timestamp no
calendar holds) is a `MalformedResponse`, never a verdict.

Check order: shape → gettransactioninfobyid ({}: pending tx_not_found) → getblockbynum(its
block) (the block there does not hold the transaction, or is stamped at another time: pending
reorged, before any verdict) → execution result (`receipt.result` other than SUCCESS, e.g.
OUT_OF_ENERGY or REVERT, or top-level `result: FAILED` → tx_failed_onchain) → wrong_asset →
wrong_recipient → amount_mismatch → sender_mismatch → reference/memo (requires_review) → time
window (`blockTimeStamp`, ms) → settlement (getnowblock).
Every failure after the block read is read from what the transaction did in that block: it is
`failed` only once the block is final under the rail's depth (the settlement's read, as on
success), `pending not_final` naming the failure before, and the worker asks again.
`contractResult` is deliberately not read: USDT's `transfer()` returns nothing meaningful, and
a successful transfer shows a zero word there.

Finality: confirmations = `getnowblock` height − block + 1 against the rail's depth (19 by
default: a Tron block is irreversible once 2/3 + 1 of the 27 super representatives have built
on it, i.e. after 19 blocks ≈ 57 s — the node's "solidified" block). The transaction-info
answer carries no block hash: at verification the node's block at its height must hold the
transaction at its time (a node behind a reorg serves a fork's answer); in a finality sweep a
reorg shows as the transaction vanishing from the node, or in another block.
The Tron HTTP API has no chain id: which network a node serves is configuration.

Transport exceptions propagate (the engine makes them `pending rpc_unavailable`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import base58
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

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
    chain_int,
    first_finding,
)
from rails.codes import FailureCode
from rails.errors import MalformedResponse, ProofMalformed
from rails.evm import (
    TRANSFER_TOPIC,
    TokenCtx,
    check_amount,
    check_no_binding,
    check_window,
    confirmations_at,
    is_final_at_depth,
    unix_time,
    vanished_settlement,
)
from registry.catalog import Rail

PROOF_TYPE = "tron_tx_id"
TRON_PREFIX = 0x41
_TX_ID = re.compile(r"[0-9a-fA-F]{64}")
_TRANSFER_TOPIC = TRANSFER_TOPIC[2:]  # Tron writes hex without 0x


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------


def account_bytes(address: str, field: str = "recipient") -> bytes:
    """The 20-byte account of a T-address, a 41-prefixed hex address or a bare 20-byte hex
    address (each optionally 0x-prefixed when hex)."""
    if not isinstance(address, str) or not address:
        raise ProofMalformed(field, "a Tron address is a T-address or hex")
    if address.startswith("T"):
        try:
            raw = base58.b58decode_check(address)
        except ValueError as e:
            raise ProofMalformed(field, f"not a valid base58check T-address ({e})") from e
        if len(raw) != 21 or raw[0] != TRON_PREFIX:
            raise ProofMalformed(field, "a T-address decodes to 0x41 + 20 bytes")
        return raw[1:]
    text = address[2:] if address[:2] in ("0x", "0X") else address
    if not re.fullmatch(r"[0-9a-fA-F]+", text):
        raise ProofMalformed(field, "not a T-address and not hex")
    raw = bytes.fromhex(text) if len(text) % 2 == 0 else b""
    if len(raw) == 21 and raw[0] == TRON_PREFIX:
        return raw[1:]
    if len(raw) == 20:
        return raw
    raise ProofMalformed(field, "hex Tron addresses are 41 + 20 bytes or 20 bytes")


def to_base58(account: bytes) -> str:
    """The T-address of a 20-byte account."""
    if len(account) != 20:
        raise ValueError("a Tron account is 20 bytes")
    return base58.b58encode_check(bytes([TRON_PREFIX]) + account).decode()


def normalize_tron_address(address: str, field: str = "recipient") -> str:
    return to_base58(account_bytes(address, field))


def normalize_tx_id(raw: str, field: str = "proof") -> str:
    if not isinstance(raw, str) or not _TX_ID.fullmatch(raw):
        raise ProofMalformed(field, "a Tron transaction id is 64 hex digits")
    return raw.lower()


# --------------------------------------------------------------------------------------------
# Transaction info and TRC-20 logs (pure)
# --------------------------------------------------------------------------------------------

Trc20Transfer = tuple[bytes, bytes, bytes, int]  # (token, sender, recipient, value), accounts


def decode_trc20_transfer(log: Any) -> tuple[bytes, bytes, bytes, int] | None:
    """(token, sender, recipient, value) as 20-byte accounts, or None when the log is not an
    exact TRC-20 Transfer (3 topics, one 32-byte value)."""
    if not isinstance(log, dict):
        return None
    topics = log.get("topics")
    if not isinstance(topics, list) or len(topics) != 3:
        return None
    if not isinstance(topics[0], str) or topics[0].lower().removeprefix("0x") != _TRANSFER_TOPIC:
        return None
    try:
        token = account_bytes(str(log.get("address")), "log.address")
        data = bytes.fromhex(str(log.get("data", "")).removeprefix("0x"))
        if len(data) != 32:
            return None
        (sender,) = abi_decode(["address"], bytes.fromhex(topics[1].removeprefix("0x")))
        (recipient,) = abi_decode(["address"], bytes.fromhex(topics[2].removeprefix("0x")))
        (value,) = abi_decode(["uint256"], data)
    except (ProofMalformed, DecodingError, ValueError, TypeError, AttributeError):
        return None
    return token, bytes.fromhex(sender[2:]), bytes.fromhex(recipient[2:]), value


def trc20_transfers_in_info(
    info: dict[str, Any], token: str, recipient: str, payer: str | None = None
) -> tuple[int, list[str]]:
    """(amount, senders as T-addresses): the sum of Transfer values emitted by `token` to
    `recipient` in a gettransactioninfobyid answer. Pure. With a `payer` who sent the
    recipient anything, only the payer's transfers count; without one, or when the payer sent
    nothing, every sender's (what arrived, and from whom, for the checks to name)."""
    counted = counted_trc20(_transfers(info), token, recipient, payer)
    return sum(t[3] for t in counted), _senders(counted)


def counted_trc20(
    transfers: list[Trc20Transfer], token: str, recipient: str, payer: str | None
) -> list[Trc20Transfer]:
    """The transfers that make the payment: `token`'s to `recipient`, only `payer`'s when the
    payer sent any."""
    token_acct, recipient_acct = account_bytes(token, "asset"), account_bytes(recipient)
    # SECURITY: only the rail's TRC-20 contract counts; the same event from another
    # contract is not USDT.
    to_recipient = [t for t in transfers if t[0] == token_acct and t[2] == recipient_acct]
    # SECURITY: another sender's transfer in the same transaction is never the payer's money:
    # added to the payer's, it would fail an exact payment or make up a short one.
    payer_acct = account_bytes(payer, "sender") if payer is not None else None
    own = [t for t in to_recipient if t[1] == payer_acct]
    return own or to_recipient


def _senders(transfers: list[Trc20Transfer]) -> list[str]:
    return list(dict.fromkeys(to_base58(t[1]) for t in transfers))


def _others_to(
    transfers: list[Trc20Transfer], counted: list[Trc20Transfer], token: str, recipient: str
) -> dict[str, Any]:
    """Evidence of the token's transfers to the recipient that were not counted (other
    senders' in the same transaction): {"other_senders": [{sender, amount}]}, or nothing."""
    kept = {id(t) for t in counted}
    everyone = counted_trc20(transfers, token, recipient, None)
    others: dict[str, int] = {}
    for t in everyone:
        if id(t) not in kept:
            sender = to_base58(t[1])
            others[sender] = others.get(sender, 0) + t[3]
    if not others:
        return {}
    return {"other_senders": [{"sender": k, "amount": str(v)} for k, v in others.items()]}


def _transfers(info: dict[str, Any]) -> list[tuple[bytes, bytes, bytes, int]]:
    logs = info.get("log") or []
    if not isinstance(logs, list):
        raise MalformedResponse("transaction info: log is not a list")
    return [t for t in map(decode_trc20_transfer, logs) if t is not None]


def execution_failure(info: dict[str, Any]) -> str | None:
    """Why the transaction failed on chain, or None when it succeeded."""
    receipt = info.get("receipt") or {}
    if not isinstance(receipt, dict):
        raise MalformedResponse("transaction info: receipt is not an object")
    outcome = receipt.get("result")
    # A plain TRX transfer has no receipt.result; a contract call always has one. Only an
    # explicit SUCCESS (and no top-level FAILED) passes; contractResult is not a status.
    if info.get("result") == "FAILED" or (outcome is not None and outcome != "SUCCESS"):
        message = _res_message(info.get("resMessage"))
        return f"{outcome or 'FAILED'}" + (f": {message}" if message else "")
    return None


def _res_message(raw: Any) -> str:
    if not isinstance(raw, str):
        return ""
    try:
        return bytes.fromhex(raw).decode("utf-8", errors="replace")[:200]
    except ValueError:
        return raw[:200]


def block_time(info: dict[str, Any]) -> datetime:
    ms = info.get("blockTimeStamp")
    if not isinstance(ms, int) or isinstance(ms, bool):
        raise MalformedResponse(f"transaction info: blockTimeStamp {ms!r} is not an integer")
    # Integer arithmetic on milliseconds: no float touches the timestamp.
    seconds = unix_time(ms // 1000, "transaction info: blockTimeStamp")
    return seconds + timedelta(milliseconds=ms % 1000)


def _block_number(info: dict[str, Any]) -> int:
    number = info.get("blockNumber")
    return chain_int(number, "transaction info: blockNumber")


def read_block(chain: Transport, number: int) -> dict[str, Any] | None:
    """The node's (canonical) block at `number`, checked to be the block asked for; None when
    it has no block there (it answers {})."""
    block = chain.call("getblockbynum", [number])
    if not block:
        return None
    if not isinstance(block, dict):
        raise MalformedResponse("getblockbynum: expected an object")
    if _header(block, "number") != number:
        raise MalformedResponse(f"asked for block {number}, got another")
    if not isinstance(block.get("transactions", []), list):
        raise MalformedResponse("getblockbynum: transactions is not a list")
    return block


def _header(block: dict[str, Any], name: str) -> int:
    try:
        value = block["block_header"]["raw_data"][name]
    except (KeyError, TypeError) as e:
        raise MalformedResponse(f"getblockbynum: no block_header.raw_data.{name} ({e})") from e
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedResponse(f"getblockbynum: {name} {value!r} is not an integer")
    return value


def holds(block: dict[str, Any], tx_id: str, stamped_ms: Any) -> bool:
    """Whether `block` is the block a transaction info answer names: it holds the transaction
    and is stamped at the info's blockTimeStamp (a fork's block at the same height may hold
    the same signed transaction, at another time)."""
    ids = {
        str(t.get("txID", "")).lower()
        for t in block.get("transactions") or []
        if isinstance(t, dict)
    }
    return tx_id in ids and _header(block, "timestamp") == stamped_ms


def read_now_block(chain: Transport) -> int:
    block = chain.call("getnowblock", [])
    try:
        number = block["block_header"]["raw_data"]["number"]
    except (KeyError, TypeError) as e:
        raise MalformedResponse(f"getnowblock: no block_header.raw_data.number ({e})") from e
    return chain_int(number, "getnowblock: number")


# --------------------------------------------------------------------------------------------
# The checks (amount, binding and window are the EVM family's, on the same context)
# --------------------------------------------------------------------------------------------


@dataclass
class TronCtx(TokenCtx):
    transfers: list[Trc20Transfer] = field(default_factory=list)


def check_asset(c: TronCtx) -> Finding | None:
    token_acct = account_bytes(c.token, "asset")
    if any(t[0] == token_acct for t in c.transfers):
        return None
    return Finding(FailureCode.wrong_asset, f"no Transfer emitted by {c.token}")


def check_recipient(c: TronCtx) -> Finding | None:
    token_acct, recipient_acct = account_bytes(c.token, "asset"), account_bytes(c.recipient)
    # SECURITY: USDT moved to someone else does not pay this session.
    if any(t[0] == token_acct and t[2] == recipient_acct for t in c.transfers):
        return None
    got = sorted({to_base58(t[2]) for t in c.transfers if t[0] == token_acct})
    return Finding(
        FailureCode.wrong_recipient,
        f"{c.token} moved only to {', '.join(got)}, not to {c.recipient}",
        evidence={"token_recipients": got},
    )


def check_sender(c: TronCtx) -> Finding | None:
    if c.terms.sender is None:
        return None
    expected = account_bytes(c.terms.sender, "sender")
    # SECURITY: the counted transfers must be the payer's: they are only when the payer sent
    # the recipient anything (counted_trc20); someone else's transfer is not a payment.
    if c.senders and all(account_bytes(s) == expected for s in c.senders):
        return None
    return Finding(
        FailureCode.sender_mismatch,
        f"paid by {', '.join(c.senders)}, the payment names {c.terms.sender}",
    )


CHECKS: tuple[Check[TronCtx], ...] = (
    check_asset,
    check_recipient,
    check_amount,
    check_sender,
    check_no_binding,
    check_window,
)


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


class TronAdapter:
    family: ClassVar[str] = "tron"
    network_family: ClassVar[str] = "tron"
    proof_types: ClassVar[tuple[str, ...]] = (PROOF_TYPE,)
    proof_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        PROOF_TYPE: ("transaction id (64 hex)",),
    }
    reads_chain: ClassVar[bool] = True
    binds_reference: ClassVar[bool] = False
    # SECURITY: a TRC-20 transfer carries no session reference; the payer binds it.
    binds_payer: ClassVar[bool] = True
    requires_payer: ClassVar[bool] = True
    replay_code: ClassVar[FailureCode] = FailureCode.duplicate_payment
    paid_at_submission: ClassVar[bool] = False
    chain_time_margin_s: ClassVar[int] = 0
    # Review-only: report, never repair. The node's HTTP API (wallet/*) looks transactions
    # up by id and has no listing of an account's TRC-20 transfers (only indexers such as
    # TronGrid's /v1 serve that history, which railproof does not read).
    paid_by: ClassVar[str | None] = None
    inflow_scan: ClassVar[InflowScan | None] = None
    inflow_scan_gap: ClassVar[str] = (
        "the Tron node API railproof reads (wallet/*) looks transactions up by id and "
        "lists no account's TRC-20 transfers; review the treasury's transfers in a block "
        "explorer and submit each one as its session's proof"
    )

    def __init__(self, rail: Rail):
        if rail.finality.mode != "depth":
            raise ValueError(f"rail {rail.rail_id}: Tron finality is depth-based")
        self.rail = rail
        self.token = normalize_tron_address(rail.asset, "asset")

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        if proof_type != PROOF_TYPE:
            raise ProofMalformed("proof_type", f"Tron rails take {PROOF_TYPE}, not {proof_type!r}")
        return normalize_tx_id(raw)

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        return normalize_tron_address(address, field)

    def proof_of(self, transfer_key: str) -> str | None:
        return None  # a transaction is named by its hash, which no transfer key holds

    def new_reference(self, seed: bytes | None = None) -> str | None:
        return None  # a TRC-20 transfer has nowhere to carry a reference key

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        return frozenset()

    def prepare(self, session: SessionShape) -> PaymentRequirements:
        recipient = self.normalize_address(session.recipient)
        data = {
            "recipient": recipient,
            "contract": self.token,
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

    def verify(self, proof: str, terms: Terms, chain: Transport) -> Verdict:
        tx_id = normalize_tx_id(proof)
        token = normalize_tron_address(terms.asset or self.rail.asset, "asset")
        recipient = normalize_tron_address(terms.recipient)

        info = chain.call("gettransactioninfobyid", [tx_id])
        # The node answers {} for a transaction it does not know (yet).
        if not info:
            return Verdict.wait(FailureCode.tx_not_found, f"no transaction info for {tx_id} (yet)")
        info = self._checked_info(info, tx_id)
        observed = self._observed(info, tx_id, token, recipient)
        # The block first: every check after it, definitive or not, is about a transaction of
        # the canonical chain.
        forked = self._forked(chain, info, tx_id, observed)
        if forked is not None:
            return forked
        failure = execution_failure(info)
        # SECURITY: a failed contract call moved no tokens, whatever it targeted or paid in fees.
        # Failed for good only once its block is final: a fork may yet run it again, and pay.
        if failure is not None:
            said = f"transaction {tx_id} failed: {failure}"
            failed = Finding(FailureCode.tx_failed_onchain, said)
            return self._failed(chain, tx_id, info, failed, observed)

        transfers = _transfers(info)
        counted = counted_trc20(transfers, token, recipient, terms.sender)
        amount, senders = sum(t[3] for t in counted), _senders(counted)
        observed = observed.model_copy(
            update={
                "amount": str(amount),
                "sender": senders[0] if len(senders) == 1 else None,
                "senders": senders,
                **_others_to(transfers, counted, token, recipient),
            }
        )
        ctx = TronCtx(
            terms,
            token,
            recipient,
            amount,
            senders,
            "TRC-20",
            when=block_time(info),
            whole_seconds=False,  # blockTimeStamp is in milliseconds
            transfers=transfers,
        )
        # SECURITY: what the logs moved and when the block was stamped are the block's: the
        # same signed transaction run again in another block (this one dropped) may pay in
        # full, or inside the window. A failure from them is definitive only once final.
        found = first_finding(CHECKS, ctx)
        if found is not None:
            return self._failed(chain, tx_id, info, found, observed)

        settlement = self._settlement(tx_id, _block_number(info), read_now_block(chain))
        return Verdict.ok(
            f"{amount} base units of {token} to {recipient} in block {_block_number(info)}",
            observed=observed,
            settlement=settlement,
            # The transfers counted: each sender's of the token to the recipient in it.
            transfer_keys=tuple(
                f"tron:{self.rail.network}:{tx_id}:{token}:{recipient}:{sender}"
                for sender in senders
            ),
        )

    def _failed(
        self,
        chain: Transport,
        tx_id: str,
        info: dict[str, Any],
        found: Finding,
        observed: Observed,
    ) -> Verdict:
        """A failure read from what the transaction did in its block (it failed, moved another
        token, recipient, amount or sender than asked, or its block is outside the session's
        window): `failed` only once that block is solidified under the rail's depth, `pending
        not_final` before. A review (a reference or memo asked of a TRC-20 transfer) is not
        read from the block and needs no finality."""
        if found.review:
            return found.verdict(observed)
        # The block is the canonical one (`_forked` came first); getnowblock is the read a
        # success makes for its settlement.
        where = self._settlement(tx_id, _block_number(info), read_now_block(chain))
        return found.verdict_once_final(where, observed)

    @staticmethod
    def _forked(
        chain: Transport, info: dict[str, Any], tx_id: str, observed: Observed
    ) -> Verdict | None:
        """A wait when the node's block at the info's height is not the block it names."""
        number = _block_number(info)
        block = read_block(chain, number)
        if block is None:
            raise MalformedResponse(
                f"transaction info in block {number} but the node has no such block"
            )
        if holds(block, tx_id, info.get("blockTimeStamp")):
            return None
        # SECURITY: the info carries no block hash; a node behind a reorg serves a fork's.
        # Nothing in it is a fact about the chain: its block's time, its logs, its failure
        # may all differ where the transaction is re-executed (inside the window, paying in
        # full). No verdict, failed or verified, is given on it; it is asked again.
        return Verdict.wait(
            FailureCode.reorged,
            f"transaction {tx_id} is in block {number} stamped {info.get('blockTimeStamp')}, "
            f"but the chain's block {number} ({block.get('blockID')}) does not hold it "
            "at that time: asked again",
            observed=observed,
        )

    @staticmethod
    def _checked_info(info: Any, tx_id: str) -> dict[str, Any]:
        if not isinstance(info, dict):
            raise MalformedResponse("gettransactioninfobyid: expected an object")
        # SECURITY: an answer about another transaction must never count for this proof.
        if str(info.get("id", "")).lower() != tx_id:
            raise MalformedResponse(f"transaction info is for {info.get('id')!r}, not {tx_id}")
        return info

    def _observed(self, info: dict[str, Any], tx_id: str, token: str, recipient: str) -> Observed:
        raw_receipt = info.get("receipt")
        receipt: dict[str, Any] = raw_receipt if isinstance(raw_receipt, dict) else {}
        contract = info.get("contract_address")
        try:
            contract = normalize_tron_address(contract, "contract_address") if contract else None
        except ProofMalformed:
            contract = None
        return Observed(
            tx_id=tx_id,
            network=self.rail.network,
            block_number=_block_number(info),
            block_time=block_time(info),
            receipt_result=receipt.get("result"),
            fee_sun=info.get("fee"),
            contract_address=contract,
            asset=token,
            recipient=recipient,
        )

    def _settlement(self, tx_id: str, block_number: int, head: int) -> Settlement:
        final = is_final_at_depth(self.rail.finality, block_number, head)
        confirmations = confirmations_at(head, block_number)
        return Settlement(
            ref=tx_id,
            finality="finalized" if final else "confirmed",
            is_final=final,
            block_number=block_number,
            confirmations=confirmations,
            detail=("final: " if final else "not final: ")
            + f"{confirmations}/{self.rail.finality.confirmations} confirmations",
        )

    def finality(
        self,
        refs: list[str],
        chain: Transport,
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[Settlement]:
        # `expected` is unused: the ref (a signature / tx hash) is the very transfer verified.
        """One getnowblock per sweep, then per ref the transaction info."""
        if not refs:
            return []
        head = read_now_block(chain)
        out = []
        for ref in refs:
            tx_id = normalize_tx_id(ref)
            info = chain.call("gettransactioninfobyid", [tx_id])
            if not info:
                out.append(vanished_settlement(tx_id, "the transaction is gone from the node"))
                continue
            info = self._checked_info(info, tx_id)
            if execution_failure(info) is not None:
                out.append(vanished_settlement(tx_id, "the transaction now shows as failed"))
                continue
            out.append(self._settlement(tx_id, _block_number(info), head))
        return out

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Transport:
        from rails.transport.tron_http import TronHttpTransport  # loads httpx only when needed

        return TronHttpTransport(urls, network)


__all__ = [
    "TronAdapter",
    "account_bytes",
    "counted_trc20",
    "decode_trc20_transfer",
    "execution_failure",
    "normalize_tron_address",
    "normalize_tx_id",
    "to_base58",
    "trc20_transfers_in_info",
]


if TYPE_CHECKING:  # mypy holds the family to the Adapter protocol
    _conforms: type[Adapter] = TronAdapter
