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

from rails.transport.failover import RetryPolicy
from rails.transport.tron_http import TronHttpTransport
from tests import loopback_http as loopback


def test_the_method_goes_in_the_path_and_the_query_is_kept():
    seen: list[str] = []

    class Handler(loopback.Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.body()
            seen.append(self.path)
            body = json.dumps({}).encode()
            self.answer(body)

    with loopback.serving(Handler) as base:
        url = f"{base}/rpc?apikey=K1"
        t = TronHttpTransport([url], "tron-mainnet", RetryPolicy(attempts=1, timeout=3))
        t.call("gettransactioninfobyid", ["ab" * 32])
    assert seen == ["/rpc/wallet/gettransactioninfobyid?apikey=K1"], seen
