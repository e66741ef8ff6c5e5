"""The application factory: one FastAPI app per engine, with the input guards in front, the
error handlers that turn every failure into `{"error": {...}}` (never a trace), and one
router per resource.

The engine lives on `app.state.engine` (deps.get_engine), the rate limiter on
`app.state.rate_limiter` (tests replace it).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from verifier.core.engine import Engine
from verifier.core.errors import EngineError
from verifier.http.console import console_router
from verifier.http.deps import clean_path_params
from verifier.http.errors import ApiErrorCode, error_responses
from verifier.http.guards import MAX_JSON_DEPTH, BodyGuard, InputGuard
from verifier.http.ratelimit import limiter_from_settings, login_limiter_from_settings
from verifier.http.request_log import RequestLogMiddleware, settings_principal
from verifier.http.routes import (
    admin,
    entitlements,
    health,
    mount,
    proofs,
    reconciliation,
    release_gates,
    sessions,
    webhooks,
)
from verifier.services.queries import (
    DatabaseError,
    PoolTimeout,
    database_busy,
    database_unavailable,
)

log = logging.getLogger("railproof.api")
MAX_BODY_BYTES = 64 * 1024
DESCRIPTION = """Rail-proof verification engine for on-chain payments.

Service routes take a service bearer token bound to the owners it may act for; anything
else answers 404 and counts as an owner-isolation denial. Staff routes (/v1/admin) take a
staff token. Errors are always `{"error": {"code", "message", "field"?}}`, never a trace."""


# Every router of the API, in the order routes are matched (tests walk these).
MOUNTED = (
    health.router,
    sessions.router,
    proofs.router,
    entitlements.router,
    admin.router,
    reconciliation.router,
    release_gates.router,
)
INCLUDED = (webhooks.router,)

# The app's own dependencies and responses, which every route it serves takes first:
# clean_path_params runs on every route (included routers too) before auth, and the body
# guard refuses a declared Content-Length over the limit on every route, whatever its method.
_APP_DEPENDENCIES = (Depends(clean_path_params),)
_APP_RESPONSES = error_responses(413)


@functools.cache
def _api_routes() -> tuple[BaseRoute, ...]:
    """The MOUNTED routers' routes as an app serves them, built once per process. Building
    them (each response model's and dependency's validators) took ~0.1 s of every
    create_app; they hold nothing of an app or its engine (a handler reads
    `request.app.state`), so every app of the process serves the same route objects. (Nor
    do they see an app's `dependency_overrides`, which nothing here uses.)"""
    built = APIRouter(dependencies=list(_APP_DEPENDENCIES), responses=_APP_RESPONSES)
    for router in MOUNTED:
        mount(built, router)
    return tuple(built.routes)


# Swagger UI and ReDoc assets shipped in a package (fastapi-offline), served by the app
# itself: /docs and /redoc work without the internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_STATIC = "/docs/static"
# SECURITY: the documentation pages run a large script bundle on the console's origin, where
# a script could read a console page (its CSRF token) with the operator's cookie. They may
# run only their own files (the one inline script Swagger UI starts with is allowed by its
# hash), fetch only from here, send nothing elsewhere, and are never framed. Styles may be
# inline: both bundles set them from script. ReDoc builds its search worker from a blob.
DOCS_CSP = (
    "default-src 'none'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
DOCS_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def create_app(engine: Engine, console: APIRouter | None = None) -> FastAPI:
    """`console`: the operator console's router (default: `console_router(engine)`)."""
    app = FastAPI(
        title="railproof",
        version="0.1.0",
        description=DESCRIPTION,
        dependencies=list(_APP_DEPENDENCIES),
        docs_url=None,  # FastAPI's own pages load their assets from a CDN: _add_docs
        redoc_url=None,
        # SECURITY: a path with a trailing slash is not found, never a 307 to a URL built from
        # the request's Host and scheme (behind a TLS proxy, http://) that a client following
        # it would re-send its body and bearer token to.
        redirect_slashes=False,
        responses=_APP_RESPONSES,
    )
    app.state.engine = engine
    app.state.rate_limiter = limiter_from_settings(engine.settings, engine.metrics)
    # Staff-token tries, the console's sign-ins and the staff API's unknown tokens together.
    app.state.login_limiter = login_limiter_from_settings(engine.settings, engine.metrics)
    app.add_middleware(BodyGuard, max_bytes=MAX_BODY_BYTES)  # chunked, deep, NUL in bodies
    app.add_middleware(InputGuard)  # control characters in query and headers
    # Outermost: every answer, the guards' refusals included, is logged with its request id.
    app.add_middleware(
        RequestLogMiddleware,
        principal=settings_principal(engine.settings),
        metrics=engine.metrics,
    )
    _add_error_handlers(app)
    if engine.settings.api_docs:
        _add_docs(app)
    app.router.routes.extend(_api_routes())
    # Included, not mounted: app.routes then lists these as one opaque route, as before the
    # split, because tests/test_security.py's owner-isolation walk has no webhook endpoint id
    # to try them with. Once it has one, mount this router too.
    for router in INCLUDED:
        app.include_router(router)
    # Server-rendered pages for operators: not part of the API's OpenAPI contract.
    app.include_router(console or console_router(engine, login_limiter=app.state.login_limiter))
    return app


class _DocsStatic(StaticFiles):
    """The documentation's assets, with the documentation pages' headers."""

    async def get_response(self, path: str, scope: Any) -> Response:
        resp = await super().get_response(path, scope)
        resp.headers.update(DOCS_HEADERS)
        return resp


def _docs_page(page: HTMLResponse) -> tuple[bytes, dict[str, str]]:
    """`page`'s body, and the headers that keep it to its own files (DOCS_CSP)."""
    body = bytes(page.body)
    scripts = ["'self'"] + [
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _INLINE_SCRIPT.findall(body.decode())
    ]
    return body, {
        **DOCS_HEADERS,
        "Content-Security-Policy": DOCS_CSP.format(scripts=" ".join(scripts)),
    }


def _add_docs(app: FastAPI) -> None:
    app.mount(DOCS_STATIC, _DocsStatic(directory=DOCS_ASSETS), name="docs-static")
    favicon = f"{DOCS_STATIC}/favicon.png"
    openapi_url = app.openapi_url or "/openapi.json"
    # Built once: the pages never change while the app runs, nor do their scripts' hashes.
    swagger = _docs_page(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=favicon,
        )
    )
    redoc_page = _docs_page(
        get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger[0], headers=swagger[1])

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return HTMLResponse(redoc_page[0], headers=redoc_page[1])


def _error(
    status: int,
    code: ApiErrorCode,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...], body: Any = None, missing: bool = False) -> str:
    # Only the first element says where the value came from: a body field may be named
    # "path" or "query" itself. In a body, a union's branches show in the path by their
    # schema's tag ("constrained-str", "function-after[...]"): the path is walked through the
    # body as sent, and a step the value does not have is such a tag, unless it is the field
    # found missing.
    source = loc[0] if loc and loc[0] in ("body", "query", "path", "header") else None
    if source is not None:
        loc = loc[1:]
    if source != "body":
        return ".".join(str(p) for p in loc) or "body"
    kept: list[str] = []
    node = body
    for i, step in enumerate(loc):
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif not (missing and i == len(loc) - 1):
            continue
        kept.append(str(step))
    return ".".join(kept) or "body"


