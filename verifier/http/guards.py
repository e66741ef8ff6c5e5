"""ASGI guards in front of the API for hostile input: bodies too large, nested too deep or
naming a field twice, and control characters where no text needs them.

The Content-Length check alone misses a chunked body (no Content-Length), so the guard
counts the bytes as they arrive and stops reading at the limit. A small body can still be
nested thousands of levels deep: Python's parser gives up with a RecursionError, and a few
hundred levels inside `proof` pass parsing but overflow the canonical-JSON encoder used for
fingerprints and idempotency hashes. No request this API takes nests deeper than a handful
of levels, so anything past MAX_JSON_DEPTH is refused before it is parsed.

Every check here reads the body as UTF-8 text, and so does the parser behind them only for
such text: json.loads on bytes (FastAPI's, and `loads_unique`) also reads UTF-16 and UTF-32,
told apart by NUL bytes among the first four, where a bracket, a quote or the NUL escape are
other bytes than the ones counted or searched, and a character's code unit can hold a byte
read as a quote. So a body that is not UTF-8, or holds a NUL byte (no UTF-8 JSON text does;
in a form it is %00), is refused (422 naming `body`) before anything else reads it.

A JSON object naming a field twice is refused (422 naming its dotted path): Python's parser
takes the last value, other readers of the same body the first.

PostgreSQL text cannot hold NUL: a \\u0000 in a JSON string, or %00 in a path or query,
would reach the database as a DataError (a 500 and a dropped connection). So, before any
handler runs (422 naming the field): NUL in any string or key of a JSON body (named by its
dotted path); any C0 control character or DEL in path and query parameters (all of them
ids, names or numbers; path parameters are checked once a route has matched, by a
dependency of every route); and in headers, every control character HTTP forbids there (all
but HTAB). Body text (reasons, memos) may hold other control characters: PostgreSQL stores
them fine.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from rails.jsontext import RepeatedName, loads_unique
from verifier.http.errors import ApiErrorCode

MAX_JSON_DEPTH = 32
# The longest incident id and operator reason a staff request takes, as X-Incident-Id and
# X-Operator-Reason (bytes: the server reads headers one character a byte) or in a body:
# those of services.audit, which refuses any action whose context passes them (kept equal by
# tests/test_audit_hardening.py; stated here so the CLI need not load the services).
MAX_INCIDENT_ID = 128
MAX_OPERATOR_REASON = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # HTTP allows HTAB only


def header_text(value: str) -> str | None:
    """A header's value read as UTF-8 (the ASGI server hands it over as Latin-1, one
    character a byte), or None when its bytes are not UTF-8. Only for headers that carry an
    operator's free text (X-Incident-Id, X-Operator-Reason), which may be in any language."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


def encoding_refusal(body: bytes) -> str | None:
    """Why `body` is not text the guards below and the JSON parser read alike, or None: it
    must be UTF-8 without NUL bytes. json.loads reads such bytes as UTF-8 (a leading BOM
    aside), as those guards do; bytes with a NUL among the first four it reads as UTF-16 or
    UTF-32, and a body with a UTF-16 or UTF-32 BOM is no UTF-8."""
    # SECURITY: a body the guards read as one text and the parser as another passes them
    # unread: a NUL in a string reaches PostgreSQL (a 500), nesting hides from the depth
    # count (a RecursionError), a name given twice is not seen.
    if b"\x00" in body:
        return "not UTF-8 JSON text (it holds a NUL byte: UTF-16 or UTF-32?)"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    return None


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects in `body` nest deeper than `limit` (brackets inside JSON
    strings do not count). Not a validator: malformed JSON is the parser's business. Bytes
    are read one at a time, right for UTF-8 only (`encoding_refusal`), where no byte of a
    multi-byte character is a bracket, a quote or a backslash."""
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
    when it is too large, not UTF-8, too deep, names a field twice or holds NUL, and replays it
    to the app otherwise."""

    def __init__(self, app: Any, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A declared Content-Length over the limit is refused before a byte is read; the
        # bytes of a body that declares none are counted below.
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await _refuse(
                    send,
                    413,
                    ApiErrorCode.body_too_large,
                    f"body: larger than {self.max_bytes} bytes",
                )
                return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
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
                await _refuse(
                    send,
                    413,
                    ApiErrorCode.body_too_large,
                    f"body: larger than {self.max_bytes} bytes",
                )
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        why = encoding_refusal(body)
        if why is not None:
            await _refuse(send, 422, ApiErrorCode.invalid_request, f"body: {why}")
            return
        if json_depth_exceeds(body, self.max_depth):
            await _refuse(
                send,
                422,
                ApiErrorCode.body_too_deep,
                f"body: JSON nested deeper than {self.max_depth} levels",
            )
            return
        refusal = body_refusal(body)
        if refusal is not None:
            field, why = refusal
            await _refuse(send, 422, ApiErrorCode.invalid_request, f"{field}: {why}", field)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)


