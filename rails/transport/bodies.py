"""An RPC answer read within its time and its size.

The HTTP clients bound each socket read (`timeout`), not the answer: a node that sends its
headers, then a byte every few hundred milliseconds, never lets one read time out, and holds
the request (and the worker thread around it) as long as it likes. A compressed answer is
unpacked whole. Every transport reads its answer's decoded bytes here, chunk by chunk,
against the end of the call and a size no JSON-RPC answer railproof asks for comes near.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from rails.errors import AnswerTooLarge

# Decoded bytes of one answer. A Solana getTransaction (jsonParsed, a busy v0 swap) is tens
# of KB; a batch of 256 signature statuses ~40 KB; an EVM receipt with hundreds of logs a few
# hundred KB; eth_getLogs over one nonce a few KB.
MAX_ANSWER_BYTES = 8 << 20
CHUNK_BYTES = 64 << 10


class AnswerTooSlow(Exception):
    """The answer was still arriving when the call's time was up (retried, or pending)."""


def read_bounded(chunks: Iterable[bytes], end: float, what: str) -> bytes:
    """The answer's bytes; AnswerTooSlow past `end` (time.monotonic()), AnswerTooLarge (a
    MalformedResponse) past MAX_ANSWER_BYTES."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise AnswerTooLarge(f"{what}: answer larger than {MAX_ANSWER_BYTES} bytes")
        if time.monotonic() > end:
            raise AnswerTooSlow(f"{what}: answer still arriving when the time was up")
    return bytes(body)


def urllib3_chunks(response: Any) -> Iterator[bytes]:
    """A urllib3 response's decoded bytes as they arrive: `read1` returns after one socket
    read (`stream(n)` waits for n bytes, one read timeout per byte a trickling node sends)."""
    while True:
        chunk = response.read1(CHUNK_BYTES, decode_content=True)
        if not chunk:
            return
        yield chunk
