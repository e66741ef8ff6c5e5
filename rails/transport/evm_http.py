"""Live EVM transport: JSON-RPC over HTTP through web3.py's HTTPProvider, returning the raw
`result` member (what a cassette holds), with the retries and failover of
`rails.transport.failover`. web3's own retry is switched off so tenacity is the only one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
import requests
import requests.adapters
import urllib3
from web3 import HTTPProvider

from rails.errors import MalformedResponse, RpcErrorResponse, RpcUnavailable, TransportError
from rails.transport import heads
from rails.transport.bodies import AnswerTooSlow, read_bounded, urllib3_chunks
from rails.transport.failover import (
    FailureObserver,
    RetryPolicy,
    Transient,
    call_with_failover,
    classify_http_status,
    provider_of,
    scrubbed,
)
from rails.transport.rpc_policy import RpcPolicy


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections read the answer's head within the request's
    timeout, as a whole (rails.transport.heads): a node trickling it holds nothing."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = heads.POOL_CLASSES

    def proxy_manager_for(self, proxy: Any, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is urllib3.ProxyManager:  # a SOCKS proxy's pools are its own
            manager.pool_classes_by_scheme = heads.POOL_CLASSES
        return manager


class _Session(requests.Session):
    """The provider's HTTP session. SECURITY: a redirect is never followed (the node's
    answer would come from wherever it points: an internal service, another host), and the
    answer is read within the call's time — its head too (_Adapter) — and a size
    (rails.transport.bodies): a node that trickles it, or sends a compression bomb, holds
    nothing."""

    def __init__(self, end_of: Any, provider: str):
        super().__init__()
        self._end_of, self._provider = end_of, provider
        for scheme in ("http://", "https://"):
            self.mount(scheme, _Adapter())

    def post(self, url: Any, data: Any = None, json: Any = None, **kwargs: Any) -> Any:
        kwargs.update(stream=True, allow_redirects=False)
        if isinstance(kwargs.get("timeout"), (int, float)):  # connecting and the head within it
            kwargs["timeout"] = heads.request_timeout(kwargs["timeout"])
        response = super().post(url, data=data, json=json, **kwargs)
        if not 200 <= response.status_code < 300:
            response.close()  # an error's body is not read (it may trickle too)
            if 300 <= response.status_code < 400:
                raise RpcUnavailable(f"{self._provider}: HTTP {response.status_code} (redirect)")
            return response
        try:
            response._content = read_bounded(  # noqa: SLF001 - what .content returns
                urllib3_chunks(response.raw), self._end_of(), self._provider
            )
        except BaseException:
            response.close()  # cut off mid-answer: the connection serves no other
            raise
        return response


class _Provider(HTTPProvider):
    """web3's HTTPProvider with the timeout chosen per request (clipped to a deadline), for
    the calling thread: one provider serves every thread, each with its own deadline."""

    def __init__(self, url: str):
        self._local = threading.local()
        super().__init__(
            url,
            exception_retry_configuration=None,
            session=_Session(lambda: self._local.end, provider_of(url)),
        )

    def request(self, method: str, params: list[Any], timeout: float) -> Any:
        self._local.timeout = timeout
        self._local.end = time.monotonic() + timeout
        try:
            response = self.make_request(method, params)
        finally:
            self._local.timeout = None
        # SECURITY: an answer under another id is another request's (a proxy mixing answers
        # up), whatever it says.
        asked = self._local.id
        if not isinstance(response, dict) or response.get("id") != asked:
            got = response.get("id") if isinstance(response, dict) else None
            raise MalformedResponse(f"{method}: answered id {got!r:.40}, asked {asked}")
        return response

    def encode_rpc_request(self, method: Any, params: Any) -> bytes:
        data = super().encode_rpc_request(method, params)
        self._local.id = orjson.loads(data)["id"]  # the id web3 gave this request
        return data

    def get_request_kwargs(self) -> Any:
        kwargs = super().get_request_kwargs()
        timeout = getattr(self._local, "timeout", None)
        return kwargs if timeout is None else {**kwargs, "timeout": timeout}


class EvmHttpTransport:
    """JSON-RPC over HTTP through web3.py's HTTPProvider (`make_request`), returning the raw
    `result`. web3's own retry is switched off so tenacity is the only retry layer."""

    source: ClassVar[str] = "live"
    honours_deadline: ClassVar[bool] = True

    def __init__(self, urls: Sequence[str], network: str = "", policy: RetryPolicy | None = None):
        self.urls = list(urls)
        self.network = network
        self.policy = policy or RetryPolicy()
        self._providers = {url: _Provider(url) for url in self.urls}

    on_failure: FailureObserver | None = None  # set by the deployment (provider metrics)

    def set_failure_observer(self, observer: FailureObserver) -> None:
        self.on_failure = observer

    def set_policy(self, policy: RpcPolicy) -> None:
        """The deployment's bounds for this network (settings)."""
        self.policy = RetryPolicy.of(policy)

    def call(self, method: str, params: list[Any], deadline: float | None = None) -> Any:
        try:
            response = call_with_failover(
                self.urls,
                lambda url, timeout: self._once(url, method, params, timeout),
                self.policy,
                method,
                deadline,
                self.on_failure,
            )
            return _rpc_result(method, response)
        except TransportError as e:
            raise scrubbed(e, self.urls) from None

    def _once(self, url: str, method: str, params: list[Any], timeout: float) -> Any:
        try:
            return self._providers[url].request(method, params, timeout)
        except AnswerTooSlow as e:
            raise Transient(str(e)) from e
        # The answer's body is read by _Session from urllib3 itself, whose errors requests
        # would have wrapped: cut off, stalled, or not decodable.
        except (
            urllib3.exceptions.TimeoutError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.SSLError,
        ) as e:
            raise Transient(f"answer cut short ({type(e).__name__})") from e
        except urllib3.exceptions.HTTPError as e:  # DecodeError: the next URL is asked
            raise RpcUnavailable(
                f"{provider_of(url)}: answer unreadable ({type(e).__name__})"
            ) from e
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else 599
            classify_http_status(status, url)
            raise RpcUnavailable(f"{provider_of(url)}: HTTP {status}") from e
        except requests.exceptions.InvalidURL:  # its message quotes the URL
            raise RpcUnavailable(f"{provider_of(url)}: not a URL that can be read") from None
        except ValueError as e:  # not JSON (JSONDecodeError, UnicodeDecodeError)
            # web3 quotes the whole answer: a few characters say what it was, no more.
            said = str(e)[:120]
            raise MalformedResponse(
                f"{provider_of(url)} {method}: answer is not JSON ({said})"
            ) from e
        except requests.RequestException as e:
            # Timeouts, refused or dropped connections, an answer cut short: try again.
            raise Transient(f"{type(e).__name__}: {e}") from e


def _rpc_result(method: str, response: Any) -> Any:
    if not isinstance(response, dict):
        raise MalformedResponse(f"{method}: not a JSON-RPC response object")
    if response.get("error") is not None:
        raise RpcErrorResponse(method, response["error"])
    if "result" not in response:
        raise MalformedResponse(f"{method}: JSON-RPC response without result or error")
    return response["result"]
