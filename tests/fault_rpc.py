"""A fault-injecting Solana JSON-RPC node on 127.0.0.1 that serves real recorded answers.

Built on tests/jsonrpc_server.py: the answers come from cassettes (fixtures/), matched the way
the cassette reader matches them, and the node can be told to misbehave:

    node = FaultRpcNode([DEMO_CASSETTE], block_time=now_block_time)
    node.behave(Behaviour.honest | behind | lying | forging)   # what it says
    node.always(Fault.status(503))                             # every request fails this way
    node.push(Fault.status(429), Fault.slow(2.0))               # only the next requests
    node.hold()  /  node.release()                              # answers wait until released

Behaviours (persistent, per node):

- honest:   the recorded answers (an unknown signature → null, as a node that never saw it);
- behind:   the node has not seen the transaction yet: getTransaction → null, and
            getSignatureStatuses → [null] at an older context slot;
- lagging:  the node has the transaction but not its finality: status "confirmed" with
            confirmations, at an older context slot;
- lying:    getTransaction answers a different recorded transaction, whatever is asked;
- forging:  the asked transaction, altered by `forge` (default: the recipient's received
            amount is doubled) — a well-formed answer only a second node can expose.

`block_time` rewrites the recorded blockTime when serving, so a transaction recorded in the
past falls inside a session opened now on the real clock (live mode refuses a fixed clock).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

from rails.transport.cassette import Call, read_cassette
from tests.jsonrpc_server import Fault, JsonRpcServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SOLANA_GENERATED = FIXTURES / "solana" / "generated"
DEMO_CASSETTE = SOLANA_GENERATED / "demo_payment.json"
# Longest a held answer waits for release (a backstop so a forgotten hold cannot hang a run).
HOLD_LIMIT_S = 60.0


class Behaviour(StrEnum):
    honest = "honest"
    behind = "behind"
    lagging = "lagging"
    lying = "lying"
    forging = "forging"


def now_block_time() -> int:
    """A blockTime just after "now": after a session opened a moment ago on the real clock.
    The next whole second, because blockTime has whole seconds and a session's created_at
    does not (see test_same_second_payment_is_verified_and_applicable)."""
    return int(time.time()) + 1


def double_received(result: dict[str, Any]) -> dict[str, Any]:
    """Forgery: every post token balance that grew grows twice as much."""
    meta = result["meta"]
    pre = {
        b["accountIndex"]: int(b["uiTokenAmount"]["amount"])
        for b in meta.get("preTokenBalances") or []
    }
    for b in meta.get("postTokenBalances") or []:
        before = pre.get(b["accountIndex"], 0)
        after = int(b["uiTokenAmount"]["amount"])
        if after > before:
            b["uiTokenAmount"]["amount"] = str(before + 2 * (after - before))
            b["uiTokenAmount"].pop("uiAmount", None)
            b["uiTokenAmount"].pop("uiAmountString", None)
    return result


class FaultRpcNode(JsonRpcServer):
    def __init__(
        self,
        cassettes: Iterable[Path] = (DEMO_CASSETTE,),
        *,
        block_time: Callable[[], int] | None = None,
        forge: Callable[[dict[str, Any]], dict[str, Any]] = double_received,
    ):
        super().__init__()
        self._calls: list[Call] = []
        for path in cassettes:
            self._calls.extend(Call(c) for c in read_cassette(Path(path))["calls"])
        self._decoy = next(
            (c.result for c in self._calls if c.method == "getTransaction" and c.result), None
        )
        self.block_time = block_time
        self.forge = forge
        self.behaviour = Behaviour.honest
        self._always: Fault | None = None
        self._gate = threading.Event()
        self._gate.set()
        self.held = 0  # requests currently waiting on hold()
        self.answer("getTransaction", self._get_transaction)
        self.answer("getSignatureStatuses", self._get_statuses)

    # -- what the test controls --------------------------------------------------------------

    def behave(self, behaviour: Behaviour) -> FaultRpcNode:
        self.behaviour = Behaviour(behaviour)
        return self

    def always(self, fault: Fault | None) -> FaultRpcNode:
        """Every request (once the queued faults are spent) gets `fault`; None: back to normal."""
        with self._lock:
            self._always = fault
        return self

    def hold(self) -> None:
        """Answers wait (the request hangs, the connection stays open) until release()."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    # -- serving --------------------------------------------------------------------------------

    def _next(self, request: dict[str, Any]) -> tuple[Fault | None, Any]:
        fault, answer = super()._next(request)
        if fault is None:
            with self._lock:
                fault = self._always
        if not self._gate.is_set():
            with self._lock:
                self.held += 1
            try:
                self._gate.wait(HOLD_LIMIT_S)
            finally:
                with self._lock:
                    self.held -= 1
        return fault, answer

    def _recorded(self, method: str, params: list[Any]) -> Any:
        for c in self._calls:
            if c.matches(method, params) and not c.has_error:
                return copy.deepcopy(c.result)
        return None  # a node that never saw the transaction

    def _get_transaction(self, params: list[Any]) -> Any:
        b = self.behaviour
        if b is Behaviour.behind:
            return None
        if b is Behaviour.lying:
            result = copy.deepcopy(self._decoy)
            asked = params[0] if params else None
            if result is not None and result["transaction"]["signatures"][0] == asked:
                # Asked for the decoy itself: lie with another recorded transaction.
                result = next(
                    (
                        copy.deepcopy(c.result)
                        for c in self._calls
                        if c.method == "getTransaction"
                        and c.result
                        and c.result["transaction"]["signatures"][0] != asked
                    ),
                    None,
                )
        else:
            result = self._recorded("getTransaction", params)
        if result is None:
            return None
        if b is Behaviour.forging:
            result = self.forge(result)
        if self.block_time is not None:
            result["blockTime"] = self.block_time()
        return result

    def _get_statuses(self, params: list[Any]) -> Any:
        sigs = params[0] if params and isinstance(params[0], list) else []
        values: list[Any] = []
        context_slot = 0
        for sig in sigs:
            one = self._recorded("getSignatureStatuses", [[sig], *params[1:]])
            if one is None:
                values.append(None)
                continue
            context_slot = max(context_slot, one["context"]["slot"])
            values.append(one["value"][0])
        b = self.behaviour
        if b is Behaviour.behind:
            return {"context": {"slot": max(0, context_slot - 1000)}, "value": [None] * len(sigs)}
        if b is Behaviour.lagging:
            for v in values:
                if v is not None:
                    v.update(confirmationStatus="confirmed", confirmations=12)
            context_slot = max(0, context_slot - 30)
        return {"context": {"slot": context_slot}, "value": values}
