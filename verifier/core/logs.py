"""Structured JSON logs with redaction: tokens, signatures and payloads never reach a log."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar

import orjson

_SECRETS = re.compile(
    r"(Bearer(?:\s+|%20|\+))[^\s\"'&]+|(\"?(?:signature|token|secret|payload|authorization)\"?\s*[:=]\s*\"?"
    r"(?:Bearer\s+)?)[^\s\",}]+",
    re.IGNORECASE,
)


# A URL's query (an RPC provider's api-key=, a webhook receiver's key= or sig=) whatever its
# parameters are called.
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#\"']*)\?[^\s#\"']*", re.IGNORECASE)


# A URL's user information (https://user:key@node, a database URL's password).
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s/?#\"'@]+@", re.IGNORECASE)


def redact(text: str) -> str:
    text = _URL_QUERY.sub(lambda m: m.group(1) + "?[redacted]", text)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + "[redacted]@", text)
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text)


# The `extra=` keys the code logs with (ids and labels, never payloads or secrets): each
# becomes a field of the line.
_EXTRAS = (
    "proof_id",
    "proof_status",
    "rail_id",
    "session_id",
    "status",
    "code",
    "worker",
    "event_id",
    "delivery_id",
    "watch_key",
    "gates",
    "client",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which API process, with `serve --workers N`
            "msg": redact(record.getMessage()),
        }
        for k in _EXTRAS:
            if hasattr(record, k):
                doc[k] = getattr(record, k)
        # SECURITY: the request log's fields (a route, an incident id) are redacted as the
        # message is: a field holding what the message hid would repeat it.
        for k, v in getattr(record, "http_request", {}).items():
            doc[k] = redact(v) if isinstance(v, str) else v
        rid = request_id_var.get()
        if rid:
            doc.setdefault("request_id", rid)
        if record.exc_info:
            exc_type, exc, _ = record.exc_info
            if exc_type is not None:  # exc_info=True outside an except block: (None, None, None)
                doc["error"] = redact(f"{exc_type.__name__}: {exc}")
        return orjson.dumps(doc).decode()


# The request being served (set by verifier.http.request_log): every log line and audit event
# it causes carries its id.
request_id_var: ContextVar[str | None] = ContextVar("railproof_request_id", default=None)


def configure_logging(level: int = logging.INFO) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request's URL at INFO: RPC and webhook URLs may carry credentials.
    # (httpx2: the in-process client `railproof rehearse` calls the API with.)
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
