"""The ASGI application factory used by `railproof serve` (one engine per process)."""

from fastapi import FastAPI

from verifier.core.engine import Engine
from verifier.http.app import create_app
from verifier.services.queries import schema_is_current


def make_app() -> FastAPI:
    engine = Engine()
    schema_is_current(engine)
    engine.ensure_rail_states()
    return create_app(engine)