# The documented code of a field's refusal, where the request's model refuses it before a
# service could (README, "API error codes"); any other field: invalid_request.
_FIELD_CODES = {
    "amount": ApiErrorCode.invalid_amount,
    "expires_in_seconds": ApiErrorCode.invalid_expiry,
    "memo": ApiErrorCode.invalid_memo,
    "status": ApiErrorCode.invalid_status,
    "scope": ApiErrorCode.invalid_scope,
    "limit": ApiErrorCode.invalid_limit,
    "since": ApiErrorCode.invalid_time,
    "until": ApiErrorCode.invalid_time,
    "resolution": ApiErrorCode.invalid_resolution,
}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EngineError)
    async def engine_error(_: Request, e: EngineError) -> JSONResponse:
        headers = (
            {"WWW-Authenticate": "Bearer"} if e.status == 401 else getattr(e, "headers", None)
        )  # e.g. Retry-After on 429
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())), e.body, first.get("type") == "missing")
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            field, msg = "body", "not valid JSON"
        code = _FIELD_CODES.get(field, ApiErrorCode.invalid_request)
        return _error(422, code, f"{field}: {msg}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 400 and isinstance(e.__cause__, ValueError):
            # FastAPI's "error parsing the body": a body that is not UTF-8, or an integer the
            # parser refuses (over 4300 digits); the body is not JSON this API reads.
            return _error(
                422,
                ApiErrorCode.invalid_request,
                "body: not valid JSON (UTF-8 text, integers of at most 4300 digits)",
                "body",
            )
        if e.status_code == 400 and isinstance(e.__cause__, RecursionError):
            # The parser gave up on nesting BodyGuard's depth count should have refused first
            # (guards.MAX_JSON_DEPTH): the same refusal, never an undeclared 400.
            return _error(
                422,
                ApiErrorCode.body_too_deep,
                f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels",
                "body",
            )
        code = {404: ApiErrorCode.not_found, 405: ApiErrorCode.method_not_allowed}.get(
            e.status_code, ApiErrorCode.http_error
        )
        # Starlette's own headers stay: a 405 names the methods the route takes (Allow).
        return _error(e.status_code, code, str(e.detail), headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(e).__name__)  # the type only: no values logged
        # Not "nothing was applied": a request of several transactions (a proof's
        # submission stores the proof first) may have committed some before this one failed.
        return _error(
            500,
            ApiErrorCode.internal_error,
            "internal error; the request may have been applied in part: read the resource, "
            "or retry with the same Idempotency-Key",
        )

    @app.exception_handler(DatabaseError)
    @app.exception_handler(PoolTimeout)
    async def database_error(request: Request, e: DatabaseError | PoolTimeout) -> JSONResponse:
        if database_unavailable(e):
            # A restart or a failover: the database's answer, not a bug (no error logged as
            # one). A transaction cut mid-way rolled back, but an earlier one of the same
            # request may have committed (or this one, cut during its COMMIT): never
            # "nothing was changed". A retry is safe: with its Idempotency-Key it replays or
            # runs again (services.idempotency).
            log.warning("database unavailable: %s", type(e).__name__)
            return _error(
                503,
                ApiErrorCode.database_unavailable,
                "the database could not be reached; retry shortly (with the same "
                "Idempotency-Key): what was stored before the loss stays stored",
                headers={"Retry-After": "2"},
            )
        if not database_busy(e):
            return await unexpected(request, e)
        # A lock or statement timeout: the transaction rolled back, so retrying is safe.
        return _error(
            503,
            ApiErrorCode.database_busy,
            "the database is busy; nothing was changed, retry shortly",
            headers={"Retry-After": "2"},
        )
