"""The operator console: server-rendered pages under /console for staff.

A staff token is exchanged once (POST /console/login) for a signed, expiring session cookie
(console.auth); every page without a valid one answers 303 to the login page. Every form
carries a CSRF token and every POST checks it (403 otherwise), along with the request's
Origin / Sec-Fetch-Site when the browser sends them.

Actions call the same service functions as the staff API, with the same operator context
(audit.Operator(staff name, incident id, reason)): gate.dry_run_apply, gate.apply (Via.staff
for "apply", Via.staff_receipt for "create receipt"), rails_admin.set_paused and
rails_admin.approve. There is no second implementation of the gate. The console is stricter
than the API in one way: every state-changing action needs confirm, an incident id and a
reason.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from starlette.concurrency import run_in_threadpool

from verifier.core.engine import Engine
from verifier.core.errors import EngineError
from verifier.core.shown import blank, printable, unreadable
from verifier.http.console import charts
from verifier.http.console.auth import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_TTL_S,
    SESSION_COOKIE,
    ConsoleSession,
    Signer,
    derive_key,
    staff_for,
)
from verifier.http.ratelimit import (
    STAFF_SIGN_IN,
    Limiter,
    client_key,
    login_limiter_from_settings,
)
from verifier.services import (
    audit,
    console_sessions,
    gate,
    proofs,
    rails_admin,
    release_gates,
    reviews,
    sessions,
)
from verifier.services import console_reads as queries
from verifier.services.assurance import assurance_report

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024
PAGE_SIZE = 25  # proofs per page of the list
LOGIN_ENDPOINT = STAFF_SIGN_IN  # the logins' bucket, shared with the staff API's
log = logging.getLogger("railproof.console")
SECURITY_HEADERS = {
    # Everything the pages use is served from here: no inline script, no CDN.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
DONE = {
    "applied": "Applied: the receipt was created and the entitlement activated.",
    "already_applied": "Already applied: the proof's receipt exists (apply is idempotent).",
    "paused": "Rail paused: new sessions and proofs are refused, apply is blocked.",
    "resumed": "Rail resumed.",
    "approved": "Approved: the change is in effect.",
    "rejected": "Rejected: nothing of the change takes effect.",
    "credited": "Credited: the chain verified the transfer again; the proof is verified for "
    "its session and goes through the apply gate.",
    "released": "Released: the proof failed and holds its transfer no more.",
    "requested": "Requested: the change waits in Approvals for a second staff member.",
}
NAV = [
    ("health", "Health", "/console"),
    ("rails", "Rails", "/console/rails"),
    ("proofs", "Proofs", "/console/proofs"),
    ("approvals", "Approvals", "/console/approvals"),
    ("reconciliation", "Reconciliation", "/console/reconciliation"),
    ("assurance", "Assurance", "/console/assurance"),
]


class _Refusal(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_shown,
    )
    env.filters["as_typed"] = _as_typed
    return Jinja2Templates(env=env)


def _as_typed(value: object) -> Markup:
    # A form's value goes back exactly as the operator typed it (HTML-escaped only): one
    # shown with escapes would be submitted, and audited, with them.
    return escape(value)


def _shown(value: object) -> object:
    # SECURITY: autoescape stops HTML, not a tenant's memo holding U+202E or a zero-width
    # space, which a browser shows as another order's id: every value printed is escaped so
    # (markup the console built itself, a chart, is left as it is; line breaks collapse).
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, keep="\n\r\t")
    return value


def _reconciliation_module() -> Any:
    try:
        return importlib.import_module("verifier.services.reconciliation")
    except ImportError:
        return None


def console_router(
    engine: Engine,
    *,
    clock: Callable[[], float] = time.time,
    secure_cookies: bool | None = None,
    session_ttl_s: int | None = None,
    key: bytes | None = None,
    login_limiter: Limiter | None = None,
) -> APIRouter:
    """The console's routes, for the app: `app.include_router(console_router(engine))`.

    `secure_cookies`: None marks cookies Secure when every origin in RAILPROOF_CONSOLE_ORIGIN
    is https, else when the request came over https; True always (behind a TLS-terminating
    proxy), False never. `clock`: wall-clock seconds (tests)."""
    settings = engine.settings
    # The console's public origins, when a proxy in front hides them (RAILPROOF_CONSOLE_ORIGIN).
    origins = frozenset(settings.console_origin)
    if secure_cookies is None and origins and all(o.startswith("https://") for o in origins):
        secure_cookies = True
    logins = login_limiter or login_limiter_from_settings(settings, engine.metrics)
    signer = Signer(
        key or derive_key(settings.audit_key_bytes(), dict(settings.staff_tokens)),
        clock,
        **({"ttl_s": session_ttl_s} if session_ttl_s else {}),
    )
    templates = _templates()
    css = (HERE / "static" / "console.css").read_bytes()
    router = APIRouter(prefix="/console", include_in_schema=False)

    # -- helpers ----------------------------------------------------------------------------
    def secure(request: Request) -> bool:
        return request.url.scheme == "https" if secure_cookies is None else secure_cookies

    def set_session(resp: Response, request: Request, cs: ConsoleSession) -> None:
        resp.set_cookie(
            SESSION_COOKIE,
            signer.dump(cs),
            max_age=max(0, cs.expires_at - int(clock())),
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )

    def headers(resp: Response) -> Response:
        for k, v in SECURITY_HEADERS.items():
            resp.headers[k] = v
        return resp

    def current(request: Request) -> ConsoleSession | None:
        # SECURITY: another page on this host (another port, a sibling subdomain) can set a
        # cookie of the same name for another path or the parent domain, which the browser
        # sends beside the console's own, in an order the page can choose; Starlette keeps the
        # last one. Junk is ignored (no lock-out); two live sessions of different people are
        # no session at all: a planted one must never act under someone else's login.
        live: dict[str, ConsoleSession] = {}
        # Each distinct value once, a handful at most: a browser sends one per path and domain.
        for value in list(dict.fromkeys(cookie_values(request, SESSION_COOKIE)))[:MAX_COOKIES]:
            cs = signer.load(value)
            if cs is None or not staff_for(dict(settings.staff_tokens), cs):
                continue
            if queries.logged_out(engine, cs.sid):
                continue
            newest = live.get(cs.staff)
            if newest is None or cs.auth_at > newest.auth_at:
                live[cs.staff] = cs
        if len(live) > 1:
            # Which one is planted is not known: both end, on the record, so the planted value
            # is dead and the next login is the only session this browser holds.
            console_sessions.end_crossed(engine, [(cs.staff, cs.sid) for cs in live.values()])
            return None
        return next(iter(live.values()), None)

    def to_login(request: Request) -> Response:
        nxt = request.url.path if request.method == "GET" else "/console"
        if request.method == "GET" and request.url.query:
            nxt += "?" + request.url.query
        resp = RedirectResponse("/console/login?" + urlencode({"next": nxt}), status_code=303)
        # SECURITY: only a cookie this request carried, from this site: a cross-site link or
        # form arrives without the (SameSite=Strict) cookie, and its answer must not end the
        # session the operator holds in every other tab.
        carried = cookie_values(request, SESSION_COOKIE)
        if carried and request.headers.get("sec-fetch-site") != "cross-site":
            resp.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        clear_planted(resp, request)
        return headers(resp)

    def render(
        request: Request, cs: ConsoleSession | None, name: str, status: int = 200, **ctx: Any
    ) -> Response:
        # SECURITY: what an action did is said only when the session's action said it.
        done = signer.done_of(cs, request.query_params.get("done")) if cs else None
        ctx.setdefault("error", None)
        base = {
            "staff": cs.staff if cs else None,
            "csrf": signer.csrf_token(cs) if cs else "",
            "nav": NAV,
            "active": ctx.pop("active", ""),
            "done": DONE.get(done or ""),
            "expires_at": cs.expires_at if cs else None,
        }
        resp = templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)
        if cs is not None:
            renewed = signer.renewed(cs)
            if renewed is not None:
                set_session(resp, request, renewed)
        return headers(resp)

    def same_origin(request: Request) -> bool:
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            if origin_matches(request, origin):
                return True
            log.warning(
                "console form refused: its Origin is not the console's (a proxy in front "
                "needs RAILPROOF_CONSOLE_ORIGIN)",
                extra={
                    "origin": printable(origin[:200]),
                    "expected": sorted(origins) or [printable(own_origin(request)[:200])],
                },
            )
            return False
        return origin != "null"

    def own_origin(request: Request) -> str:
        return f"{request.url.scheme}://{request.headers.get('host', '')}"

    def origin_matches(request: Request, origin: str) -> bool:
        # SECURITY: a form posted from another site names that site as its Origin. The
        # console's own is the configured public origin when there is one (a proxy may send
        # its upstream's address as Host, or speak http to us for an https page), else the
        # scheme and Host this request came with: never both, never looser.
        if origins:
            return origin.lower() in origins
        return origin == own_origin(request)

    def origin_refusal(request: Request) -> str | None:
        """What to tell an operator whose form came from a page of another origin than the
        console believes is its own: the usual cause is a proxy in front, not an attack."""
        origin = request.headers.get("origin")
        if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
            return None
        if origin is None or origin == "null" or origin_matches(request, origin):
            return None
        return (
            "This form's Origin is not the address this console knows as its own, so nothing "
            "was done. Behind a reverse proxy that sends another Host or terminates TLS, set "
            "RAILPROOF_CONSOLE_ORIGIN to the address operators open (e.g. "
            "https://ops.example.com); otherwise reload the page and try again."
        )

    async def read_form(request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if ctype != "application/x-www-form-urlencoded" or len(body) > MAX_FORM_BYTES:
            raise _Refusal(415, "forms are posted as application/x-www-form-urlencoded")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise _Refusal(400, "the form is not UTF-8") from None
        form: dict[str, str] = {}
        for k, v in pairs:
            if "\x00" in v or "\x00" in k:
                raise _Refusal(422, f"{k}: must not contain NUL characters")
            form.setdefault(k, v)
        return form

    async def authed_post(request: Request) -> tuple[ConsoleSession, dict[str, str]] | Response:
        """The session and form of a POST, or the answer refusing it (303 without a session,
        403 without the session's CSRF token or from another origin)."""
        cs = await run_in_threadpool(current, request)
        if cs is None:
            return to_login(request)
        try:
            form = await read_form(request)
        except _Refusal as r:
            return refused(request, cs, r.status, r.message)
        if not same_origin(request) or not signer.csrf_ok(cs, form.get("csrf_token")):
            return refused(
                request,
                cs,
                403,
                origin_refusal(request)
                or "CSRF check failed: reload the page and submit the form again. Nothing was "
                "changed.",
            )
        return cs, form

    async def act(
        request: Request,
        do: Callable[[dict[str, str], audit.Operator], Any],
        path: str,
        done: str,
    ) -> Response:
        """A state-changing form: session, CSRF and the operator context (confirm, incident,
        reason) first, then `do` off the event loop, then back to `path` saying `done`; a refusal
        renders the page that says why, and nothing was done."""
        got = await authed_post(request)
        if isinstance(got, Response):
            return got
        cs, form = got
        try:
            op = operator(cs, form, required=True)
            await run_in_threadpool(do, form, op)
        except _Refusal as r:
            return refused(request, cs, r.status, r.message)
        except EngineError as e:
            return refused(request, cs, e.status, e.message)
        return back(cs, path, done)

    def back(cs: ConsoleSession, path: str, done: str) -> Response:
        """303 to `path`, whose page says what was `done` (signed for this session)."""
        url = f"{path}?{urlencode({'done': signer.done_mark(cs, done)})}"
        return headers(RedirectResponse(url, status_code=303))

    def refused(request: Request, cs: ConsoleSession | None, status: int, message: str) -> Response:
        return render(request, cs, "error.html", status=status, title="Refused", message=message)

    def operator(cs: ConsoleSession, form: dict[str, str], required: bool) -> audit.Operator:
        incident = form.get("incident_id", "").strip()
        reason = form.get("operator_reason", "").strip()
        if len(incident) > 128 or len(reason) > 1000:
            raise _Refusal(422, "incident id: at most 128 characters; reason: at most 1000")
        problems = []
        # The same rules as the API's (services.audit): an incident id that can be searched
        # for, and neither it nor the reason blank once invisible characters are removed.
        if unreadable(incident):
            problems.append(
                "write the incident id without control, invisible or line-break characters"
            )
        if required:
            if form.get("confirm") != "yes":
                problems.append("tick confirm")
            if blank(incident):
                problems.append("give the incident id")
            if blank(reason):
                problems.append("give a reason")
        if problems:
            raise _Refusal(422, "Nothing was done: " + ", ".join(problems) + ".")
        return audit.Operator(cs.staff, incident or None, reason or None)

    # -- static -----------------------------------------------------------------------------
    @router.get("/static/console.css")
    def stylesheet() -> Response:
        return Response(
            css,
            media_type="text/css",
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    # -- login / logout ----------------------------------------------------------------------
    def login_page(
        request: Request, status: int = 200, error: str | None = None, nxt: str | None = None
    ) -> Response:
        nonce = signer.login_nonce()
        nxt = nxt or request.query_params.get("next", "/console")
        resp = render(
            request,
            None,
            "login.html",
            status=status,
            error=error,
            login_csrf=signer.login_csrf(nonce),
            next=_safe_next(nxt),
        )
        clear_planted(resp, request)
        resp.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=LOGIN_TTL_S,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return resp

    @router.get("/login")
    def login_form(request: Request) -> Response:
        return login_page(request)

    @router.post("/login")
    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
        except _Refusal as r:
            return login_page(request, r.status, r.message)
        nxt = form.get("next")
        given = form.get("csrf_token")
        if not same_origin(request) or not any(
            signer.login_csrf_ok(nonce, given)
            for nonce in cookie_values(request, LOGIN_COOKIE)[:MAX_COOKIES]
        ):
            return login_page(
                request,
                403,
                origin_refusal(request)
                or "The login form expired or did not come from this console: try again.",
                nxt,
            )
        # SECURITY: guessing staff tokens is bounded per client address: every try takes
        # from the address's bucket before the token is read (so tries sent at once cannot
        # all pass a check made before any of them counted), and past the bound every login
        # from there is refused, a right token too, until the tries age out; only a right
        # token of a staff member listed in RAILPROOF_STAFF_LOCKOUT_EXEMPT still signs in.
        client = client_key(request.client.host if request.client else None)
        wait = await run_in_threadpool(logins.take, client, LOGIN_ENDPOINT)
        token = form.get("token", "")
        # Both read for every token, so a refusal costs the same whatever was sent.
        staff = settings.staff_name(token) if token else None
        exempt = bool(token) and settings.lockout_exempt(token)
        if wait > 0 and not exempt:
            after = max(1, math.ceil(wait))
            log.warning("console login refused: too many tries", extra={"client": client})
            resp = login_page(
                request,
                429,
                f"Too many logins from this address: try again in {after} s.",
                nxt,
            )
            resp.headers["Retry-After"] = str(after)
            return resp
        if staff is None:
            log.warning("console login refused: not a staff token", extra={"client": client})
            # SECURITY: a service token is not a staff token: the same answer as an unknown one.
            return login_page(request, 401, "Not a staff token.", nxt)
        cs = signer.new_session(staff, token)
        await run_in_threadpool(console_sessions.record_login, engine, staff, cs.sid)
        resp = RedirectResponse(_safe_next(form.get("next", "/console")), status_code=303)
        set_session(resp, request, cs)
        resp.delete_cookie(
            LOGIN_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure(request)
        )
        return headers(resp)

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        got = await authed_post(request)
        if isinstance(got, Response):
            return got
        cs, _ = got
        await run_in_threadpool(console_sessions.record_logout, engine, cs.staff, cs.sid)
        resp = RedirectResponse("/console/login", status_code=303)
        resp.delete_cookie(
            SESSION_COOKIE,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return headers(resp)

    # -- health ------------------------------------------------------------------------------
    @router.get("")
    @router.get("/health")
    def health(request: Request) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        h = queries.health(engine)
        figs = [
            charts.stacked_bars(
                "Proofs per hour by status (last 24 h, UTC)", h["hour_labels"], h["per_hour"]
            ),
            charts.hbars("Failures by code (last 7 days)", h["failures"], series="failed"),
            charts.hbars("Pending proofs by age", h["pending_age"], series="pending"),
            charts.stacked_bars(
                "Webhook dead letters per day (last 14 days)",
                h["day_labels"],
                {"dead_letter": h["dead_letters"]},
            ),
        ]
        return render(request, cs, "health.html", active="health", h=h, charts=figs)

    # -- rails -------------------------------------------------------------------------------
    @router.get("/rails")
    def rails_page(request: Request) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        ready = {r["rail_id"]: r for r in rails_admin.rail_readiness(engine)}
        rails = [
            {
                **r,
                "readiness": ready.get(r["rail_id"], {}),
                "gates": release_gates.gate_status(engine, r["rail_id"]),
            }
            for r in rails_admin.list_rails(engine)
        ]
        history = queries.recent_audit(engine, ("rail.paused", "rail.resumed"), 10)
        return render(request, cs, "rails.html", active="rails", rails=rails, history=history)

    async def change_request(request: Request, rail_id: str, kind: str) -> Response:
        """A production or treasury change asked for from the console: it waits in the
        approval queue for a second staff member, as one asked for by CLI or API does."""

        def request_change(form: dict[str, str], op: audit.Operator) -> None:
            if kind == "production":
                value = {"enable": "true", "disable": "false"}.get(form.get("production", ""))
                if value is None:
                    raise _Refusal(422, "production: choose enable or disable")
            else:
                value = form.get("treasury", "").strip()
                if not value:
                    raise _Refusal(422, "treasury: the new treasury address is required")
            rails_admin.request_change(engine, rail_id, kind, value, op)

        return await act(request, request_change, "/console/approvals", "requested")

    @router.post("/rails/{rail_id}/production/request")
    async def request_production(request: Request, rail_id: str) -> Response:
        return await change_request(request, rail_id, "production")

    @router.post("/rails/{rail_id}/treasury/request")
    async def request_treasury(request: Request, rail_id: str) -> Response:
        return await change_request(request, rail_id, "treasury")

    async def rail_action(request: Request, rail_id: str, paused: bool) -> Response:
        return await act(
            request,
            lambda _, op: rails_admin.set_paused(engine, rail_id, paused, op),
            "/console/rails",
            "paused" if paused else "resumed",
        )

    @router.post("/rails/{rail_id}/pause")
    async def pause(request: Request, rail_id: str) -> Response:
        return await rail_action(request, rail_id, True)

    @router.post("/rails/{rail_id}/resume")
    async def resume(request: Request, rail_id: str) -> Response:
        return await rail_action(request, rail_id, False)

    # -- proofs ------------------------------------------------------------------------------
    @router.get("/proofs")
    def proofs_page(request: Request) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        qp = request.query_params
        status = qp.get("status") or None
        if status not in (None, *queries.PROOF_STATUSES):
            status = None
        page = qp.get("page", "1")
        f = queries.ProofFilter(
            status=status,
            rail_id=(qp.get("rail_id") or None),
            failure_code=(qp.get("failure_code") or None),
            owner_id=(qp.get("owner_id") or None),
            older_than=(qp.get("older_than") if qp.get("older_than") in queries.AGES else None),
            q=(qp.get("q") or "")[:200] or None,
            # ASCII digits only: `"²".isdigit()` is true, and int() refuses it.
            page=int(page) if page.isascii() and page.isdigit() and 0 < int(page) < 100_000 else 1,
        )
        rows, more = queries.list_proofs(engine, f, PAGE_SIZE)
        args = {
            k: v
            for k, v in (
                ("status", f.status),
                ("rail_id", f.rail_id),
                ("failure_code", f.failure_code),
                ("owner_id", f.owner_id),
                ("older_than", f.older_than),
                ("q", f.q),
            )
            if v
        }
        prev_url = (
            "/console/proofs?" + urlencode({**args, "page": f.page - 1}) if f.page > 1 else None
        )
        next_url = "/console/proofs?" + urlencode({**args, "page": f.page + 1}) if more else None
        return render(
            request,
            cs,
            "proofs.html",
            active="proofs",
            rows=rows,
            f=f,
            statuses=queries.PROOF_STATUSES,
            rails=sorted(engine.catalog.rails),
            codes=queries.failure_codes(engine),
            ages=list(queries.AGES),
            prev_url=prev_url,
            next_url=next_url,
        )

    def proof_context(proof_id: str) -> dict[str, Any]:
        p = proofs.get_proof(engine, proof_id, None)
        attempts = proofs.list_attempts(engine, proof_id)
        for a in attempts:
            a["observed"] = queries.redact(a.get("observed") or {})
        evidence = proofs.list_evidence(engine, proof_id)
        sess = sessions.get_session(engine, p["session_id"], None)
        sess.pop("payment_requirements", None)
        receipt, ent = queries.receipt_and_entitlement(engine, proof_id, p["session_id"])
        subjects = [proof_id, p["session_id"]] + [x["id"] for x in (receipt, ent) if x]
        return {
            "p": p,
            "attempts": attempts,
            "evidence": evidence,
            "session": sess,
            "receipt": receipt,
            "entitlement": ent,
            "trail": queries.audit_trail(engine, subjects),
            "stage": engine.catalog.rails[p["rail_id"]].stage.value
            if p["rail_id"] in engine.catalog.rails
            else "unknown",
        }

    def proof_page(
        request: Request, cs: ConsoleSession, proof_id: str, status: int = 200, **extra: Any
    ) -> Response:
        try:
            ctx = proof_context(proof_id)
        except EngineError as e:
            return refused(request, cs, e.status, e.message)
        return render(
            request,
            cs,
            "proof.html",
            status=status,
            active="proofs",
            report=extra.pop("report", None),
            form=extra.pop("form", {}),
            **ctx,
            **extra,
        )

    @router.get("/proofs/{proof_id}")
    def proof_detail(request: Request, proof_id: str) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        return proof_page(request, cs, proof_id)

    @router.post("/proofs/{proof_id}/dry-run")
    async def dry_run(request: Request, proof_id: str) -> Response:
        got = await authed_post(request)
        if isinstance(got, Response):
            return got
        cs, form = got
        via = gate.Via.staff_receipt if form.get("path") == "receipt" else gate.Via.staff
        try:
            op = operator(cs, form, required=False)
            report = await run_in_threadpool(gate.dry_run_apply, engine, proof_id, op, via)
        except _Refusal as r:
            return refused(request, cs, r.status, r.message)
        except EngineError as e:
            return refused(request, cs, e.status, e.message)
        page = partial(
            proof_page,
            request,
            cs,
            proof_id,
            report={**report, "path": via.value},
            form={"incident_id": op.incident_id or "", "operator_reason": op.reason or ""},
        )
        return await run_in_threadpool(page)

    async def apply_action(request: Request, proof_id: str, via: gate.Via) -> Response:
        got = await authed_post(request)
        if isinstance(got, Response):
            return got
        cs, form = got
        keep = {
            "incident_id": form.get("incident_id", ""),
            "operator_reason": form.get("operator_reason", ""),
        }
        try:
            op = operator(cs, form, required=True)
            result = await run_in_threadpool(gate.apply, engine, proof_id, op, via)
        except (_Refusal, EngineError) as err:
            report = err.extra.get("report") if isinstance(err, EngineError) else None
            page = partial(
                proof_page,
                request,
                cs,
                proof_id,
                status=err.status,
                error=err.message,
                form=keep,
                report={**report, "path": via.value} if report else None,
            )
            return await run_in_threadpool(page)
        done = "already_applied" if result.get("already_applied") else "applied"
        return back(cs, f"/console/proofs/{quote(proof_id, safe='')}", done)

    @router.post("/proofs/{proof_id}/apply")
    async def apply(request: Request, proof_id: str) -> Response:
        return await apply_action(request, proof_id, gate.Via.staff)

    @router.post("/proofs/{proof_id}/receipt")
    async def receipt(request: Request, proof_id: str) -> Response:
        return await apply_action(request, proof_id, gate.Via.staff_receipt)

    @router.post("/proofs/{proof_id}/review")
    async def review(request: Request, proof_id: str) -> Response:
        """A proof held for review: credit it to its session or release its transfer
        (services.reviews); a refusal is shown on the proof's page."""
        got = await authed_post(request)
        if isinstance(got, Response):
            return got
        cs, form = got
        keep = {k: form.get(k, "") for k in ("incident_id", "operator_reason")}
        try:
            decision = reviews.Decision(form.get("decision", ""))
        except ValueError:
            return refused(request, cs, 422, "decision: credit or release")
        try:
            op = operator(cs, form, required=True)
            await run_in_threadpool(reviews.resolve_review, engine, proof_id, decision, op)
        except (_Refusal, EngineError) as err:
            page = partial(
                proof_page, request, cs, proof_id, status=err.status, error=err.message, form=keep
            )
            return await run_in_threadpool(page)
        done = "credited" if decision is reviews.Decision.credit else "released"
        return back(cs, f"/console/proofs/{quote(proof_id, safe='')}", done)

    # -- approvals ---------------------------------------------------------------------------
    @router.get("/approvals")
    def approvals_page(request: Request) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        rows = rails_admin.list_approvals(engine)
        now = engine.now()
        for a in rows:
            a["age"] = queries.age_text(now, a["created_at"])
        return render(
            request,
            cs,
            "approvals.html",
            active="approvals",
            pending=[a for a in rows if a["status"] == "pending"],
            decided=[a for a in rows if a["status"] != "pending"][:50],
        )

    @router.post("/approvals/{approval_id}/approve")
    async def approve(request: Request, approval_id: str) -> Response:
        return await act(
            request,
            lambda _, op: rails_admin.approve(engine, approval_id, op),
            "/console/approvals",
            "approved",
        )

    @router.post("/approvals/{approval_id}/reject")
    async def reject(request: Request, approval_id: str) -> Response:
        return await act(
            request,
            lambda _, op: rails_admin.reject(engine, approval_id, op),
            "/console/approvals",
            "rejected",
        )

    # -- reconciliation and assurance --------------------------------------------------------
    def reconciliation_page(
        request: Request,
        cs: ConsoleSession,
        status: int = 200,
        run: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Response:
        rec = _reconciliation_module()
        runs = rec.list_runs(engine, None, 50) if rec is not None else None
        if run is not None:
            run = {
                **run,
                "findings": [
                    {**f, "subjects": queries.redact(f.get("subjects") or {})}
                    for f in run.get("findings", [])
                ],
            }
        return render(
            request,
            cs,
            "reconciliation.html",
            status=status,
            active="reconciliation",
            available=rec is not None,
            runs=runs,
            run=run,
            scopes=["rail_proofs", "chain_inflows"],
            rails=sorted(engine.catalog.rails),
            report=assurance_report(engine),
            form=extra.pop("form", {}),
            **extra,
        )

    @router.get("/reconciliation")
    def reconciliation(request: Request) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        return reconciliation_page(request, cs)

    @router.get("/reconciliation/runs/{run_id}")
    def reconciliation_run(request: Request, run_id: str) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        rec = _reconciliation_module()
        if rec is None:
            return refused(request, cs, 404, "reconciliation runs are not available in this build")
        try:
            run = rec.get_run(engine, run_id)
        except EngineError as e:
            return refused(request, cs, e.status, e.message)
        return reconciliation_page(request, cs, run=run)

    @router.post("/reconciliation/runs")
    async def start_reconciliation(request: Request) -> Response:
        """A dry run only (it persists its findings, repairs nothing): applying repairs stays
        with the staff API and CLI, behind their confirm."""
        got = await authed_post(request)
        if isinstance(got, Response):
            return got
        cs, form = got
        rec = _reconciliation_module()
        if rec is None:
            return refused(request, cs, 404, "reconciliation runs are not available in this build")
        keep = {k: form.get(k, "") for k in ("incident_id", "operator_reason", "scope", "rail_id")}
        try:
            op = operator(cs, form, required=False)
            if not op.incident_id or not op.reason:
                raise _Refusal(
                    422,
                    "Nothing was done: give the incident id and a reason "
                    "(every run, dry runs too, is on the record).",
                )
            req = rec.RunRequest(
                scope=form.get("scope", ""),
                incident_id=op.incident_id,
                operator_reason=op.reason,
                rail_id=form.get("rail_id") or None,
                apply=False,
                confirm=False,
            )
            run = await run_in_threadpool(rec.run, engine, req, cs.staff)
        except (_Refusal, EngineError) as err:
            page = partial(
                reconciliation_page, request, cs, err.status, error=err.message, form=keep
            )
            return await run_in_threadpool(page)
        return headers(
            RedirectResponse(f"/console/reconciliation/runs/{run['id']}", status_code=303)
        )

    @router.get("/assurance")
    def assurance_page(request: Request) -> Response:
        cs = current(request)
        if cs is None:
            return to_login(request)
        return render(
            request, cs, "assurance.html", active="assurance", report=assurance_report(engine)
        )

    return router


MAX_COOKIES = 8  # values of one console cookie name read from a request


def cookie_values(request: Request, name: str) -> list[str]:
    """Every value of cookie `name` the request carries (a browser sends one per path and
    domain it was set for; Starlette's own parsing keeps only the last)."""
    return [
        value
        for part in ";".join(request.headers.getlist("cookie")).split(";")
        for key, eq, value in [part.strip().partition("=")]
        if eq and key == name
    ]


# A path as the browser sent it (percent-encoded), fit for a Set-Cookie Path attribute: no
# ';' or ',' (a new attribute or cookie), no space, control or non-ASCII byte (a header is
# Latin-1, and a browser never sends such a path raw).
_COOKIE_PATH_SAFE = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+=:@%/]*")


def planted_paths(request: Request) -> set[str]:
    """Where to expire planted cookie names: the host's root and the page asked for, in the
    form the browser matches cookie paths against (the raw, percent-encoded path). A path
    that cannot be written into an attribute as it is gets the root only."""
    raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    page = raw.decode("latin-1")
    return {"/", page} if _COOKIE_PATH_SAFE.fullmatch(page) else {"/"}


def clear_planted(resp: Response, request: Request) -> None:
    """Expire the console's cookie names where another page could have planted them, so the
    next login works: the host's root and the page asked for (deleting needs the same path;
    the console's own cookies, at its path, are left alone)."""
    for path in planted_paths(request):
        if path != COOKIE_PATH:
            for name in (SESSION_COOKIE, LOGIN_COOKIE):
                resp.delete_cookie(name, path=path)


def _safe_next(nxt: str) -> str:
    # Only a console path of this site: never an absolute or scheme-relative URL.
    if not nxt.startswith("/console") or nxt.startswith("//") or "\\" in nxt:
        return "/console"
    return nxt
