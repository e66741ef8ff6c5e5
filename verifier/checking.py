"""Running one verification: the rail's adapter over a (metered) transport, with the engine's
rules that hold for every rail. Pure: no storage.

- transport trouble of any kind (timeouts, 429/5xx, JSON-RPC errors, a malformed or
  mismatched answer, a cassette without the call) is `pending rpc_unavailable`: transient
  trouble never becomes `failed`, and an answer we cannot trust never becomes `verified`;
- a review_only rail never ends `verified`: a passing proof becomes `requires_review`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rails.base import Adapter, Status, Terms, Transport, Verdict
from rails.cassette import CountingTransport
from rails.codes import FailureCode
from rails.errors import CassetteError, TransportError
from registry.catalog import Stage


@dataclass(frozen=True)
class Checked:
    verdict: Verdict
    rpc_calls: int
    latency_ms: int
    source: str


def run_verify(adapter: Adapter, proof: str, terms: Terms, chain: Transport) -> Checked:
    meter = CountingTransport(chain)
    started = time.perf_counter()
    try:
        verdict = adapter.verify(proof, terms, meter)
    except (TransportError, CassetteError) as e:
        verdict = Verdict.wait(FailureCode.rpc_unavailable, f"{type(e).__name__}: {e}")
    verdict = apply_stage(adapter, verdict)
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
