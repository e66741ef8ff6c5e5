"""Watching an EVM treasury: the token's `Transfer(to=treasury)` logs over bounded block
ranges, pure functions over a `Transport`.

Providers cap `eth_getLogs` (a block range, or a number of results) and refuse a larger
request with an error (-32005, -32602, …): the range is split in two and each half asked
again, down to one block. A refusal of one block, or a node that cannot be reached, ends the
scan with what was read and the error: never "no transfers". Given the senders wanted (a
watch that binds by payer), a block refused whole is asked sender by sender instead: anyone
can fill one block with more transfers to a shared treasury than a node answers at once.

A log is not a payment: a smart wallet (or a batch) may pay in one transaction with several
Transfer logs, and verification counts the sum of the payer's (`rails.evm.counted_transfers`).
`payments` sums a transaction's logs per sender the same way, for matching to sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace

from rails.base import Transport
from rails.errors import (
    AnswerTooLarge,
    CassetteError,
    MalformedResponse,
    RpcErrorResponse,
    TransportError,
)
from rails.evm import TRANSFER_TOPIC, block_int, decode_transfer


def address_topic(address: str) -> str:
    return "0x" + "0" * 24 + address.lower().removeprefix("0x")


@dataclass(frozen=True)
class EvmInflow:
    tx_hash: str
    block_number: int
    log_index: int | None
    sender: str
    recipient: str
    value: int
    # The Transfer logs summed into this inflow (`payments`); empty for one log as read.
    log_indexes: tuple[int | None, ...] = ()


def payments(inflows: Iterable[EvmInflow]) -> list[EvmInflow]:
    """Each sender's transfers to a recipient in one transaction as one inflow, their values
    summed, at its first log (`log_index`) and in the order of each one's first log, the
    logs summed in `log_indexes`.

    SECURITY: the same sum verification credits a session naming the sender as payer
    (`rails.evm.counted_transfers`: the payer's own transfers of the token to the recipient,
    another sender's never added). Matched log by log, a payment split over two logs (2 + 3
    for a session of 5) binds to no session: discovery never submits it, and reconciliation
    proposes refunding a valid payment."""
    out: dict[tuple[str, str, str], EvmInflow] = {}
    for i in inflows:
        key = (i.tx_hash.lower(), i.sender.lower(), i.recipient.lower())
        seen = out.get(key)
        if seen is None:
            out[key] = replace(i, log_indexes=i.log_indexes or (i.log_index,))
        else:
            out[key] = replace(
                seen,
                value=seen.value + i.value,
                log_indexes=seen.log_indexes + (i.log_indexes or (i.log_index,)),
            )
    return list(out.values())


@dataclass
class LogScan:
    inflows: list[EvmInflow] = field(default_factory=list)  # oldest first
    calls: int = 0
    scanned_to: int | None = None  # every block up to here was read
    error: str | None = None
    # A block one sender's transfers the node refused to list even alone (its own flood, or
    # a node's trouble): the scan stopped before it.
    stuck_block: int | None = None
    # (block, sender) passed over there, when the caller said to (`pass_over`).
    passed_over: list[tuple[int, str]] = field(default_factory=list)


def head(chain: Transport) -> int:
    return block_int(chain.call("eth_blockNumber", []), "eth_blockNumber")


def transfer_logs(
    chain: Transport,
    token: str,
    recipient: str,
    from_block: int,
    to_block: int,
    *,
    max_range: int = 2000,
    senders: Collection[str] | None = None,
    pass_over: Callable[[int], bool] | None = None,
) -> LogScan:
    """Transfers of `token` to `recipient` in [from_block, to_block], in block order. With
    `senders`, only theirs are wanted: a block the node refuses whole is asked for each, and
    the scan stops before one where a sender's own are refused too (`stuck_block`), unless
    `pass_over` says to pass it over: then that sender's are passed over there."""
    scan = LogScan(scanned_to=from_block - 1)
    todo: list[tuple[int, int]] = []
    lo = from_block
    while lo <= to_block:  # bounded ranges, oldest first
        hi = min(to_block, lo + max(1, max_range) - 1)
        todo.append((lo, hi))
        lo = hi + 1
    todo.reverse()
    while todo:
        lo, hi = todo.pop()
        try:
            logs = _get_logs(scan, chain, token, lo, hi, None, recipient)
        except (RpcErrorResponse, AnswerTooLarge) as e:
            if hi > lo:  # the node refuses the range, or it holds too many: ask for each half
                mid = (lo + hi) // 2
                todo.extend([(mid + 1, hi), (lo, mid)])
                continue
            if senders is None:
                scan.error = f"eth_getLogs [{lo}, {hi}]: {e}"
                return scan
            try:
                logs = _by_sender(scan, chain, token, lo, senders, recipient, pass_over)
            except (RpcErrorResponse, AnswerTooLarge) as e2:
                # A refusal may be a node's passing trouble (a rate limit answered as an
                # error): read again next cycle, passed over only when it lasts.
                scan.error, scan.stuck_block = f"eth_getLogs [{lo}, {hi}]: {e2}", lo
                return scan
            except (TransportError, CassetteError) as e2:
                scan.error = f"eth_getLogs [{lo}, {hi}]: {e2}"
                return scan
        except (TransportError, CassetteError) as e:
            scan.error = f"eth_getLogs [{lo}, {hi}]: {e}"
            return scan
        try:
            found = _inflows(logs, token, recipient)
        except MalformedResponse as e:  # a number that is not one: the range was not read
            scan.error = f"eth_getLogs [{lo}, {hi}]: {e}"
            return scan
        scan.inflows.extend(found)
        scan.scanned_to = hi
    scan.inflows.sort(key=lambda i: (i.block_number, i.log_index or 0))
    return scan


