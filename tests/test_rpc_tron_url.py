"""A Tron RPC URL with a query string (a key as `?apikey=…`, as providers hand them
out) sent every call to the wrong place; the method now goes on the path.

`TronHttpTransport` builds the request URL as f"{url}/wallet/{method}"
(rails/transport/tron_http.py, `_once`): with "http://node/rpc?apikey=K" configured that is
"http://node/rpc?apikey=K/wallet/gettransactioninfobyid" — the method lands inside the query
(and changes the key's value), the path stays "/rpc". Every Tron proof on such a URL asks the
node something else than `gettransactioninfobyid`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rails.transport.failover import RetryPolicy
from rails.transport.tron_http import TronHttpTransport


def test_the_method_goes_in_the_path_and_the_query_is_kept():
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.path)
            body = json.dumps({}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rpc?apikey=K1"
        t = TronHttpTransport([url], "tron-mainnet", RetryPolicy(attempts=1, timeout=3))
        t.call("gettransactioninfobyid", ["ab" * 32])
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/rpc/wallet/gettransactioninfobyid?apikey=K1"], seen