def nul_path(value: Any, path: str = "") -> str | None:
    """The dotted path (list items by index) of the first string in a parsed JSON value that
    holds a NUL; for a key holding one, the path of its object. None when there is none."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for k, v in items:
        if isinstance(k, str) and "\x00" in k:
            return path or "body"
        found = nul_path(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def body_refusal(body: bytes) -> tuple[str, str] | None:
    """(field, why) when a JSON body names a field twice or holds NUL in a string or key; None
    when it is clean, empty or no JSON (malformed JSON is the parser's business). One parse
    for both checks, of a body `encoding_refusal` let through (UTF-8: read as FastAPI reads
    it)."""
    if not body:
        return None
    try:
        # The parser FastAPI uses, so both read the same strings.
        doc = loads_unique(body)
    except RepeatedName as e:
        # SECURITY: {"amount": 1500000, "amount": 1} is read as its last value here and as its
        # first by other readers (a proxy, a log, the client's own checks): one body, two
        # requests. Refused at any depth, for every route.
        return e.path, "given twice; name each field once"
    except (ValueError, RecursionError):
        return None
    # SECURITY: the parsed document, whatever the bytes spelled: PostgreSQL text cannot hold
    # NUL (a DataError, a 500), SQLite would store it.
    field = nul_path(doc)
    if field is not None:
        return field, "must not contain NUL characters (\\u0000)"
    return None


def _header_name(raw: bytes) -> str:
    return "-".join(p.capitalize() for p in raw.decode("latin-1").split("-"))


def control_field(params: dict[str, Any]) -> str | None:
    """The name of the first parameter whose value holds a control character."""
    return next((k for k, v in params.items() if isinstance(v, str) and _CONTROL.search(v)), None)


def param_control_field(scope: dict[str, Any]) -> str | None:
    """The name of the first header or query parameter holding a character it must not hold
    (see the module docstring); None when all are clean. Path parameters are named only once
    a route has matched: see `control_field`, run as a dependency of every route."""
    for name, value in scope.get("headers", ()):
        if _HEADER_CONTROL.search(value):
            return _header_name(name)
    for name, value in parse_qsl(
        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
    ):  # as Starlette parses it
        if _CONTROL.search(name):
            return "query"
        if _CONTROL.search(value):
            return name
    return None


class InputGuard:
    """Refuses control characters in query parameters and headers (422 naming the one)
    before routing, so no handler or dependency ever sees them."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            field = param_control_field(scope)
            if field is not None:
                await _refuse(
                    send,
                    422,
                    ApiErrorCode.invalid_request,
                    f"{field}: must not contain control characters",
                    field,
                )
                return
        await self.app(scope, receive, send)


async def _refuse(
    send: Any, status: int, code: ApiErrorCode, message: str, field: str = "body"
) -> None:
    # A name from the body may hold a lone surrogate ("\ud800"), which no UTF-8 holds:
    # written escaped, as the body gave it, never an encoding error (a 500).
    message, field = (
        v.encode("utf-8", "backslashreplace").decode("utf-8") for v in (message, field)
    )
    payload = orjson.dumps({"error": {"code": code, "message": message, "field": field}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def encodable_object(value: Any) -> Any:
    """A pydantic after-validator for JSON objects the engine re-encodes as canonical JSON
    (fingerprints, idempotency hashes): orjson refuses integers beyond 64 bits and lone
    surrogates (the JSON escape \\ud800), which would otherwise surface as a 500."""
    if isinstance(value, dict):
        try:
            orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            raise ValueError(
                "must be JSON whose integers fit in 64 bits and whose strings are valid Unicode"
            ) from None
    return value
