"""The ASGI application factory used by `railproof serve` (one engine per process), also
what a process manager runs directly (`uvicorn --factory verifier.http.asgi:make_app`)."""

from fastapi import FastAPI

from verifier.core.config import AUDIT_KEY_MISSING, describe_error, load_settings
from verifier.core.engine import Engine
from verifier.core.logs import configure_logging
from verifier.http.app import create_app
from verifier.services.queries import audit_key_refusal, schema_is_current


def make_app() -> FastAPI:
    # Each API process logs as `serve` does, in JSON with secrets redacted: the processes of
    # `serve --workers N` are spawned, so none inherits the supervisor's handlers.
    configure_logging()
    try:
        settings = load_settings()
    except ValueError as e:
        # SECURITY: pydantic's own message quotes the value it refused (a token table), and
        # the process manager prints it: only the variable and what is wrong with it.
        raise RuntimeError(
            "; ".join(describe_error(e)) or "invalid RAILPROOF_* variables"
        ) from None
    # SECURITY: as `railproof serve` refuses: an API appends to the audit log, and an unkeyed
    # chain can be rewritten and re-hashed by anyone who can write the table. (ValueError
    # when the key is set twice or its file is unreadable.)
    if settings.audit_key_bytes() is None:
        raise RuntimeError(AUDIT_KEY_MISSING)
    engine = Engine(settings)
    schema_is_current(engine)
    refusal = audit_key_refusal(engine)
    if refusal is not None:
        raise RuntimeError(refusal)
    engine.ensure_rail_states()
    return create_app(engine)
