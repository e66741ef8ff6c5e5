"""Where a request's service work runs: on the event loop's own thread, or on a pool thread.

A route that is a plain `def` runs on one of the API's pool threads. On SQLite that hop costs
more than the work itself: the database is a local file with one writer at a time, and the
loop's thread and the pool's threads trade the GIL around every sqlite3 call (the sqlite3
module lets it go for each step). The submission path (`POST /v1/payment-sessions`,
`POST /v1/proofs`) therefore runs its service call on the loop's thread when the engine's
database is SQLite (`Engine.work_on_loop`), in a greenlet (SQLAlchemy's `greenlet_spawn`,
what its asyncio layer runs synchronous ORM code in). On PostgreSQL it stays on a pool thread:
there a request waits on the network for each round trip and on row locks, and a pool thread
lets the process serve others meanwhile.

Work on the loop must not block on anything but SQLite's own short calls. The one long wait on
the submission path, the chain's verification within its budget (core.checking), goes through
`wait`, which hands the loop back to other requests until the verification thread is done:
except inside a transaction, where the request holds SQLite's write lock and every other
request on the loop would queue behind it, so a transaction's work never yields (and the
chain is asked outside any transaction by design). The other wait is for that write lock
itself while a pool thread or another process (the worker, a migration) holds it: the
transaction's BEGIN tries without blocking and `pause`s between tries (storage.db).

On PostgreSQL a process works on at most a few such requests at once (`Slots`); the others wait
on the loop. A request that waits on the chain gives its slot up (`wait`).

A request waiting on the chain still holds a thread (its pool thread on PostgreSQL, a waiting
thread on SQLite). Those come from a pool of their own (`WAITING_THREADS`), not from anyio's
default of 40 that the API's plain routes share (nor asyncio's of cpu + 4): with the default,
the 41st submission against a node that never answers started only once one of the first 40
ran out of budget, and a burst of 150 on PostgreSQL was answered after four budgets instead of
one (docs/bench.md, "A burst against a hanging node").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from anyio import CapacityLimiter, from_thread, to_thread
from greenlet import getcurrent  # type: ignore[import-untyped]
from sqlalchemy.util import await_, greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

T = TypeVar("T")

# Transactions open in this context (storage.db `Database._tx`): work on the loop yields it only
# when none is.
_OPEN_TX: ContextVar[int] = ContextVar("railproof_open_tx", default=0)

# Threads the submission path may hold at once in one process, most of them only waiting on the
# chain (a thread waiting costs a stack and no CPU): submissions beyond it queue for a thread.
WAITING_THREADS = 256
_THREADS = CapacityLimiter(WAITING_THREADS)


class Slots:
    """At most `size` submission-path requests worked on at once by this process's pool threads
    (PostgreSQL, Settings.pg_work_slots); the others wait on the event loop, in order, holding
    no thread. The work is mostly Python between round trips: with every request on a thread
    of its own (up to 40), they took turns at the GIL, and the request holding the audit
    chain's lock waited among them for its turn to send its commit while every other appender
    waited on it (docs/bench.md, "Many clients"). Work that waits on the chain for longer than
    `KEPT_S` gives its slot up and finishes without one (`wait`), so a slow node does not hold
    other requests."""

    KEPT_S = 0.005  # a chain answer this quick (a cassette) keeps the slot: no loop hops

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("slots: at least 1")
        self.size = size
        self.limiter = CapacityLimiter(size)

    async def run(self, fn: Callable[[], T]) -> T:
        slot = _Slot(self.limiter)
        await slot.take()
        try:
            return await to_thread.run_sync(slot.work, fn, limiter=_THREADS)
        finally:
            slot.give_back()


class _Slot:
    """One request's slot; `holding` says whether it still has it (`wait` gives it up)."""

    def __init__(self, limiter: CapacityLimiter):
        self.limiter = limiter
        self.holding = False

    async def take(self) -> None:
        await self.limiter.acquire_on_behalf_of(self)
        self.holding = True

    def give_back(self) -> None:
        if self.holding:
            self.holding = False
            self.limiter.release_on_behalf_of(self)

    def work(self, fn: Callable[[], T]) -> T:
        token = _HELD.set(self)
        try:
            return fn()
        finally:
            _HELD.reset(token)


# The slot the work running in this context holds (`Slots.run`), on its pool thread.
_HELD: ContextVar[_Slot | None] = ContextVar("railproof_work_slot", default=None)


async def run(fn: Callable[[], T], on_loop: bool, slots: Slots | None = None) -> T:
    """`fn()` on the loop's thread (`on_loop`, SQLite) or on a pool thread, in one of `slots`
    when given."""
    if on_loop:
        return await greenlet_spawn(fn)
    if slots is None:
        return await to_thread.run_sync(fn, limiter=_THREADS)
    return await slots.run(fn)


def wait(event: threading.Event, timeout: float) -> bool:
    """`event.wait(timeout)`; work running on the loop (`run`) lets the loop serve other
    requests meanwhile, and work holding a slot (`Slots`) gives it up once the wait outlasts
    `Slots.KEPT_S`; neither while a transaction is open in it."""
    if _OPEN_TX.get():
        return event.wait(timeout)
    if in_greenlet():
        return await_(to_thread.run_sync(event.wait, timeout, limiter=_THREADS))
    slot = _HELD.get()
    if slot is None or not slot.holding:
        return event.wait(timeout)
    if event.wait(min(timeout, Slots.KEPT_S)):
        return True
    # Given up for good: the rest of the work runs without a slot. Taking one back here would
    # block this pool thread, and with every pool thread blocked so, the requests holding the
    # slots would never get a thread to run on (a deadlock).
    from_thread.run_sync(slot.give_back)
    return event.wait(max(0.0, timeout - Slots.KEPT_S))


def on_loop() -> bool:
    """Whether this is work running on the loop (`run`)."""
    return in_greenlet()


def current() -> object:
    """The piece of work running on the loop now (its greenlet)."""
    return getcurrent()


def pause(seconds: float) -> None:
    """Sleeps `seconds`: work on the loop hands it to other requests meanwhile, even inside a
    transaction. For a transaction still waiting for its lock (storage.db), which holds
    nothing another request could queue behind."""
    if in_greenlet():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


@contextmanager
def transaction() -> Iterator[None]:
    """Marks a transaction open for `wait` (storage.db)."""
    token = _OPEN_TX.set(_OPEN_TX.get() + 1)
    try:
        yield
    finally:
        _OPEN_TX.reset(token)
