"""The worker's delivering HTTP client carries no state and no environment from one delivery
to the next.

1. Cookies: one `httpx.AsyncClient` delivers every tenant's events for the worker's
   lifetime. Were it to keep cookies, a receiver answering `Set-Cookie` would have it sent to every
   other receiver on the same host, whatever its port (cookies do not isolate by port; in the
   default configuration every receiver is on 127.0.0.1): tenant B's receiver's session
   cookie arrives at tenant A's receiver.
2. Proxy: were the client to trust the environment (`trust_env`), with HTTP_PROXY / ALL_PROXY
   set (as a deployment does for its chain RPC), a delivery to a loopback endpoint, signed and
   carrying the payment event, would go to the proxy instead: off the machine, against "deliveries
   never leave this machine" (README), and the proxy's 200 is recorded as delivered while the
   receiver got nothing.

Receivers are real HTTP servers on loopback ports of their own; on SQLite and PostgreSQL (the `engine`
fixture is parametrized)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import CLOCK, OTHER_SERVICE_TOKEN, SERVICE_TOKEN, auth
from tests.test_webhooks import FAST, api, delivery_of, emit_now  # noqa: F401
from verifier.services import webhooks
from verifier.storage.webhook_models import DeliveryStatus


class _Server:
    """A receiver (or a stand-in proxy) on a fixed loopback port: records every request and
    answers `status` with `headers`."""

    def __init__(self, headers: list[tuple[str, str]] | None = None) -> None:
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self
        extra = headers or []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    server.got.append(
                        {
                            "target": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                self.send_response(200)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        self._srv.daemon_threads = True
        self._thread = threading.Thread(target=self._srv.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._srv.shutdown()
        self._srv.server_close()

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.got)


def _subscribe(api, url: str, token: str) -> dict[str, Any]:  # noqa: F811
    r = api.post(
        "/v1/webhook-endpoints",
        headers=auth(token),
        json={"url": url, "event_types": ["proof.verified"]},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _wait(cond, deadline_s: float = 10.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_a_tenants_receiver_cookie_is_not_sent_to_another_tenants_receiver(engine, api):  # noqa: F811
    # Bob's receiver sets a session cookie; the worker's webhook thread (deliver_until, what
    # `railproof worker` runs) then delivers Alice's event to Alice's receiver on another port.
    with (
        _Server([("Set-Cookie", "bob_session=BOB-SECRET-123; Path=/")]) as bob,
        _Server() as alice,
    ):
        _subscribe(api, bob.url + "/bob-hooks", OTHER_SERVICE_TOKEN)
        _subscribe(api, alice.url + "/alice-hooks", SERVICE_TOKEN)
        stop = threading.Event()
        worker = threading.Thread(
            target=webhooks.deliver_until,
            args=(engine, "w1", stop, 0.05, replace(FAST, timeout_s=5.0, lease_s=30.0)),
            daemon=True,
        )
        worker.start()
        try:
            emit_now(engine, "proof.verified", owner="bob", rid="p-bob")
            assert _wait(lambda: len(bob.requests()) == 1)
            ev = emit_now(engine, "proof.verified", owner="alice", rid="p-alice")
            assert _wait(lambda: len(alice.requests()) == 1)
            assert _wait(lambda: delivery_of(engine, ev).status == DeliveryStatus.delivered)
        finally:
            stop.set()
            worker.join(timeout=15)
        (got,) = alice.requests()
        # SECURITY: what one tenant's receiver answers must never reach another tenant.
        assert "BOB-SECRET-123" not in str(got["headers"]), got["headers"]
        assert "cookie" not in got["headers"], got["headers"]


def test_a_loopback_delivery_goes_to_its_receiver_whatever_proxy_the_environment_names(
    engine,
    api,  # noqa: F811
    monkeypatch,
):
    # The proxy stands on loopback here only so the test sends nothing off the machine; in a
    # deployment it is another host (the one the chain RPC goes through).
    with _Server() as proxy, _Server() as alice:
        _subscribe(api, alice.url + "/alice-hooks", SERVICE_TOKEN)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        ev = emit_now(engine, "proof.verified", owner="alice", rid="p-alice")
        out = webhooks.deliver_due(engine, "w1", now=CLOCK, config=FAST)
        assert out["claimed"] == 1, out
        # SECURITY: a signed payment event for a loopback endpoint never goes anywhere else.
        assert proxy.requests() == [], [r["target"] for r in proxy.requests()]
        assert len(alice.requests()) == 1
        assert delivery_of(engine, ev).status == DeliveryStatus.delivered
