"""Hostile raw bytes on a real socket, against the API as `railproof serve` serves it: uvicorn
with the httptools (llhttp) parser on uvloop, on SQLite and PostgreSQL.

TestClient hands the app a ready-made ASGI scope, so the HTTP parser in front of the guards
(verifier/http/guards.py) is never exercised there. Here every malformed or ambiguous request
(control bytes in headers and targets, obs-fold, space before a colon, conflicting
Content-Length, Transfer-Encoding with Content-Length, bad chunk sizes, junk after a body,
non-ASCII header names, odd request lines) must be answered with a 4xx or a closed connection:
never a 5xx, never a trace or an internal detail in the body, never a stored row; and the
server must go on answering afterwards. A request smuggled in the body of another must not
create a payment session.

What llhttp itself leaves to the server (the size of a request's head, the HTTP version, the
Host header, an answer for every request that ran) is verifier/http/wire.py's, tested last.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pytest
import uvloop
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.conftest import SERVICE_TOKEN
from tests.helpers import FAKE_SESSION, counts
from tests.live_server import LiveServer
from verifier.core.engine import Engine
from verifier.http.api import create_app
from verifier.http.wire import MAX_HEAD_BYTES, GuardedHttpToolsProtocol

# Longer than uvicorn's 5 s keep-alive: a connection the server keeps open is seen closing
# rather than timing out; a read that times out means the server hangs.
TIMEOUT = 8.0
SESSION = dict(FAKE_SESSION)
BODY = json.dumps(SESSION).encode()
AUTH = b"Authorization: Bearer " + SERVICE_TOKEN.encode() + b"\r\n"
JSON = b"Content-Type: application/json\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n"
# What an answer must never show a caller: a trace, a source path, a driver or library name.
INTERNALS = re.compile(
    rb'Traceback|File "|\.py\b|site-packages|sqlalchemy|psycopg|sqlite|asyncio|uvloop|'
    rb"httptools|Exception|Error\("
)


def post_session(
    *,
    target: bytes = b"/v1/payment-sessions",
    version: bytes = b" HTTP/1.1",
    host: bytes = b"Host: api\r\n",
    extra: bytes = b"",
    body: bytes = BODY,
    length: bool = True,
) -> bytes:
    """A request that opens a payment session for alice when nothing in it is wrong."""
    head = b"POST " + target + version + b"\r\n" + host + AUTH + JSON + extra
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: api\r\n" + AUTH + extra + b"\r\n"


# -- the server and the wire ------------------------------------------------------------------


class WireServer(LiveServer):
    """The app behind uvicorn as `railproof serve` runs it (verifier.http.wire's protocol on
    httptools, on uvloop: LiveServer's configuration), without the parser's expected
    "Invalid HTTP request" warnings."""

    def __init__(self, app: FastAPI):
        super().__init__(app, log_level="critical")

    def settle(self) -> None:
        """Wait until no request task is running: whatever the server parsed out of the bytes
        sent so far has then finished (and stored whatever it was going to store). A task
        is created when a request's headers are parsed, before any answer on its connection."""
        deadline = time.monotonic() + 10
        while self.server.server_state.tasks:
            assert time.monotonic() < deadline, "a request still runs 10 s after its bytes"
            time.sleep(0.01)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def read_answer(fp: BinaryIO) -> Answer | None:
    """The next response on the connection, None when it was closed without one."""
    try:
        line = fp.readline()
        while line.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue
            while fp.readline() not in (b"\r\n", b""):
                pass
            line = fp.readline()
        if not line:
            return None
        status = int(line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (h := fp.readline()) not in (b"\r\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(fp.readline().split(b";")[0], 16):
                body += fp.read(size)
                fp.readline()
            fp.readline()
        else:
            body = fp.read(int(headers.get("content-length", "0")))
    except ConnectionResetError:
        return None
    except TimeoutError:
        raise AssertionError(f"no answer and no close within {TIMEOUT} s: a hang") from None
    return Answer(status, headers, body)


def exchange(port: int, raw: bytes, *, until_close: bool = False) -> list[Answer]:
    """Send `raw` on a new connection; the first answer, or with `until_close` every answer
    until the server closes. An empty list: closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while the bytes were still going out: read what it said
        with s.makefile("rb") as fp:
            answers: list[Answer] = []
            while (a := read_answer(fp)) is not None:
                answers.append(a)
                if a.closes or not until_close:
                    break
            return answers


def assert_refused(answers: list[Answer]) -> None:
    """A 4xx (or a close without an answer), with nothing internal in the body."""
    for a in answers:
        assert 400 <= a.status < 500, (a.status, a.body[:300])
        assert not INTERNALS.search(a.body), a.body[:300]


@pytest.fixture
def wire(engine: Engine) -> Iterator[WireServer]:
    with WireServer(create_app(engine)) as server:
        yield server


def assert_still_serving(wire: WireServer) -> None:
    [a] = exchange(wire.port, HEALTH)
    assert a.status == 200, a.body
    assert "server" not in a.headers  # as `railproof serve` answers: no server banner


# -- the parser under test --------------------------------------------------------------------


def test_the_server_runs_the_c_parser_on_uvloop(wire: WireServer) -> None:
    assert wire.server.config.http_protocol_class is GuardedHttpToolsProtocol
    assert issubclass(GuardedHttpToolsProtocol, HttpToolsProtocol)
    assert isinstance(wire.server.servers[0].get_loop(), uvloop.Loop)
    assert_still_serving(wire)


# -- refused: a 4xx or a close, nothing stored ------------------------------------------------

CONTROL = [b"\x00", b"\x01", b"\x1b", b"\x7f"]
SMUGGLED = b"0\r\n\r\n" + post_session()  # an empty chunked body, then a whole second request

REFUSED = [
    # Control bytes in a header value (HTAB is the only one HTTP allows there).
    *[
        pytest.param(post_session(extra=b"X-Probe: a" + c + b"b\r\n"), id=f"header-value-{c.hex()}")
        for c in [*CONTROL, b"\r"]
    ],
    pytest.param(post_session(extra=b"X-Probe: a\nX-Injected: b\r\n"), id="header-value-bare-lf"),
    # Control and non-ASCII bytes in the request target.
    *[
        pytest.param(
            post_session(target=b"/v1/payment-sessions?memo=a" + c + b"b"), id=f"target-{c.hex()}"
        )
        for c in [*CONTROL, b"\t", b"\x0c", b"\x80", b"\xff"]
    ],
    pytest.param(get(b"/v1/payment-sessions/a\x00b"), id="target-path-00"),
    # Header syntax.
    pytest.param(post_session(extra=b"X-Probe: a\r\n folded\r\n"), id="obs-fold-space"),
    pytest.param(post_session(extra=b"X-Probe: a\r\n\tfolded\r\n"), id="obs-fold-tab"),
    pytest.param(post_session(extra=b"X-Probe : a\r\n"), id="space-before-colon"),
    pytest.param(
        post_session(extra=b"X-Probe: a\r\n").replace(b"Authorization:", b"Authorization :"),
        id="space-before-colon-authorization",
    ),
    pytest.param(post_session(extra=b"X-Caf\xe9: a\r\n"), id="header-name-latin1"),
    pytest.param(post_session(extra=b"X-\xff\xfe: a\r\n"), id="header-name-high-bytes"),
    # Content-Length that is not one decimal number.
    pytest.param(post_session(extra=b"Content-Length: 5\r\n"), id="content-length-twice-differing"),
    *[
        pytest.param(post_session(length=False, extra=b"Content-Length: " + v + b"\r\n"), id=i)
        for v, i in [
            (b"%d, 5" % len(BODY), "content-length-list"),
            (b"+%d" % len(BODY), "content-length-plus"),
            (b"-1", "content-length-negative"),
            (b"0x%x" % len(BODY), "content-length-hex"),
            (b"9" * 30, "content-length-overflow"),
        ]
    ],
    # Request smuggling: framing by both Transfer-Encoding and Content-Length (either order,
    # obfuscated codings) with a whole second POST /v1/payment-sessions behind the first body.
    *[
        pytest.param(post_session(length=False, extra=h, body=SMUGGLED), id=i)
        for h, i in [
            (b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", "smuggle-te-cl"),
            (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "smuggle-cl-te"),
            (b"Transfer-Encoding: chunked, gzip\r\n", "smuggle-te-chunked-not-last"),
            (b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", "smuggle-te-xchunked"),
            (b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", "smuggle-te-space-colon"),
            (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", "smuggle-te-twice"),
        ]
    ],
    pytest.param(
        post_session(
            version=b" HTTP/1.0",
            length=False,
            extra=b"Transfer-Encoding: chunked\r\n",
            body=SMUGGLED,
        ),
        id="smuggle-http10-chunked",
    ),
    # Chunked bodies that are not.
    *[
        pytest.param(
            post_session(length=False, extra=b"Transfer-Encoding: chunked\r\n", body=b), id=i
        )
        for b, i in [
            (b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", "chunk-size-not-hex"),
            (b"-1\r\nx\r\n0\r\n\r\n", "chunk-size-negative"),
            (b"f" * 20 + b"\r\nx\r\n0\r\n\r\n", "chunk-size-overflow"),
            (b"2\r\n" + BODY + b"\r\n0\r\n\r\n", "chunk-longer-than-its-size"),
            (b"%x\x00\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n", "chunk-size-nul"),
        ]
    ],
    # A body longer than its Content-Length: the cut JSON is refused, the rest is junk.
    pytest.param(
        post_session(
            length=False, extra=b"Content-Length: 10\r\n", body=BODY + b"\x00\x01junk\r\n\r\n"
        ),
        id="body-longer-than-content-length",
    ),
    # Request lines.
    pytest.param(post_session(version=b" HTTP/1.9"), id="version-1.9"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
    pytest.param(post_session().replace(b"POST", b"post", 1), id="method-lowercase"),
    pytest.param(post_session().replace(b"POST", b"PO\x00ST", 1), id="method-nul"),
    pytest.param(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n", id="connect"),
    pytest.param(post_session().replace(b"\r\n", b"\n"), id="lf-only-line-ends"),
    pytest.param(post_session().replace(b"\r\n", b"\r", 1), id="bare-cr-line-end"),
    pytest.param(
        post_session(
            target=b"http://evil.example/v1/payment-sessions", extra=b"Connection: close\r\n"
        ).replace(AUTH, b""),
        id="absolute-form-unauthenticated",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        id="websocket-upgrade",
    ),
]


@pytest.mark.parametrize("raw", REFUSED)
def test_a_malformed_request_is_refused_and_stores_nothing(
    wire: WireServer, engine: Engine, raw: bytes
) -> None:
    before = counts(engine)
    answers = exchange(wire.port, raw, until_close=True)
    assert_refused(answers)
    assert_still_serving(wire)
    wire.settle()
    assert counts(engine) == before


def test_two_pipelined_posts_store_two_sessions(wire: WireServer, engine: Engine) -> None:
    """The control for the smuggling cases: a second request behind a first one that is
    well framed is run, and counted, so a smuggled one would be seen."""
    before = counts(engine)["payment_sessions"]
    answers = exchange(
        wire.port, post_session() + post_session(extra=b"Connection: close\r\n"), until_close=True
    )
    assert [a.status for a in answers] == [201, 201]
    wire.settle()
    assert counts(engine)["payment_sessions"] == before + 2


# -- accepted, as HTTP says they must be ------------------------------------------------------


def test_http_1_0_is_answered_once_then_closed(wire: WireServer, engine: Engine) -> None:
    """HTTP/1.0 has no keep-alive here: a request pipelined behind the first is never run."""
    before = counts(engine)["payment_sessions"]
    raw = post_session(version=b" HTTP/1.0")
    answers = exchange(wire.port, raw + raw, until_close=True)
    assert [a.status for a in answers] == [201]
    assert answers[0].closes
    wire.settle()
    assert counts(engine)["payment_sessions"] == before + 1


def test_an_absolute_form_target_is_served_here_not_proxied(wire: WireServer) -> None:
    """RFC 9112 3.2.2: a server accepts the absolute form and serves its path itself."""
    [a] = exchange(wire.port, b"GET http://evil.example/healthz HTTP/1.1\r\nHost: api\r\n\r\n")
    assert a.status == 200
    assert json.loads(a.body)["status"] == "ok"
    assert b"evil" not in a.body


# -- bodies that never arrive -----------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_then_close_stores_nothing(
    wire: WireServer, engine: Engine
) -> None:
    before = counts(engine)
    raw = post_session(length=False, extra=b"Content-Length: 1000\r\n")
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)  # the rest of the body never comes
        with s.makefile("rb") as fp:
            answer = read_answer(fp)
    assert answer is None or 400 <= answer.status < 500
    wire.settle()
    assert counts(engine) == before
    # The server is not stuck on it: the next session opens.
    [a] = exchange(wire.port, post_session())
    assert a.status == 201, a.body
    wire.settle()
    assert counts(engine)["payment_sessions"] == before["payment_sessions"] + 1


def test_bodies_left_waiting_do_not_hold_up_other_requests(
    wire: WireServer, engine: Engine
) -> None:
    before = counts(engine)["payment_sessions"]
    waiting = []
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT)
            s.sendall(post_session(length=False, extra=b"Content-Length: 1000\r\n"))
            waiting.append(s)
        [a] = exchange(wire.port, post_session())
        assert a.status == 201, a.body
    finally:
        for s in waiting:
            s.close()
    wire.settle()
    assert counts(engine)["payment_sessions"] == before + 1


# -- what llhttp leaves to the server (verifier/http/wire.py) ---------------------------------

BIG = b"a" * 8192


def assert_wire_refusal(answers: list[Answer], status: int, field: bytes) -> None:
    """Exactly one answer: `status`, the API's JSON error naming what was wrong, and a close."""
    assert [a.status for a in answers] == [status], [(a.status, a.body[:200]) for a in answers]
    [a] = answers
    error = json.loads(a.body)["error"]
    assert error["code"] == "invalid_request" and field in error["message"].encode(), error
    assert a.closes and a.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: api\r\n"
            + b"".join(b"X-Pad-%d: %s\r\n" % (i, BIG) for i in range(128))
            + b"\r\n",
            id="many-8k-headers",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Pad: " + BIG * 128 + b"\r\n\r\n",
            id="one-1m-header",
        ),
        pytest.param(
            b"GET /" + b"a" * (MAX_HEAD_BYTES + 1) + b" HTTP/1.1\r\nHost: api\r\n\r\n",
            id="long-target",
        ),
    ],
)
def test_an_oversized_header_block_is_refused(wire: WireServer, raw: bytes) -> None:
    assert_wire_refusal(exchange(wire.port, raw, until_close=True), 431, b"headers")
    assert_still_serving(wire)


