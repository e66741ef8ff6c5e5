"""Running one verification: the rail's adapter over a (metered) transport, with the engine's
rules that hold for every rail. Pure: no storage.

- transport trouble of any kind (timeouts, 429/5xx, JSON-RPC errors, a malformed or
  mismatched answer, a cassette without the call) is `pending rpc_unavailable`: transient
  trouble never becomes `failed`, and an answer we cannot trust never becomes `verified`;
- a review_only rail never ends `verified`: a passing proof becomes `requires_review`.

With an RPC quorum (RAILPROOF_RPC_QUORUM > 1), the adapter runs once over each independent
RPC URL and `decide_quorum` reads the answers together:

    ≥ quorum nodes give the same conclusive answer (verified / failed / requires_review with
    the same code, amount, recipient, sender, asset and slot or block), no node disagrees
                                          → that answer (for verified: the least final
                                            settlement among them)
    two nodes give different conclusive answers
                                          → pending rpc_unavailable ("the nodes disagree")
    fewer than quorum conclusive answers  → pending: the shared pending code when ≥ quorum
                                            nodes report it (tx_not_found), else rpc_unavailable;
                                            a failure awaiting its block's finality
                                            (`Verdict.fails_once_final`) is kept only when
                                            every node of that code names the same one

A single node — honest but behind, or lying — can therefore neither verify nor fail a proof.

Finality under the quorum (`run_finality_quorum`, the worker's refresh) follows the same rule:
a settlement becomes final only when a quorum of nodes answer for it, they agree on its block
and every one of them calls it final; it becomes reorged only when a quorum say so. Anything
else leaves the stored settlement as it is, to be asked again later.

An adapter that raises anything else over a node's answer has met a shape its checks did not
foresee (or has a bug): that run is `pending rpc_unavailable` too — never verified, never
failed, never a 500 — and the exception is logged at ERROR with its traceback, to be fixed.

A budget (`verify_within`, the submission path) bounds one verification in time: the
transports get its deadline, and a run that still has not finished shortly after it is
abandoned and answered `pending rpc_unavailable`; the worker finishes the proof.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from rails.base import (
    FAILS_ONCE_FINAL_KEY,
    Adapter,
    Settlement,
    Status,
    Terms,
    Transport,
    Verdict,
    canonical_json,
)
from rails.cassette import CountingTransport
from rails.codes import FailureCode
from rails.errors import CassetteError, RpcUnavailable, TransportError
from registry.catalog import Stage
from verifier.core import inline

# What two nodes must both report for their answers to count as the same transfer. Finality
# is left out on purpose: one node may have seen the block finalize a moment before another.
# The block time and the transfer's keys are in: the engine decides with them (the session
# window, and whether another session's reference rides in the transfer), so one node must
# not be able to change them alone.
AGREEMENT_FIELDS = (
    "amount",
    "recipient",
    "sender",
    "asset",
    "slot",
    "block_number",
    "block_hash",
    "block_time",
)

log = logging.getLogger("railproof.verify")


@dataclass(frozen=True)
class Checked:
    verdict: Verdict
    rpc_calls: int
    latency_ms: int
    source: str


def run_verify(adapter: Adapter, proof: str, terms: Terms, chain: Transport) -> Checked:
    checked = _run(adapter, proof, terms, chain)
    return Checked(
        apply_stage(adapter, checked.verdict), checked.rpc_calls, checked.latency_ms, checked.source
    )


def _run(adapter: Adapter, proof: str, terms: Terms, chain: Transport) -> Checked:
    """One adapter run over one transport, before stage rules."""
    meter = CountingTransport(chain)
    started = time.perf_counter()
    try:
        verdict = adapter.verify(proof, terms, meter)
    except (TransportError, CassetteError) as e:
        verdict = Verdict.wait(FailureCode.rpc_unavailable, f"{type(e).__name__}: {e}")
    except Exception as e:
        # SECURITY: an adapter that trips over an answer it did not foresee has decided nothing:
        # the proof stays pending (a 500 or a traceback would hide it; failed is terminal, and
        # verified would pay for it). Loud in the log, so the adapter gets fixed; the message
        # (node data) stays out of the proof's detail.
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {where.filename}:{where.lineno} in {where.name}" if where else ""
        # The proof is not logged: a signature or a payload never reaches a log (core.logs).
        log.exception(
            "rail %s: the adapter raised %s%s over the node's answer; left pending rpc_unavailable",
            adapter.rail.rail_id,
            type(e).__name__,
            at,
            extra={"rail_id": adapter.rail.rail_id, "code": FailureCode.rpc_unavailable.value},
        )
        verdict = Verdict.wait(
            FailureCode.rpc_unavailable,
            f"the node's answer could not be read ({type(e).__name__}, logged as an internal "
            "error); asked again later",
        )
    latency = int((time.perf_counter() - started) * 1000)
    return Checked(verdict, meter.calls, latency, chain.source)


def apply_stage(adapter: Adapter, verdict: Verdict) -> Verdict:
    # SECURITY: review_only rails record evidence but can never end verified (so never apply).
    if adapter.rail.stage is Stage.review_only and verdict.status is Status.verified:
        where = verdict.settlement
        if where is not None and not where.is_final:
            # A reviewer reads requires_review as "this paid": not before the rail's finality
            # (a block not final may yet be dropped, and nothing re-checks a proof in review).
            return Verdict.wait(
                FailureCode.not_final,
                f"{verdict.detail}, not final yet ({where.detail}): put to review once final",
                observed=verdict.observed,
            )
        return verdict.model_copy(
            update={
                "status": Status.requires_review,
                "code": FailureCode.review_only_rail,
                "detail": f"{verdict.detail}; rail {adapter.rail.rail_id} is review-only".lstrip(
                    "; "
                ),
            }
        )
    return verdict


# -- quorum ------------------------------------------------------------------------------------


def run_verify_quorum(
    adapter: Adapter, proof: str, terms: Terms, transports: Sequence[Transport], quorum: int
) -> Checked:
    """The adapter over each independent transport (concurrently, so a slow node costs its own
    retry budget once, not once per node), then `decide_quorum`, then the stage rules."""
    if quorum < 1:
        raise ValueError("quorum must be at least 1")
    transports = list(transports)
    source = transports[0].source if transports else "live"
    started = time.perf_counter()
    if len(transports) < quorum:
        # A configuration mistake must not quietly lower the bar to one node.
        verdict = Verdict.wait(
            FailureCode.rpc_unavailable,
            f"RPC quorum {quorum} needs {quorum} independent RPC URLs; "
            f"{len(transports)} configured",
        )
        return Checked(apply_stage(adapter, verdict), 0, 0, source)
    with ThreadPoolExecutor(max_workers=len(transports), thread_name_prefix="rpc-quorum") as pool:
        runs = list(pool.map(lambda t: _run(adapter, proof, terms, t), transports))
    verdict = decide_quorum([r.verdict for r in runs], quorum)
    latency = int((time.perf_counter() - started) * 1000)
    return Checked(apply_stage(adapter, verdict), sum(r.rpc_calls for r in runs), latency, source)


def agreement_key(verdict: Verdict) -> bytes:
    """Two conclusive answers agree when this is equal: same status and code, and the same
    transfer as far as the chain showed it."""
    obs = verdict.observed or {}
    doc: dict[str, Any] = {
        "status": verdict.status.value,
        "code": verdict.code.value if verdict.code else None,
    }
    for name in AGREEMENT_FIELDS:
        value = obs.get(name)
        doc[name] = None if value is None else str(value)
    doc["references"] = sorted(verdict.references)
    doc["transfer_keys"] = sorted(verdict.transfer_keys)
    return canonical_json(doc)


def decide_quorum(verdicts: Sequence[Verdict], quorum: int) -> Verdict:
    """The verdict of `len(verdicts)` independent nodes under a quorum (see module docstring)."""
    total = len(verdicts)
    conclusive: dict[bytes, list[int]] = {}
    for i, v in enumerate(verdicts):
        if v.status is not Status.pending:
            conclusive.setdefault(agreement_key(v), []).append(i)

    # SECURITY: two nodes telling different stories about one transaction means at least one
    # of them is wrong (lying, forked or broken); neither story may move money or fail a proof.
    if len(conclusive) > 1:
        return Verdict.wait(
            FailureCode.rpc_unavailable,
            f"RPC nodes disagree about this transaction: {_summary(verdicts)}",
        )

    if conclusive:
        agreeing = next(iter(conclusive.values()))
        if len(agreeing) >= quorum:
            chosen = _least_final([verdicts[i] for i in agreeing])
            return chosen.model_copy(
                update={
                    "detail": f"{chosen.detail}; {len(agreeing)} of {total} RPC nodes agree "
                    f"(quorum {quorum})"
                }
            )
        v = verdicts[agreeing[0]]
        return Verdict.wait(
            FailureCode.rpc_unavailable,
            f"only {len(agreeing)} of the {quorum} RPC nodes the quorum needs "
            f"answered {_label(v)}: {_summary(verdicts)}",
        )

    # Every node is pending. A shared transient code (tx_not_found) is kept only when a quorum
    # of nodes reports it, so one lagging node cannot start the not-found clock on its own.
    codes: dict[FailureCode | None, list[int]] = {}
    for i, v in enumerate(verdicts):
        codes.setdefault(v.code, []).append(i)
    for code, idx in codes.items():
        if code is not FailureCode.rpc_unavailable and len(idx) >= quorum:
            first = _agreed_pending([verdicts[i] for i in idx])
            return first.model_copy(
                update={
                    "detail": f"{first.detail}; {len(idx)} of {total} RPC nodes agree "
                    f"(quorum {quorum})"
                }
            )
    return Verdict.wait(
        FailureCode.rpc_unavailable,
        f"no RPC quorum ({quorum} of {total} needed): {_summary(verdicts)}",
    )


def _agreed_pending(verdicts: list[Verdict]) -> Verdict:
    """Among pending answers of one code, the one the quorum keeps, its observed evidence
    with it: the first, unless the nodes disagree on the failure the proof becomes once its
    block is final (`Verdict.fails_once_final`)."""
    marks = {v.fails_once_final for v in verdicts}
    if len(marks) == 1:
        return verdicts[0]
    # SECURITY: a proof waiting only to fail claims no transfer for another session. Nodes
    # that disagree on whether (or how) it failed decide nothing of the kind: it stays a
    # claim, so a transfer it may yet pay for goes to review rather than verify elsewhere.
    plain = next((v for v in verdicts if v.fails_once_final is None), None)
    if plain is not None:
        return plain
    observed = {k: v for k, v in verdicts[0].observed.items() if k != FAILS_ONCE_FINAL_KEY}
    return verdicts[0].model_copy(update={"observed": observed})


_FINALITY_RANK = {"not_found": 0, "processed": 1, "confirmed": 2, "finalized": 3}


def _least_final(verdicts: list[Verdict]) -> Verdict:
    """Among agreeing answers, the one whose settlement claims the least: a reorg first, then
    not-final before final, then the lowest commitment or confirmation count. Finality is
    never taken from the most optimistic node."""
    return min(verdicts, key=lambda v: _settlement_rank(v.settlement))


def _settlement_rank(st: Settlement | None) -> tuple[int, int, int, int]:
    if st is None:
        return (0, 0, 0, 0)
    return (
        0 if st.reorged else 1,
        1 if st.is_final else 0,
        _FINALITY_RANK.get(st.finality, 0),
        st.confirmations if st.confirmations is not None else 1 << 62,
    )


def _label(v: Verdict) -> str:
    return v.status.value + (f" {v.code.value}" if v.code else "")


def _summary(verdicts: Sequence[Verdict]) -> str:
    parts = []
    for i, v in enumerate(verdicts, 1):
        obs = v.observed or {}
        what = ", ".join(
            f"{k}={obs[k]}" for k in ("amount", "slot", "block_number") if obs.get(k) is not None
        )
        parts.append(f"node {i}: {_label(v)}" + (f" ({what})" if what else ""))
    return "; ".join(parts)


# -- finality under the quorum ------------------------------------------------------------------


def run_finality_quorum(
    adapter: Adapter,
    refs: list[str],
    transports: Sequence[Transport],
    quorum: int,
    expected: Mapping[str, tuple[str, int]] | None = None,
) -> list[Settlement]:
    """The adapter's batched finality over each independent transport (concurrently), then
    `decide_settlement` per ref. Refs without a decision are left out (the caller keeps what
    it has and asks later). RpcUnavailable when fewer nodes than the quorum answered."""
    transports = list(transports)
    if len(transports) < quorum:
        raise RpcUnavailable(
            f"RPC quorum {quorum} needs {quorum} independent RPC URLs; {len(transports)} configured"
        )

    def ask(t: Transport) -> dict[str, Settlement] | Exception:
        try:
            return {st.ref: st for st in adapter.finality(refs, t, expected=expected)}
        except (TransportError, CassetteError) as e:
            return e

    with ThreadPoolExecutor(max_workers=len(transports), thread_name_prefix="rpc-quorum") as pool:
        answers = list(pool.map(ask, transports))
    views = [a for a in answers if isinstance(a, dict)]
    if len(views) < quorum:
        errors = "; ".join(
            f"node {i}: {type(a).__name__}: {a}"
            for i, a in enumerate(answers, 1)
            if not isinstance(a, dict)
        )
        raise RpcUnavailable(
            f"finality: {len(views)} of {len(transports)} RPC nodes answered, "
            f"the quorum is {quorum} ({errors})"
        )
    decided = (decide_settlement([v.get(ref) for v in views], quorum) for ref in refs)
    return [st for st in decided if st is not None]


def decide_settlement(answers: Sequence[Settlement | None], quorum: int) -> Settlement | None:
    """One transfer's settlement from the nodes that answered (None: a node said nothing
    about it). None when the nodes do not settle it between them."""
    seen = [a for a in answers if a is not None]
    if len(seen) < quorum:
        return None
    reorged = [a for a in seen if a.reorged]
    if len(reorged) >= quorum:
        return _agreed(reorged[0], len(reorged), len(seen), quorum)
    # SECURITY: a reorg claimed by fewer than the quorum, or nodes naming different blocks,
    # decides nothing: one lying node can neither undo a settlement nor make one final.
    if reorged or len({_block_of(a) for a in seen}) > 1:
        return None
    # The same block on every node: final only if every one of them says so (least final).
    return _agreed(min(seen, key=_settlement_rank), len(seen), len(seen), quorum)


def _block_of(st: Settlement) -> tuple[Any, ...]:
    # SECURITY: the block's time too, where the rail reads it (x402): the apply gate checks the
    # session's window with it, so one node must not pick it for the others.
    return (st.slot, st.block_number, (st.block_hash or "").lower(), st.block_time)


def _agreed(st: Settlement, agreeing: int, total: int, quorum: int) -> Settlement:
    return st.model_copy(
        update={
            "detail": f"{st.detail}; {agreeing} of {total} RPC nodes "
            f"agree (quorum {quorum})".lstrip("; ")
        }
    )


# -- a time budget for one verification ---------------------------------------------------------

# How long after its deadline a budgeted run may still finish before it is abandoned. The live
# transports stop at the deadline themselves; this only catches a call that cannot be bounded.
ABANDON_GRACE_S = 0.25


class Budgeted:
    """A transport as one budgeted verification sees it: a call gets the deadline (when the
    transport honours one), none starts after it, and none at all once the run is abandoned."""

    def __init__(self, inner: Transport, deadline: float):
        self.inner = inner
        self.deadline = deadline
        self.source = inner.source
        self.calls = 0
        self.spent = False  # the deadline cut a call short or stopped one from starting
        self.abandoned = False

    def call(self, method: str, params: list[Any]) -> Any:
        if self.abandoned or time.monotonic() >= self.deadline:
            self.spent = True
            raise RpcUnavailable(f"{method}: not asked, the time budget is spent")
        self.calls += 1
        try:
            if getattr(self.inner, "honours_deadline", False):
                return self.inner.call(method, params, deadline=self.deadline)  # type: ignore[call-arg]
            return self.inner.call(method, params)
        except TransportError:
            self.spent = self.spent or time.monotonic() >= self.deadline
            raise


def verify_within(
    budget_s: float, transports: Sequence[Transport], run: Callable[[list[Transport]], Checked]
) -> Checked:
    """`run` over `transports` (wrapped in `Budgeted`), answered within `budget_s` (plus the
    abandon grace): what the chain did not decide by then is `pending rpc_unavailable`, with a
    detail saying the budget ran out. `run` goes on a thread of its own so that even a call
    that ignores the deadline cannot hold the caller."""
    started = time.monotonic()
    bounded = [Budgeted(t, started + budget_s) for t in transports]
    box: list[Checked | BaseException] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append(run(list(bounded)))
        except BaseException as e:  # a bug in the run: the caller raises it
            box.append(e)
        finally:
            done.set()

    threading.Thread(target=work, name="verify-budget", daemon=True).start()
    # Work on the API's event loop hands the loop to other requests while it waits.
    if not inline.wait(done, budget_s + ABANDON_GRACE_S):
        # Abandoned: its later chain calls are refused, and whatever it concludes goes nowhere
        # (a run only computes; the caller records, and it records this answer instead).
        for b in bounded:
            b.abandoned = True
        verdict = Verdict.wait(
            FailureCode.rpc_unavailable,
            _spent(budget_s, "the chain did not answer and the call could not be cut short"),
        )
        return Checked(
            verdict,
            sum(b.calls for b in bounded),
            int((time.monotonic() - started) * 1000),
            transports[0].source if transports else "live",
        )
    out = box[0]
    if isinstance(out, BaseException):
        raise out
    v = out.verdict
    if (
        v.status is Status.pending
        and v.code is FailureCode.rpc_unavailable
        and any(b.spent for b in bounded)
    ):
        out = replace(out, verdict=v.model_copy(update={"detail": _spent(budget_s, v.detail)}))
    return out


def _spent(budget_s: float, detail: str) -> str:
    return (
        f"verification budget of {budget_s:g}s ran out before the chain decided; the worker "
        f"finishes this proof ({detail})"
    )