def _get_logs(
    scan: LogScan,
    chain: Transport,
    token: str,
    lo: int,
    hi: int,
    sender: str | None,
    recipient: str,
) -> list[object]:
    scan.calls += 1
    logs = chain.call(
        "eth_getLogs",
        [
            {
                "address": token,
                "fromBlock": hex(lo),
                "toBlock": hex(hi),
                "topics": [
                    TRANSFER_TOPIC,
                    None if sender is None else address_topic(sender),
                    address_topic(recipient),
                ],
            }
        ],
    )
    if not isinstance(logs, list):
        raise MalformedResponse(f"eth_getLogs: expected a list, got {logs!r:.120}")
    return logs


def _by_sender(
    scan: LogScan,
    chain: Transport,
    token: str,
    block: int,
    senders: Collection[str],
    recipient: str,
    pass_over: Callable[[int], bool] | None,
) -> list[object]:
    """One block's transfers from each of `senders`. A sender whose own the node refuses
    too raises, unless `pass_over` says to pass the block over: then they are passed over."""
    out: list[object] = []
    for sender in sorted({s.lower() for s in senders}):
        try:
            out.extend(_get_logs(scan, chain, token, block, block, sender, recipient))
        except (RpcErrorResponse, AnswerTooLarge):
            if pass_over is None or not pass_over(block):
                raise
            scan.passed_over.append((block, sender))
    return out


def _inflows(logs: list[object], token: str, recipient: str) -> list[EvmInflow]:
    """The Transfers of `token` to `recipient` among one eth_getLogs answer."""
    out = []
    for log in logs:
        if not isinstance(log, dict):
            continue
        t = decode_transfer(log)
        if (
            t is None
            or t.token.lower() != token.lower()
            or t.recipient.lower() != recipient.lower()
        ):
            continue
        tx = log.get("transactionHash")
        bn = log.get("blockNumber")
        if not isinstance(tx, str) or not isinstance(bn, str):
            continue
        out.append(
            EvmInflow(
                tx.lower(),
                block_int(bn, "log.blockNumber"),
                t.log_index,
                t.sender,
                t.recipient,
                t.value,
            )
        )
    return out
