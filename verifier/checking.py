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
                                            nodes report it (tx_not_found), else rpc_unavailable

A single node — honest but behind, or lying — can therefore neither verify nor fail a proof.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from rails.base import Adapter, Status, Terms, Transport, Verdict, canonical_json
from rails.cassette import CountingTransport
from rails.codes import FailureCode
from rails.errors import CassetteError, TransportError
from registry.catalog import Stage

# What two nodes must both report for their answers to count as the same transfer. Finality
# is left out on purpose: one node may have seen the block finalize a moment before another.
AGREEMENT_FIELDS = ("amount", "recipient", "sender", "asset", "slot", "block_number", "block_hash")


@dataclass(frozen=True)
class Checked:
    verdict: Verdict
    rpc_calls: int
    latency_ms: int
    source: str


def run_verify(adapter: Adapter, proof: str, terms: Terms, chain: Transport) -> Checked:
    checked = _run(adapter, proof, terms, chain)
    return Checked(apply_stage(adapter, checked.verdict), checked.rpc_calls, checked.latency_ms,
                   checked.source)


def _run(adapter: Adapter, proof: str, terms: Terms, chain: Transport) -> Checked:
    """One adapter run over one transport, before stage rules."""
    meter = CountingTransport(chain)
    started = time.perf_counter()
    try:
        verdict = adapter.verify(proof, terms, meter)
    except (TransportError, CassetteError) as e:
        verdict = Verdict.wait(FailureCode.rpc_unavailable, f"{type(e).__name__}: {e}")
    latency = int((time.perf_counter() - started) * 1000)
    return Checked(verdict, meter.calls, latency, chain.source)


def apply_stage(adapter: Adapter, verdict: Verdict) -> Verdict:
    # SECURITY: review_only rails record evidence but can never end verified (so never apply).
    if adapter.rail.stage is Stage.review_only and verdict.status is Status.verified:
        return verdict.model_copy(update={
            "status": Status.requires_review,
            "code": FailureCode.review_only_rail,
            "detail": f"{verdict.detail}; rail {adapter.rail.rail_id} is review-only".lstrip("; "),
        })
    return verdict


# -- quorum ------------------------------------------------------------------------------------

def run_verify_quorum(adapter: Adapter, proof: str, terms: Terms,
                      transports: Sequence[Transport], quorum: int) -> Checked:
    """The adapter over each independent transport (concurrently, so a slow node costs its own
    retry budget once, not once per node), then `decide_quorum`, then the stage rules."""
    if quorum < 1:
        raise ValueError("quorum must be at least 1")
    transports = list(transports)
    source = transports[0].source if transports else "live"
    started = time.perf_counter()
    if len(transports) < quorum:
        # A configuration mistake must not quietly lower the bar to one node.
        verdict = Verdict.wait(FailureCode.rpc_unavailable,
                               f"RPC quorum {quorum} needs {quorum} independent RPC URLs; "
                               f"{len(transports)} configured")
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
    doc: dict[str, Any] = {"status": verdict.status.value,
                           "code": verdict.code.value if verdict.code else None}
    for name in AGREEMENT_FIELDS:
        value = obs.get(name)
        doc[name] = None if value is None else str(value)
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
        return Verdict.wait(FailureCode.rpc_unavailable,
                            f"RPC nodes disagree about this transaction: {_summary(verdicts)}")

    if conclusive:
        agreeing = next(iter(conclusive.values()))
        if len(agreeing) >= quorum:
            chosen = _least_final([verdicts[i] for i in agreeing])
            return chosen.model_copy(update={
                "detail": f"{chosen.detail}; {len(agreeing)} of {total} RPC nodes agree "
                          f"(quorum {quorum})"})
        v = verdicts[agreeing[0]]
        return Verdict.wait(FailureCode.rpc_unavailable,
                            f"only {len(agreeing)} of the {quorum} RPC nodes the quorum needs "
                            f"answered {_label(v)}: {_summary(verdicts)}")

    # Every node is pending. A shared transient code (tx_not_found) is kept only when a quorum
    # of nodes reports it, so one lagging node cannot start the not-found clock on its own.
    codes: dict[FailureCode | None, list[int]] = {}
    for i, v in enumerate(verdicts):
        codes.setdefault(v.code, []).append(i)
    for code, idx in codes.items():
        if code is not FailureCode.rpc_unavailable and len(idx) >= quorum:
            first = verdicts[idx[0]]
            return first.model_copy(update={
                "detail": f"{first.detail}; {len(idx)} of {total} RPC nodes agree (quorum {quorum})"})
    return Verdict.wait(FailureCode.rpc_unavailable,
                        f"no RPC quorum ({quorum} of {total} needed): {_summary(verdicts)}")


_FINALITY_RANK = {"not_found": 0, "processed": 1, "confirmed": 2, "finalized": 3}


def _least_final(verdicts: list[Verdict]) -> Verdict:
    """Among agreeing answers, the one whose settlement claims the least: a reorg first, then
    not-final before final, then the lowest commitment or confirmation count. Finality is
    never taken from the most optimistic node."""
    def rank(v: Verdict) -> tuple[int, int, int, int]:
        st = v.settlement
        if st is None:
            return (0, 0, 0, 0)
        return (0 if st.reorged else 1, 1 if st.is_final else 0,
                _FINALITY_RANK.get(st.finality, 0),
                st.confirmations if st.confirmations is not None else 1 << 62)
    return min(verdicts, key=rank)


def _label(v: Verdict) -> str:
    return v.status.value + (f" {v.code.value}" if v.code else "")


def _summary(verdicts: Sequence[Verdict]) -> str:
    parts = []
    for i, v in enumerate(verdicts, 1):
        obs = v.observed or {}
        what = ", ".join(f"{k}={obs[k]}" for k in ("amount", "slot", "block_number")
                         if obs.get(k) is not None)
        parts.append(f"node {i}: {_label(v)}" + (f" ({what})" if what else ""))
    return "; ".join(parts)
