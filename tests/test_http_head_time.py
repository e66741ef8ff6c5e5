"""A request's head must arrive in time (verifier.http.wire, "Header time"): uvicorn times a
connection out only between requests, so a connection that never sent a request, or sent its
head a byte at a time, was held for good; an anonymous client holding enough of them took
every file the API process may open and nobody was served. Each head now has
`MAX_HEAD_SECONDS` from its first byte (or the connection's start): then 408 and close, while
other connections are served. The limit is shortened here so that each test takes seconds."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SERVICE_TOKEN
from tests.helpers import counts
from tests.test_http_wire_hostile import (
    HEALTH,
    TIMEOUT,
    WireServer,
    assert_still_serving,
    read_answer,
)
from verifier.core.engine import Engine
from verifier.http import wire as wire_mod
from verifier.http.api import create_app

LIMIT = 1.0


@pytest.fixture
def wire(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[WireServer]:
    monkeypatch.setattr(wire_mod, "MAX_HEAD_SECONDS", LIMIT, raising=False)
    monkeypatch.setattr(wire_mod, "MAX_BODY_SECONDS", LIMIT, raising=False)
    with WireServer(create_app(engine)) as server:
        yield server


def _timed_out(s: socket.socket) -> float:
    """Seconds until the server answered 408 and closed this connection."""
    start = time.monotonic()
    with s.makefile("rb") as fp:
        answer = read_answer(fp)
        assert answer is not None and answer.status == 408, answer
        assert b"not complete within" in answer.body and answer.closes
        assert fp.read() == b""  # closed
    return time.monotonic() - start


def test_a_connection_that_never_sends_a_request_is_closed(wire: WireServer) -> None:
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as idle:
        assert_still_serving(wire)  # others are served meanwhile
        assert _timed_out(idle) < TIMEOUT


def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_the_limit(wire: WireServer) -> None:
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as s:
        start = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 200
        sent = 0
        try:
            while sent < len(head) and time.monotonic() - start < 3 * LIMIT:
                s.sendall(head[sent : sent + 1])  # each byte well inside the limit...
                sent += 1
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _timed_out(s)  # ...the head as a whole is not
        assert sent < len(head)


def test_each_head_of_a_kept_alive_connection_has_its_own_time(wire: WireServer) -> None:
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as s:
        time.sleep(LIMIT / 2)
        s.sendall(HEALTH)  # the first head, inside the limit from the connection's start
        with s.makefile("rb") as fp:
            first = read_answer(fp)
            assert first is not None and first.status == 200
            time.sleep(LIMIT * 0.8)  # the connection's first second has passed...
            s.sendall(HEALTH)  # ...and this head has a second of its own
            second = read_answer(fp)
            assert second is not None and second.status == 200
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        _timed_out(s)


def test_a_pipelined_head_the_server_stopped_reading_is_not_timed_out(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow request, then two pipelined behind it, the last one's head cut in two. The server
    # stops reading while the first runs: the rest of that head cannot arrive before, so its
    # time starts over instead of it being refused for the server's own pause.
    limit = 2.0
    monkeypatch.setattr(wire_mod, "MAX_HEAD_SECONDS", limit, raising=False)
    app = create_app(engine)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(1.5 * limit)
        return {"ok": True}

    with WireServer(app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
            s.sendall(
                b"GET /slow HTTP/1.1\r\nHost: api\r\n\r\n" + HEALTH + b"GET /healthz HTTP/1.1\r\n"
            )
            time.sleep(1.75 * limit)  # the first has answered; the third head's time is fresh
            s.sendall(b"Host: api\r\n\r\n")
            with s.makefile("rb") as fp:
                got = [read_answer(fp) for _ in range(3)]
    assert [a.status if a else None for a in got] == [200, 200, 200], got


POST_HEAD = (
    b"POST /v1/payment-sessions HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer " + SERVICE_TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n"
)


def test_a_body_that_never_finishes_is_cut_off(wire: WireServer, engine: Engine) -> None:
    # The head came at once; the body never does. The app's request waits on it, and the
    # connection was held for good: now 408 and close, and nothing stored.
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as s:
        s.sendall(POST_HEAD + b"{")
        with s.makefile("rb") as fp:
            answer = read_answer(fp)
            assert answer is not None and answer.status == 408, answer
            assert b"request body: not complete within" in answer.body
            assert fp.read() == b""
    assert_still_serving(wire)
    assert counts(engine)["payment_sessions"] == 0


def test_a_body_that_arrives_in_time_is_served_however_it_is_cut(wire: WireServer) -> None:
    body = b'{"owner_id": "alice"}'.ljust(100)
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as s:
        s.sendall(POST_HEAD)
        for i in range(0, 100, 25):  # four pieces, all inside the limit
            time.sleep(LIMIT / 8)
            s.sendall(body[i : i + 25])
        with s.makefile("rb") as fp:
            answer = read_answer(fp)
    assert answer is not None and answer.status == 422, answer  # answered, not cut off
