"""The HTTP/1.1 wire in front of the app: uvicorn's httptools (llhttp) protocol, with the
refusals its parser leaves to the server.

`railproof serve` runs this protocol class (`HTTP_PROTOCOL`). llhttp is faster than h11 and
stricter about smuggling (Transfer-Encoding with Content-Length, obs-fold, bad chunk sizes are
all refused), but it leaves four things to whoever drives it, checked here before a request
reaches the app (tests/test_http_wire_hostile.py):

- **Header time.** uvicorn times a connection out only between requests (its keep-alive
  timeout, armed once an answer went out): a connection that never sends a request, or sends
  its head a byte at a time, was held for good, and enough of them took every file the
  process may open. A head (request line and headers) must now be complete within
  `MAX_HEAD_SECONDS` of its first byte, or of the connection's start, and a body within
  `MAX_BODY_SECONDS` of its head's end; past either the answer is 408 and the connection
  closes. Time the server itself stops reading (a pipelined request waiting for the one
  before it, a body the app has yet to take) is not counted against the client.
- **Header size.** llhttp buffers a header block of any size, and an unfinished one stays in
  memory as long as the connection lasts. The request line and headers together may take
  `MAX_HEAD_BYTES` (h11's default limit, which the API had before); past it the answer is 431
  and the connection closes, whether the block finished or not.
- **HTTP version.** A request line without a version is parsed as HTTP/0.9 and would be run
  with its headers and body: only 1.0 and 1.1 are served, anything else is a 400.
- **Host.** RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host header, a 1.0 request at
  most one; otherwise 400.
- **An answer for every request that ran.** On a parse error uvicorn answers 400 and closes at
  once, even while an earlier request of the same connection (complete, so already running)
  has yet to answer: that request still runs to its end, and the caller, told only "400",
  would retry something that was stored. Here the refusal waits until the requests already
  read have been answered, then goes out and the connection closes. A parse error inside a
  request whose body is still arriving is that request's own, refused at once as before.

Refusals are JSON like every other API error (`{"error": {"code", "message"}}`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Dotted path for uvicorn's `http` option: each worker process imports it.
HTTP_PROTOCOL = "verifier.http.wire:GuardedHttpToolsProtocol"
MAX_HEAD_BYTES = 16 * 1024  # request line + headers, as h11's max_incomplete_event_size
MAX_HEAD_SECONDS = 10.0  # for a request line and headers to arrive, once they began
MAX_BODY_SECONDS = 30.0  # for a request's body to arrive, once its head has
HTTP_VERSIONS = frozenset({"1.0", "1.1"})

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}
_TOO_LARGE = f"request line and headers: at most {MAX_HEAD_BYTES} bytes"


class _Refused(Exception):
    """Raised from a parser callback: llhttp stops, `feed_data` raises HttpParserCallbackError
    (an HttpParserError), and uvicorn calls `send_400_response`, which sends this instead."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request line and headers (a connection starts so)
        self._heads = 0  # header blocks completed on this connection
        self._field_bytes = 0  # this head's request line and complete header fields
        self._raw_bytes = 0  # bytes of reads that began and ended inside this head
        self._cause: _Refused | None = None  # a callback's refusal, for send_400_response
        self._refusal: tuple[int, str] | None = None  # decided; sent once answers owed are
        self._head_timer: asyncio.TimerHandle | None = None  # the head's MAX_HEAD_SECONDS
        self._body_timer: asyncio.TimerHandle | None = None  # the body's MAX_BODY_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # the first request's head, from the connection's start

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused already: nothing more on this connection is read
        in_head, heads = self._in_head, self._heads
        super().data_received(data)
        if self._refusal is None and self._in_head:
            self._arm_head_timer()  # a new head began in this read (a running one keeps its own)
        # A read that began and ended inside one unfinished head holds nothing else: it all
        # counts, so a header block that never ends is bounded too (llhttp would keep it).
        if self._refusal is None and in_head and self._in_head and heads == self._heads:
            self._raw_bytes += len(data)
            if self._raw_bytes > MAX_HEAD_BYTES:
                self._refuse(431, _TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to any parse error; a refusal of this module's rides in `_cause`.
        cause, self._cause = self._cause, None
        if cause is not None:
            self._refuse(cause.status, cause.message)
        else:
            self._refuse(400, "the request is not valid HTTP/1.1")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._field_bytes = self._raw_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._in_head = False
        self._heads += 1
        version = self.parser.get_http_version()
        if version not in HTTP_VERSIONS:
            self._stop(400, "HTTP version: only HTTP/1.1 and HTTP/1.0 are served")
        hosts = sum(1 for name, _ in self.headers if name == b"host")  # lowered by uvicorn
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self._stop(400, "Host: an HTTP/1.1 request has exactly one Host header")
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._disarm_body_timer()
            self._body_timer = self.loop.call_later(MAX_BODY_SECONDS, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        super().on_message_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(MAX_HEAD_SECONDS, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.flow.read_paused and self._refusal is None:
            # The server stopped reading (pipelined requests wait for the one before them):
            # the rest of this head cannot have come. It gets its time once reading resumes.
            self._arm_head_timer()
            return
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                408, f"request line and headers: not complete within {MAX_HEAD_SECONDS:g} s"
            )

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if self.flow.read_paused and self._refusal is None:
            # Reading is paused until the app takes what came: not the client's time.
            self._body_timer = self.loop.call_later(MAX_BODY_SECONDS, self._body_timed_out)
            return
        self._refuse(408, f"request body: not complete within {MAX_BODY_SECONDS:g} s")

    def _count(self, n: int) -> None:
        self._field_bytes += n
        if self._field_bytes > MAX_HEAD_BYTES:
            self._stop(431, _TOO_LARGE)

    def _stop(self, status: int, message: str) -> None:
        self._cause = _Refused(status, message)
        raise self._cause

    # -- answering -------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        if self._refusal is not None:
            return
        self._refusal = (status, message)
        self.flow.pause_reading()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.more_body
            and not cycle.response_complete
            and not self._in_head
        ):
            # The error is in the body of the newest request: that request is the one refused.
            for i, (queued, _) in enumerate(self.pipeline):
                if queued is cycle:
                    del self.pipeline[i]  # never run; answers owed before it still go first
                    return
            self._send_refusal()  # it is running: it sees the connection close
            return
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            return  # sent by on_response_complete once every request read is answered
        self._send_refusal()

    def on_response_complete(self) -> None:
        if self._refusal is not None and not self.pipeline:
            self.server_state.total_requests += 1
            if not self.transport.is_closing():
                self._send_refusal()
            return
        super().on_response_complete()

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        status, message = self._refusal
        code = "invalid_request"
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()


__all__ = [
    "HTTP_PROTOCOL",
    "MAX_BODY_SECONDS",
    "MAX_HEAD_BYTES",
    "MAX_HEAD_SECONDS",
    "GuardedHttpToolsProtocol",
]
