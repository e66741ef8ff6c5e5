"""Live Tron transport: POST {url}/wallet/<method> with a JSON body behind the same
`call(method, params)` seam as the JSON-RPC transports, with the retries and failover of
`rails.transport.failover`. The answer is returned as the node sent it (a cassette holds the
same); a body with an `Error` member is the node's error answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from rails.errors import MalformedResponse, RpcErrorResponse, RpcUnavailable, TransportError
from rails.transport import heads
from rails.transport.bodies import AnswerTooSlow, read_bounded
from rails.transport.failover import (
    FailureObserver,
    RetryPolicy,
    Transient,
    call_with_failover,
    provider_of,
    scrubbed,
)
from rails.transport.rpc_policy import RpcPolicy

# The seam's method names mapped to the HTTP API's request bodies.
_BODIES: dict[str, Callable[[list[Any]], dict[str, Any]]] = {
    "gettransactioninfobyid": lambda params: {"value": params[0]},
    "getnowblock": lambda params: {},
    "getblockbynum": lambda params: {"num": params[0]},
}


class TronHttpTransport:
    """POST {url}/wallet/<method> with a JSON body, exposing the same `call(method, params)`
    seam as the JSON-RPC transports; retries and failover as the EVM transport."""

    source: ClassVar[str] = "live"
    honours_deadline: ClassVar[bool] = True

    def __init__(
        self,
        urls: Sequence[str],
        network: str = "",
        policy: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ):
        self.urls = [u.rstrip("/") for u in urls]
        self.network = network
        self.policy = policy or RetryPolicy()
        self._client = client or heads.clipped_client(self.policy.timeout)

    on_failure: FailureObserver | None = None  # set by the deployment (provider metrics)

    def set_failure_observer(self, observer: FailureObserver) -> None:
        self.on_failure = observer

    def set_policy(self, policy: RpcPolicy) -> None:
        """The deployment's bounds for this network (settings)."""
        self.policy = RetryPolicy.of(policy)

    def call(self, method: str, params: list[Any], deadline: float | None = None) -> Any:
        if method not in _BODIES:
            raise ValueError(f"the Tron transport does not speak {method!r}")
        body = _BODIES[method](params)
        try:
            answer = call_with_failover(
                self.urls,
                lambda url, timeout: self._once(url, method, body, timeout),
                self.policy,
                method,
                deadline,
                self.on_failure,
            )
            if isinstance(answer, dict) and "Error" in answer:
                raise RpcErrorResponse(method, answer["Error"])
        except TransportError as e:
            raise scrubbed(e, self.urls) from None
        return answer

    def _once(self, url: str, method: str, body: dict[str, Any], timeout: float) -> Any:
        end = time.monotonic() + timeout
        try:
            # Per request: the policy's timeout clipped to the call's time left. SECURITY: the
            # answer within that time — its head too (rails.transport.heads) — and a size
            # (rails.transport.bodies); no redirect.
            # Uncompressed: httpx inflates a chunk whole, so a compressed answer is refused
            # rather than inflated, and the next URL asked (a node asked for identity has no
            # reason to send one, but one behind a proxy that compresses anyway is no liar).
            with (
                heads.until(end),
                self._client.stream(
                    "POST",
                    _method_url(url, method),
                    json=body,
                    timeout=timeout,
                    headers={"Accept-Encoding": "identity"},
                ) as response,
            ):
                code = response.status_code
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if 200 <= code < 300 and encoding != "identity":
                    raise RpcUnavailable(
                        f"{provider_of(url)} {method}: a compressed answer ({encoding:.20})"
                    )
                content = (
                    read_bounded(response.iter_raw(), end, provider_of(url))
                    if 200 <= code < 300
                    else b""
                )
        except AnswerTooSlow as e:
            raise Transient(str(e)) from e
        except httpx.InvalidURL:  # its message quotes what it took for the port
            raise RpcUnavailable(f"{provider_of(url)}: not a URL that can be read") from None
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise Transient(f"{type(e).__name__}: {e}") from e
        if code == 429 or code >= 500:
            raise Transient(f"HTTP {code}")
        if code >= 300:
            raise RpcUnavailable(f"{provider_of(url)}: HTTP {code}")
        try:
            answer = orjson.loads(content)
        except ValueError as e:
            raise MalformedResponse(f"{provider_of(url)} {method}: answer is not JSON") from e
        if not isinstance(answer, dict):
            raise MalformedResponse(f"{provider_of(url)} {method}: answer is not a JSON object")
        return answer

    def close(self) -> None:
        self._client.close()


def _method_url(url: str, method: str) -> str:
    """`/wallet/<method>` added to the URL's path; its query (a key) stays the query."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + f"/wallet/{method}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))
