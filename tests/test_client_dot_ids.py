"""The Python client puts an id into the path as one segment. quote() leaves "." and ".."
as they are, and URL resolution removes dot segments (RFC 3986), so get_proof(".") went to
GET /v1/proofs (the submit route: 405) and get_session("..") to GET /v1/ (404 not_found):
another route, where the caller deserves the NotFoundError of its id."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python"))

from railproof_client import AsyncRailproofClient, NotFoundError  # noqa: E402

from tests.conftest import SERVICE_TOKEN  # noqa: E402
from verifier.http.api import create_app  # noqa: E402


@pytest.mark.parametrize("odd", [".", ".."])
@pytest.mark.parametrize("what", ["get_proof", "get_session"])
def test_a_dot_id_is_looked_up_not_sent_to_another_route(engine, what, odd):
    app = create_app(engine)
    seen: list[str] = []

    async def run() -> BaseException | None:
        transport = httpx.ASGITransport(app=app)

        async def log(request: httpx.Request) -> None:
            seen.append(request.url.path)

        client = AsyncRailproofClient(
            "http://testserver", SERVICE_TOKEN, transport=transport, max_attempts=1
        )
        client._http.event_hooks["request"].append(log)  # noqa: SLF001 - observe the wire
        try:
            await getattr(client, what)(odd)
        except BaseException as e:  # noqa: BLE001
            return e
        finally:
            await client.aclose()
        return None

    err = asyncio.run(run())
    route = "/v1/proofs/" if what == "get_proof" else "/v1/payment-sessions/"
    assert seen and seen[0].startswith(route) and len(seen[0]) > len(route), seen
    assert isinstance(err, NotFoundError) and err.code in (
        "proof_not_found",
        "session_not_found",
    ), repr(err)
