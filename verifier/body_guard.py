"""An ASGI guard in front of the API for hostile bodies: too large, or nested too deep.

The Content-Length check alone misses a chunked body (no Content-Length), so the guard
counts the bytes as they arrive and stops reading at the limit. A small body can still be
nested thousands of levels deep: Python's parser gives up with a RecursionError, and a few
hundred levels inside `proof` pass parsing but overflow the canonical-JSON encoder used for
fingerprints and idempotency hashes. No request this API takes nests deeper than a handful
of levels, so anything past MAX_JSON_DEPTH is refused before it is parsed.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_JSON_DEPTH = 32


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects in `body` nest deeper than `limit` (brackets inside JSON
    strings do not count). Not a validator: malformed JSON is the parser's business."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot nest deeper than the brackets it has
    depth, in_string, escaped = 0, False, False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif ch in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


class BodyGuard:
    """Reads the whole request body (at most `max_bytes`), refuses it with a 4xx JSON answer
    when it is too large or too deep, and replays it to the app otherwise."""

    def __init__(self, app: Any, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(send, 413, "body_too_large",
                              f"body: larger than {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body, self.max_depth):
            await _refuse(send, 422, "body_too_deep",
                          f"body: JSON nested deeper than {self.max_depth} levels")
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)


async def _refuse(send: Any, status: int, code: str, message: str) -> None:
    payload = orjson.dumps({"error": {"code": code, "message": message, "field": "body"}})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def encodable_object(value: Any) -> Any:
    """A pydantic after-validator for JSON objects the engine re-encodes as canonical JSON
    (fingerprints, idempotency hashes): orjson refuses integers beyond 64 bits and lone
    surrogates (the JSON escape \\ud800), which would otherwise surface as a 500."""
    if isinstance(value, dict):
        try:
            orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            raise ValueError("must be JSON whose integers fit in 64 bits and whose strings "
                             "are valid Unicode") from None
    return value
