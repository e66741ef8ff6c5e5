"""A real webhook receiver on 127.0.0.1 for tests: a threaded HTTP server that checks the
Standard Webhooks signature the way a backend would (the reference `standardwebhooks`
verifier, through verify_signature), dedupes by webhook-id (the event id), records what it got, and can
be told to misbehave (fail the next N requests, take an event then answer 500 as if the
answer were lost, fail chosen events, never answer within the client's timeout)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from verifier.services.webhooks import ID_HEADER, SIGNATURE_HEADER, verify_signature

HANG_SECONDS = 5.0  # far past any test timeout; released at once when the receiver stops


class Receiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # every request, in arrival order
        self.accepted: list[dict[str, Any]] = []  # each event once, first arrival order
        self.duplicates = 0
        self.rejected = 0  # bad or missing signature
        self.fail_next = 0  # answer 500 without processing
        self.fail_after_processing = 0  # process, then 500 (the sender must retry; we dedupe)
        self.fail_ids: set[str] = set()
        self.hang = False
        # Answer only once this is set (or the receiver stops): a delivery held in flight.
        self.hold: threading.Event | None = None
        # Send the answer a byte at a time, this many seconds apart: each read is quick, the
        # whole answer slow (a receiver dripping its answer).
        self.drip_gap: float | None = None
        self.drip_body_only = False  # the status line and headers at once, then the drip
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def recover(self) -> None:
        with self.lock:
            self.fail_next = self.fail_after_processing = 0
            self.fail_ids.clear()
            self.hang = False

    # -- reads ------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        with self.lock:
            return [e["id"] for e in self.accepted]

    def wait_for(self, n: int, deadline_s: float = 10.0) -> list[dict[str, Any]]:
        """Bounded wait until n events were accepted (deliveries are synchronous in tests,
        so this normally returns at once)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with self.lock:
                if len(self.accepted) >= n:
                    return list(self.accepted)
            time.sleep(0.01)
        with self.lock:
            return list(self.accepted)

    # -- the server side --------------------------------------------------------------------
    def _handle(self, headers: Any, body: bytes) -> int:
        event_id = headers.get(ID_HEADER)
        signature = headers.get(SIGNATURE_HEADER, "")
        captured = {k.lower(): v for k, v in headers.items()}
        ok = self.secret is not None and verify_signature(self.secret, captured, body)
        with self.lock:
            self.requests.append(
                {
                    "event_id": event_id,
                    "signature": signature,
                    "headers": captured,
                    "body": body,
                    "verified": ok,
                    "content_type": headers.get("Content-Type"),
                }
            )
            if not ok:
                self.rejected += 1
                return 400
            hang = self.hang
        if hang:
            self._stop.wait(HANG_SECONDS)
            return 503
        hold = self.hold
        if hold is not None:
            while not (hold.is_set() or self._stop.is_set()):
                hold.wait(0.05)
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500
            if event_id in self.fail_ids:
                return 500
            event = json.loads(body)
            if event["id"] != event_id:
                return 400
            if any(e["id"] == event_id for e in self.accepted):
                self.duplicates += 1  # at-least-once delivery: acknowledge, do nothing
            else:
                self.accepted.append(event)
            if self.fail_after_processing > 0:
                self.fail_after_processing -= 1
                return 500
        return 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = receiver._handle(self.headers, body)
                if receiver.drip_gap is not None:
                    self._drip(code, receiver.drip_gap)
                    return
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok" if code == 200 else b"no")
                except OSError:
                    pass  # the sender gave up (timeout) and closed the connection

            def _drip(self, code: int, gap: float) -> None:
                answer = f"HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok".encode()
                first = len(answer) - 2 if receiver.drip_body_only else 0
                try:
                    if first:
                        self.wfile.write(answer[:first])
                        self.wfile.flush()
                    for i in range(first, len(answer)):
                        if receiver._stop.wait(gap):
                            return
                        self.wfile.write(answer[i : i + 1])
                        self.wfile.flush()
                except OSError:
                    pass  # the sender gave up and closed the connection

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
