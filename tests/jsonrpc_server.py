"""A small JSON-RPC HTTP server on 127.0.0.1 for transport tests, with scriptable faults.

    with JsonRpcServer() as srv:
        srv.answer("getSlot", 42)                       # a fixed result
        srv.answer("getTransaction", lambda params: …)  # or computed from the params
        srv.push(Fault.status(429), Fault.slow(2.0))    # the next requests misbehave, in order
        srv.answer("getBlock", Fault.rpc_error())       # this method answers an error object
        … srv.url … srv.requests (every JSON-RPC call received, faults included)
        … srv.round_trips (HTTP requests received: a batch is one)

Faults apply to the next HTTP requests whatever their method (a batch is one request: an
rpc_error fault answers each of its calls with the error); once the queue is empty the server
answers normally. A method with no answer gets a JSON-RPC "method not found" error.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Fault:
    kind: str  # status | slow | malformed | rpc_error | drop
    status_code: int = 0
    seconds: float = 0.0
    body: bytes = b""
    error: dict | None = None

    @classmethod
    def status(cls, code: int) -> Fault:
        """Answer with this HTTP status and an empty JSON body."""
        return cls("status", status_code=code)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait, then answer normally (a timeout when `seconds` exceeds the client's)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def malformed(cls, body: bytes = b"<html>not json</html>") -> Fault:
        """Answer 200 with a body that is not a JSON-RPC response."""
        return cls("malformed", body=body)

    @classmethod
    def rpc_error(cls, code: int = -32005, message: str = "Node is unhealthy") -> Fault:
        """Answer 200 with a JSON-RPC error object."""
        return cls("rpc_error", error={"code": code, "message": message})

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without answering."""
        return cls("drop")


class JsonRpcServer:
    def __init__(self) -> None:
        self._answers: dict[str, Any] = {}
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.round_trips = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def answer(self, method: str, result: Any | Callable[[list[Any]], Any]) -> None:
        with self._lock:
            self._answers[method] = result

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if method is None or r.get("method") == method)

    def start(self) -> JsonRpcServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> JsonRpcServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------------------------

    def _next(self, request: dict[str, Any]) -> tuple[Fault | None, Any]:
        with self._lock:
            self.round_trips += 1
            self.requests.append(request)
            fault = self._faults.popleft() if self._faults else None
            return fault, self._answers.get(request.get("method"), _MISSING)

    def _also(self, request: dict[str, Any]) -> Any:
        """A later call of the same batch: recorded and answered, under the batch's fault."""
        with self._lock:
            self.requests.append(request)
            return self._answers.get(request.get("method"), _MISSING)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    request = json.loads(raw)
                except ValueError:
                    request = {"invalid": raw.decode("utf-8", "replace")}
                calls = request if isinstance(request, list) and request else [request]
                fault, answer = server._next(calls[0])
                answers = [answer, *(server._also(c) for c in calls[1:])]
                if fault is not None and fault.kind == "slow":
                    time.sleep(fault.seconds)
                    fault = None
                if fault is not None and fault.kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if calls is request:  # a batch: one answer per call, in one array
                    parts = [_respond(c, fault, a) for c, a in zip(calls, answers, strict=True)]
                    status, body = parts[0][0], b"[" + b",".join(p[1] for p in parts) + b"]"
                    if fault is not None and fault.kind in ("status", "malformed"):
                        status, body = parts[0]
                else:
                    status, body = _respond(request, fault, answer)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timed out) first

        return Handler


_MISSING = object()


def _respond(request: dict[str, Any], fault: Fault | None, answer: Any) -> tuple[int, bytes]:
    rid = request.get("id")
    if fault is not None and fault.kind == "status":
        return fault.status_code, b"{}"
    if fault is not None and fault.kind == "malformed":
        return 200, fault.body
    if fault is not None and fault.kind == "rpc_error":
        return 200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": fault.error}).encode()
    if answer is _MISSING:
        err = {"code": -32601, "message": f"Method not found: {request.get('method')}"}
        return 200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": err}).encode()
    result = answer(request.get("params") or []) if callable(answer) else answer
    if isinstance(result, Fault) and result.kind == "rpc_error":  # this call answers an error
        return 200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": result.error}).encode()
    return 200, json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode()
