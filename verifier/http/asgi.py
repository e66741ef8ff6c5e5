"""The ASGI application factory used by `railproof serve` (one engine per process)."""

from fastapi import FastAPI

from verifier.http.api import create_app
from verifier.core.engine import Engine
from verifier.storage.db import require_migrated


def make_app() -> FastAPI:
    engine = Engine()
    require_migrated(engine.db.engine)
    engine.ensure_rail_states()
    return create_app(engine)
