"""An answer's head (status line and headers) read within the request's time, as a whole.

The HTTP clients bound each socket read, never the head: http.client (under urllib3 and
requests) and h11 (under httpx) read it line by line, so a node that sends `HTTP/1.1 200 `
and then a byte every few hundred milliseconds never lets a read time out, and holds the call
(and the worker thread around it) as long as it likes. urllib3's `Timeout(total=)` alone
does not help: it sets the read timeout once, and each read still gets all of it (its docs say
so). The body is bounded by rails.transport.bodies; the head here:

- urllib3 (Solana; requests, under web3, for EVM): `POOL_CLASSES`, connection pools whose
  connections read the head within their read timeout as a whole. With urllib3's
  `Timeout(total=)` that is what is left of the request's timeout once connected, and the
  request's timeout is already clipped to the call's end. http.client blocks in its own reads,
  so the one way to end one at a set instant is to shut the socket down from another thread:
  one watchdog thread does it for every connection (a timer thread per request would cost a
  thread start on the hot path).
- httpcore (Tron, under httpx): `clipped_client`, whose network streams clip each read's
  timeout to the time left before the end `until` sets; httpcore passes the timeout per read.

Either way the call fails as a read timeout: retried, then `pending`.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection


class _Alarm:
    __slots__ = ("fired", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self.fired = False


class _Watchdog:
    """Shuts a socket down at its end unless disarmed first; a read blocked on it returns."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the thread is not forked

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._seq = itertools.count()
        self._armed = 0
        self._thread: threading.Thread | None = None

    def arm(self, end: float, sock: socket.socket) -> _Alarm:
        alarm = _Alarm(sock)
        with self._cond:
            if len(self._heap) > 1024 and len(self._heap) > 2 * self._armed:
                # Most are disarmed (answered), left until their time: drop them in one go.
                self._heap = [entry for entry in self._heap if entry[2].sock is not None]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (end, next(self._seq), alarm))
            self._armed += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rpc-head", daemon=True)
                self._thread.start()
            if self._heap[0][2] is alarm:
                self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Whether it fired."""
        with self._cond:
            if alarm.sock is not None:
                alarm.sock = None
                self._armed -= 1
            return alarm.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].sock is None:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                alarm = heapq.heappop(self._heap)[2]
                sock, alarm.sock, alarm.fired = alarm.sock, None, True
                self._armed -= 1
                try:
                    # socket.socket's own: SSLSocket.shutdown also drops its TLS state under
                    # the reading thread's feet.
                    socket.socket.shutdown(_raw(sock), socket.SHUT_RDWR)
                except Exception:  # noqa: BLE001 - already closed, or not a socket: one bad
                    pass  # connection must never end the watch of every other


def _raw(sock: Any) -> socket.socket:
    """The OS socket under a connection's: TLS through an HTTPS proxy is urllib3's
    SSLTransport over an SSLSocket, which `socket.socket.shutdown` does not take."""
    while not isinstance(sock, socket.socket) and hasattr(sock, "socket"):
        sock = sock.socket
    return sock  # type: ignore[no-any-return]


_WATCHDOG = _Watchdog()


class _Connection(HTTPConnection):
    """Reads the head within the read timeout urllib3 set for it (`self.timeout`), as a whole;
    past it, a read timeout (urllib3's ReadTimeoutError), whatever the cut-off head was."""

    def getresponse(self) -> Any:
        sock, timeout = self.sock, self.timeout
        if sock is None or not isinstance(timeout, (int, float)):
            return super().getresponse()
        alarm = _WATCHDOG.arm(time.monotonic() + timeout, sock)
        try:
            response = super().getresponse()
        except BaseException as e:
            if _WATCHDOG.disarm(alarm):
                raise TimeoutError("the answer's head still arriving at its time") from e
            raise
        if _WATCHDOG.disarm(alarm):
            response.close()
            raise TimeoutError("the answer's head still arriving at its time")
        return response


class _TlsConnection(_Connection, HTTPSConnection):
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


# For a urllib3 PoolManager or ProxyManager's `pool_classes_by_scheme`.
POOL_CLASSES: dict[str, type[urllib3.HTTPConnectionPool]] = {"http": _Pool, "https": _TlsPool}


def request_timeout(seconds: float) -> urllib3.Timeout:
    """One request's timeout for urllib3: connecting and the head, as a whole, within it."""
    return urllib3.Timeout(connect=seconds, read=seconds, total=seconds)


# -- httpcore ------------------------------------------------------------------------------------

_END: contextvars.ContextVar[float | None] = contextvars.ContextVar("rpc_end", default=None)


@contextmanager
def until(end: float) -> Iterator[None]:
    """Every read of a `clipped_client` in this block ends by `end` (time.monotonic())."""
    token = _END.set(end)
    try:
        yield
    finally:
        _END.reset(token)


def _clip(timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
    end = _END.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise late("the answer still arriving at its time")
    return left if timeout is None else min(timeout, left)


class _ClippedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clip(timeout, httpcore.ConnectTimeout)
        return _ClippedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _ClippedBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _ClippedStream(self._backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _ClippedStream(self._backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def clipped_client(timeout: float) -> httpx.Client:
    """An httpx client (proxies from the environment included) whose reads end by the end
    `until` sets. httpx takes no network backend of its own (httpcore does), so each of its
    transports' httpcore pools is given one; httpx is pinned (pyproject.toml)."""
    client = httpx.Client(timeout=timeout)
    for transport in (client._transport, *client._mounts.values()):  # noqa: SLF001
        if isinstance(transport, httpx.HTTPTransport):
            pool = transport._pool  # noqa: SLF001
            pool._network_backend = _ClippedBackend(pool._network_backend)  # noqa: SLF001
    return client