def test_a_header_block_that_never_ends_is_cut_off(wire: WireServer) -> None:
    """Sent in pieces and never finished: llhttp would hold it for as long as the connection
    lasts; it is refused once the head passes the limit, without waiting for its end."""
    with socket.create_connection(("127.0.0.1", wire.port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-A: ")
        with s.makefile("rb") as fp:
            try:
                for _ in range(8):  # 64 KiB, well past the limit, in reads of 8 KiB
                    s.sendall(BIG)
                    time.sleep(0.02)  # separate reads on the server's side
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed while the rest was going out
            answer = read_answer(fp)
    assert answer is not None
    assert_wire_refusal([answer], 431, b"headers")
    assert_still_serving(wire)


def test_headers_up_to_the_limit_are_served(wire: WireServer) -> None:
    pad = b"a" * (MAX_HEAD_BYTES - 200)
    [a] = exchange(wire.port, b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Pad: " + pad + b"\r\n\r\n")
    assert a.status == 200, a.body


def test_a_large_body_in_the_same_read_as_its_headers_is_served(
    wire: WireServer, engine: Engine
) -> None:
    """Only the head counts: a body in the same read as the headers is not head bytes."""
    before = counts(engine)["payment_sessions"]
    body = json.dumps({**SESSION, "memo": None, "pad": "x"}).encode()
    raw = post_session(body=body.replace(b'"x"', b'"' + b"x" * (MAX_HEAD_BYTES * 2) + b'"'))
    [a] = exchange(wire.port, raw)
    wire.settle()
    assert a.status in (201, 413, 422), (a.status, a.body[:200])
    assert a.status != 431
    assert counts(engine)["payment_sessions"] - before == (1 if a.status == 201 else 0)


def test_a_request_line_without_a_version_is_refused(wire: WireServer, engine: Engine) -> None:
    before = counts(engine)
    answers = exchange(wire.port, post_session(version=b""), until_close=True)
    wire.settle()
    assert counts(engine) == before
    assert_wire_refusal(answers, 400, b"HTTP version")


@pytest.mark.parametrize(
    "host",
    [pytest.param(b"", id="no-host"), pytest.param(b"Host: api\r\nHost: evil\r\n", id="two-hosts")],
)
def test_a_request_without_one_host_is_refused(
    wire: WireServer, engine: Engine, host: bytes
) -> None:
    before = counts(engine)
    raw = post_session(host=host, extra=b"Connection: close\r\n")
    answers = exchange(wire.port, raw, until_close=True)
    wire.settle()
    assert counts(engine) == before
    assert_wire_refusal(answers, 400, b"Host")


def test_http_1_0_without_host_is_served(wire: WireServer) -> None:
    [a] = exchange(wire.port, b"GET /healthz HTTP/1.0\r\n\r\n", until_close=True)
    assert a.status == 200, a.body


def test_a_stored_request_is_never_answered_as_refused(wire: WireServer, engine: Engine) -> None:
    """Junk right behind a complete request: the request runs, so its answer is sent first,
    then the refusal, then the connection closes."""
    before = counts(engine)["payment_sessions"]
    answers = exchange(wire.port, post_session() + b"\x00\x01junk\r\n\r\n", until_close=True)
    wire.settle()
    assert counts(engine)["payment_sessions"] - before == 1
    assert [a.status for a in answers] == [201, 400], [(a.status, a.body[:200]) for a in answers]
    assert answers[-1].closes


def test_answers_owed_to_pipelined_requests_come_before_the_refusal(
    wire: WireServer, engine: Engine
) -> None:
    before = counts(engine)["payment_sessions"]
    raw = post_session() + post_session() + b"GET / HTTP/9.9\r\n\r\n"
    answers = exchange(wire.port, raw, until_close=True)
    wire.settle()
    assert counts(engine)["payment_sessions"] - before == 2
    assert [a.status for a in answers] == [201, 201, 400], [a.status for a in answers]


def test_a_broken_body_is_refused_at_once(wire: WireServer, engine: Engine) -> None:
    """The parse error is in the body of the request being read: nothing is owed first."""
    before = counts(engine)["payment_sessions"]
    raw = (
        b"POST /v1/payment-sessions HTTP/1.1\r\nHost: api\r\n"
        + AUTH
        + JSON
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    answers = exchange(wire.port, raw, until_close=True)
    wire.settle()
    assert counts(engine)["payment_sessions"] == before
    assert_wire_refusal(answers, 400, b"HTTP")


def test_a_broken_body_behind_a_complete_request_is_refused_after_its_answer(
    wire: WireServer, engine: Engine
) -> None:
    """Pipelined: the first request runs and is answered; the second, whose chunked body does
    not parse, never runs; the refusal comes last and nothing waits for the broken body."""
    before = counts(engine)["payment_sessions"]
    broken = (
        b"POST /v1/payment-sessions HTTP/1.1\r\nHost: api\r\n"
        + AUTH
        + JSON
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    answers = exchange(wire.port, post_session() + broken, until_close=True)
    wire.settle()
    assert counts(engine)["payment_sessions"] - before == 1
    assert [a.status for a in answers] == [201, 400], [(a.status, a.body[:200]) for a in answers]
