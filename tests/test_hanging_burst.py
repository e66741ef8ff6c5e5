"""A burst of submissions against a node that never answers: every one waits on the chain at
the same time, so each is answered within its own budget, not after the budgets of those that
came before it.

The submission path's threads come from their own pool (core.inline `WAITING_THREADS`), not
from anyio's default of 40 shared with the plain routes: with the default, the 41st submission
started only when one of the first 40 ran out of budget. Proven on what waits at once, never on
wall-clock timings: the node's accepted connections, the threads inside `inline.wait`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import base58
import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import auth
from tests.live_server import LiveServer
from tests.test_bounded_latency import SERVICE, Live
from verifier.core import inline
from verifier.http.api import create_app
from verifier.storage.models import Proof, VerificationAttempt
from verifier.tools.bench import SilentNode

BURST = 60  # more than anyio's default 40 threads, and than asyncio's cpu + 4
SETTLE_S = 20  # how long the test waits for the whole burst to be waiting at once


class CountingEvent(threading.Event):
    """An event that counts the threads waiting on it right now, and the most at once."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().wait(timeout)
        finally:
            with self._lock:
                self.now -= 1


def _until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("on_loop", [False, True], ids=["pool-threads", "on-the-loop"])
def test_a_burst_waits_on_the_chain_all_at_once(on_loop):
    """PostgreSQL's way (a pool thread per request, in one of two work slots) and SQLite's (the
    request on the loop, its wait on a thread): all BURST wait at once, none queues behind
    another's wait."""
    chain_answered = CountingEvent()
    slots = None if on_loop else inline.Slots(2)

    def work() -> bool:
        return inline.wait(chain_answered, SETTLE_S * 2)

    async def burst() -> list[bool]:
        tasks = [asyncio.create_task(inline.run(work, on_loop, slots)) for _ in range(BURST)]
        await asyncio.to_thread(_until, lambda: chain_answered.now == BURST)
        waiting_at_once = chain_answered.now
        chain_answered.set()
        answers = await asyncio.gather(*tasks)
        assert waiting_at_once == BURST, f"only {waiting_at_once} of {BURST} waited at once"
        return answers

    assert asyncio.run(burst()) == [True] * BURST
    assert chain_answered.most == BURST


def test_a_burst_of_submissions_all_ask_the_hanging_node_at_once(db_url):
    """Over HTTP, BURST submissions of one tenant against a node that accepts and never
    answers, with a budget longer than the test waits: every one has asked the node before any
    is answered. The node then goes away, and each is answered pending and stored once."""
    node = SilentNode()
    # One try per call, longer than the test waits: a connection the node accepted is one
    # submission asking, never a retry.
    lv = Live(
        db_url,
        [node.url],
        submit_verify_budget_s=SETTLE_S * 2,
        rpc_timeout_s=SETTLE_S * 2,
        rpc_attempts=1,
        rpc_total_s=SETTLE_S * 2,
        rate_limit_per_second=0,
    )
    try:
        with LiveServer(create_app(lv.engine)) as server:
            http = httpx.Client(base_url=server.url, headers=auth(SERVICE), timeout=SETTLE_S * 3)
            sessions = [_open(http) for _ in range(BURST)]
            answers: list[httpx.Response] = []
            lock = threading.Lock()

            def submit(session_id: str, i: int) -> None:
                signature = base58.b58encode(bytes([i + 1]) * 64).decode()
                with httpx.Client(base_url=server.url, headers=auth(SERVICE), timeout=60) as c:
                    r = c.post("/v1/proofs", json={"session_id": session_id, "proof": signature})
                with lock:
                    answers.append(r)

            threads = [
                threading.Thread(target=submit, args=(sid, i)) for i, sid in enumerate(sessions)
            ]
            for t in threads:
                t.start()
            _until(lambda: node.accepted >= BURST)
            asked_at_once, answered_before = node.accepted, len(answers)
            node.stop()  # every held connection closes: the transport sees the node gone
            for t in threads:
                t.join(timeout=SETTLE_S * 3)
            http.close()
        assert (asked_at_once, answered_before) == (BURST, 0)
        assert sorted({(r.status_code, r.json()["status"]) for r in answers}) == [(201, "pending")]
        assert len(answers) == BURST
        with lv.engine.db.tx() as s:
            stored = s.scalar(select(func.count()).select_from(Proof))
            attempts = s.scalar(select(func.count()).select_from(VerificationAttempt))
        assert (stored, attempts) == (BURST, BURST)
    finally:
        node.stop()
        lv.close()


def _open(http: httpx.Client) -> str:
    r = http.post(
        "/v1/payment-sessions",
        json={
            "owner_id": "alice",
            "rail_id": "solana_usdc",
            "access_product_id": "pro",
            "amount": 1_000_000,
            "recipient": "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
