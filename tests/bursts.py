"""Requests sent at once: one thread each, released together, spread over API servers."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx

from tests.conftest import auth


def post_at_once(urls: list[str], posts: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    """Every (path, token, json body) posted at once, alternating between the servers at
    `urls`; the answers in the order they came back."""
    start = threading.Barrier(len(posts))
    out: list[httpx.Response] = []
    lock = threading.Lock()

    def post(i: int, path: str, token: str, body: Any) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], timeout=30) as c:
            start.wait()
            r = c.post(path, headers=auth(token), json=body)
        with lock:
            out.append(r)

    threads = [threading.Thread(target=post, args=(i, *p)) for i, p in enumerate(posts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(out) == len(posts)
    return out


def codes(answers: list[httpx.Response]) -> Counter[object]:
    """201 (or 200) as it is, an error as (status, its code)."""
    return Counter(
        r.status_code if r.status_code < 400 else (r.status_code, r.json()["error"]["code"])
        for r in answers
    )
