"""The HTTP API (FastAPI): thin handlers over the engine's services.

Service endpoints take a service bearer token bound to the owners it may act for; anything
else answers 404 and counts as an owner-isolation denial. Staff endpoints (/v1/admin) take a
staff token. Errors are always {"error": {"code", "message", "field"?}}, never a trace.
"""


import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from verifier.services import audit, gate, idempotency, proofs, rails_admin, sessions
from verifier.services.assurance import assurance_report
from verifier.http.guards import BodyGuard, InputGuard, control_field, encodable_object
from verifier.core.engine import Engine
from verifier.core.errors import BadInput, EngineError, NotFound
from verifier.core.metrics import spec_document
from verifier.http.ratelimit import RateLimiter
from verifier.storage.db import is_busy
from verifier.storage.models import AuditEvent, Entitlement
from verifier.core.timeutil import iso
from verifier.services.views import entitlement_view
from verifier.http.webhook_routes import webhook_router

log = logging.getLogger("railproof.api")
MAX_BODY_BYTES = 64 * 1024
MAX_AMOUNT = 2**63 - 1


def parse_amount(v: Any) -> int:
    # Amounts are integers of base units: an int, or a string of digits. Never a float.
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError("must be an integer of base units (no decimals), e.g. 1500000")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and v.isascii() and v.isdigit():
        n = int(v)
    else:
        raise ValueError("must be an integer of base units or a string of digits")
    if not 0 < n <= MAX_AMOUNT:
        raise ValueError("must be a positive integer of base units")
    return n


Amount = Annotated[int, BeforeValidator(parse_amount)]
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionIn(Body):
    owner_id: Id
    rail_id: Annotated[str, Field(min_length=1, max_length=64)]
    access_product_id: Id
    amount: Amount
    recipient: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    reference: Annotated[str, Field(min_length=1, max_length=128)] | None = sessions.AUTO
    payer: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    memo: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    expires_in_seconds: Annotated[int, Field(gt=0, le=30 * 24 * 3600, strict=True)] | None = None


class ProofIn(Body):
    session_id: Annotated[str, Field(min_length=1, max_length=64)]
    proof: Annotated[Annotated[str, Field(min_length=1, max_length=proofs.MAX_PROOF_BYTES)]
                     | dict[str, Any], AfterValidator(encodable_object)]
    proof_type: Literal["solana_tx_signature", "evm_tx_hash", "x402_payment_payload",
                        "tron_tx_id"] | None = None


class OperatorIn(Body):
    incident_id: Annotated[str, Field(max_length=128)] | None = None
    operator_reason: Annotated[str, Field(max_length=1000)] | None = None


class DryRunIn(OperatorIn):
    path: Literal["apply", "receipt"] = "apply"  # which staff path to evaluate


class ConfirmIn(OperatorIn):
    # Strict: only JSON true confirms; "yes", 1 or "on" are refused, not read as true.
    confirm: StrictBool = False


class ProductionIn(OperatorIn):
    enable: StrictBool


class TreasuryIn(OperatorIn):
    treasury: Annotated[str, Field(min_length=1, max_length=128)]


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer ") or not authorization[7:]:
        raise EngineError("unauthorized", "Authorization: a Bearer token is required",
                          field="Authorization")
    return authorization[7:]


class Unauthorized(EngineError):
    status = 401


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def clean_path_params(request: Request) -> None:
    # Ids never hold control characters, and PostgreSQL text cannot hold NUL (%00).
    field = control_field(request.path_params)
    if field is not None:
        raise BadInput("invalid_request", f"{field}: must not contain control characters",
                       field=field)


def create_app(engine: Engine) -> FastAPI:
    # clean_path_params runs first on every route (included routers too), before auth.
    app = FastAPI(title="railproof", version="0.1.0",
                  description="Rail-proof verification engine for on-chain payments",
                  dependencies=[Depends(clean_path_params)])
    app.state.engine = engine
    app.state.rate_limiter = RateLimiter.from_settings(engine.settings)
    app.add_middleware(BodyGuard, max_bytes=MAX_BODY_BYTES)  # chunked, deep, NUL in bodies
    app.add_middleware(InputGuard)  # control characters in query and headers

    def service_owners(authorization: Annotated[str | None, Header()] = None) -> tuple[str, list[str]]:
        token = _bearer_or_401(authorization)
        owners = engine.settings.service_owners(token)
        if owners is None:
            raise Unauthorized("unauthorized", "Authorization: unknown service token",
                               field="Authorization")
        return "svc:" + ",".join(sorted(owners)), owners

    def staff(request: Request, authorization: Annotated[str | None, Header()] = None,
              incident: Annotated[str | None, Header(alias="X-Incident-Id", max_length=128)] = None,
              reason: Annotated[str | None, Header(alias="X-Operator-Reason", max_length=1000)] = None) -> str:
        token = _bearer_or_401(authorization)
        name = engine.settings.staff_name(token)
        if name is None:
            raise Unauthorized("unauthorized", "Authorization: unknown staff token",
                               field="Authorization")
        if request.method == "GET" and (incident or reason):
            # Operator context travels with reads too, so an inspection during an incident
            # is on the record next to the actions it led to.
            with engine.db.tx() as s:
                audit.append(s, engine.now(), audit.Operator(name, incident, reason),
                             "staff.read", "path", request.url.path[:128])
        return name

    def _bearer_or_401(authorization: str | None) -> str:
        try:
            return _bearer(authorization)
        except EngineError as e:
            raise Unauthorized(e.code, e.message, field=e.field) from None

    Service = Annotated[tuple[str, list[str]], Depends(service_owners)]
    Staff = Annotated[str, Depends(staff)]
    IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]

    def limited(endpoint: str):
        # After auth (the Service dependency is shared and cached): 401 comes before 429.
        def check(request: Request, svc: Service) -> None:
            request.app.state.rate_limiter.check(svc[0], endpoint)
        return [Depends(check)]

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return JSONResponse({"error": {"code": "body_too_large", "message":
                                           f"body: larger than {MAX_BODY_BYTES} bytes",
                                           "field": "body"}}, status_code=413)
        return await call_next(request)

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, e: EngineError):
        headers = ({"WWW-Authenticate": "Bearer"} if e.status == 401
                   else getattr(e, "headers", None))  # e.g. Retry-After on 429
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            field, msg = "body", "not valid JSON"
        return JSONResponse({"error": {"code": "invalid_request", "message": f"{field}: {msg}",
                                       "field": field}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(e.detail)}},
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception):
        log.error("unhandled error: %s", type(e).__name__)
        return JSONResponse({"error": {"code": "internal_error",
                                       "message": "internal error; nothing was applied"}},
                            status_code=500)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, e: DBAPIError):
        if not is_busy(e):
            return await unexpected(request, e)
        # A lock or statement timeout: the transaction rolled back, so retrying is safe.
        return JSONResponse({"error": {"code": "database_busy", "message":
                                       "the database is busy; nothing was changed, retry shortly"}},
                            status_code=503, headers={"Retry-After": "2"})

    def reply(status_body: tuple[int, Any]) -> JSONResponse:
        status, body = status_body
        return JSONResponse(body, status_code=status)

    # -- health and metrics ----------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "chain": engine.settings.chain}

    @app.get("/metrics")
    def metrics() -> Response:
        from verifier.services.assurance import refresh_gauges
        refresh_gauges(engine)
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    # -- service ---------------------------------------------------------------------------
    @app.post("/v1/payment-sessions", status_code=201,
              dependencies=limited("POST /v1/payment-sessions"))
    def create_session(body: SessionIn, svc: Service, key: IdemKey = None) -> JSONResponse:
        principal, owners = svc

        def work() -> tuple[int, Any]:
            if body.owner_id not in owners:
                engine.metrics.inc("owner_isolation_denials_total", reason="session_create")
                raise NotFound("owner_not_found", f"owner_id: {body.owner_id!r} is not an "
                               "owner this token acts for")
            req = sessions.NewSession(**body.model_dump())
            return 201, sessions.open_session(engine, req, actor=principal)

        return reply(idempotency.run_idempotent(engine, principal, "POST /v1/payment-sessions",
                                                key, body.model_dump(mode="json"), work))

    @app.get("/v1/payment-sessions/{session_id}")
    def read_session(session_id: str, svc: Service) -> dict[str, Any]:
        return sessions.get_session(engine, session_id, svc[1])

    @app.post("/v1/proofs", status_code=201, dependencies=limited("POST /v1/proofs"))
    def submit(body: ProofIn, svc: Service, key: IdemKey = None) -> JSONResponse:
        principal, owners = svc

        def work() -> tuple[int, Any]:
            view, created = proofs.submit_proof(engine, body.session_id, body.proof, owners,
                                                body.proof_type, actor=principal)
            return (201 if created else 200), view

        return reply(idempotency.run_idempotent(engine, principal, "POST /v1/proofs", key,
                                                body.model_dump(mode="json"), work))

    @app.get("/v1/proofs/{proof_id}")
    def read_proof(proof_id: str, svc: Service) -> dict[str, Any]:
        return proofs.get_proof(engine, proof_id, svc[1])

    @app.get("/v1/entitlements")
    def entitlements(svc: Service, owner_id: Annotated[str, Query(min_length=1)]) -> list[dict[str, Any]]:
        if owner_id not in svc[1]:
            engine.metrics.inc("owner_isolation_denials_total", reason="entitlements")
            raise NotFound("owner_not_found", f"owner_id: {owner_id!r} is not an owner this "
                           "token acts for", field="owner_id")
        with engine.db.tx() as s:
            rows = s.query(Entitlement).filter(Entitlement.owner_id == owner_id) \
                .order_by(Entitlement.created_at).all()
            return [entitlement_view(e) for e in rows]

    # -- staff: reads ------------------------------------------------------------------------
    @app.get("/v1/admin/rails")
    def admin_rails(_: Staff) -> list[dict[str, Any]]:
        return rails_admin.list_rails(engine)

    @app.get("/v1/admin/rails/readiness")
    def admin_readiness(_: Staff) -> list[dict[str, Any]]:
        return rails_admin.rail_readiness(engine)

    @app.get("/v1/admin/proof-contracts")
    def admin_contracts(_: Staff, rail_id: str | None = None) -> list[dict[str, Any]]:
        return rails_admin.contracts(engine, rail_id)

    @app.get("/v1/admin/proofs")
    def admin_proofs(_: Staff, rail_id: str | None = None,
                     status: Literal["verified", "failed", "pending", "requires_review"] | None = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return proofs.list_proofs(engine, rail_id, status, limit)

    @app.get("/v1/admin/proofs/{proof_id}")
    def admin_proof(proof_id: str, _: Staff) -> dict[str, Any]:
        return proofs.get_proof(engine, proof_id, None)

    @app.get("/v1/admin/proofs/{proof_id}/attempts")
    def admin_attempts(proof_id: str, _: Staff) -> list[dict[str, Any]]:
        return proofs.list_attempts(engine, proof_id)

    @app.get("/v1/admin/proofs/{proof_id}/settlement-evidence")
    def admin_evidence(proof_id: str, _: Staff) -> list[dict[str, Any]]:
        return proofs.list_evidence(engine, proof_id)

    @app.get("/v1/admin/idempotency-claims/stuck")
    def admin_stuck(_: Staff, min_age_seconds: Annotated[int | None,  # ≤ 10 years: a
                    Query(ge=0, le=315_360_000)] = None):  # bigger one overflows datetime
        return idempotency.stuck_claims(engine, min_age_seconds)

    @app.get("/v1/admin/approvals")
    def admin_approvals(_: Staff) -> list[dict[str, Any]]:
        return rails_admin.list_approvals(engine)

    @app.get("/v1/admin/audit")
    def admin_audit(_: Staff, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    subject_id: str | None = None) -> list[dict[str, Any]]:
        with engine.db.tx() as s:
            q = s.query(AuditEvent)
            if subject_id:
                q = q.filter(AuditEvent.subject_id == subject_id)
            rows = q.order_by(AuditEvent.id.desc()).limit(limit).all()
            return [{"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action,
                     "subject_type": e.subject_type, "subject_id": e.subject_id,
                     "data": e.data, "incident_id": e.incident_id, "reason": e.reason,
                     "hash": e.hash} for e in rows]

    @app.get("/v1/admin/audit/verify")
    def admin_audit_verify(_: Staff) -> dict[str, Any]:
        with engine.db.tx() as s:
            return audit.verify_chain(s).as_dict()

    @app.get("/v1/admin/assurance")
    def admin_assurance(_: Staff) -> dict[str, Any]:
        return assurance_report(engine)

    @app.get("/v1/admin/observability/spec")
    def admin_spec(_: Staff) -> dict[str, Any]:
        return spec_document()

    # -- staff: actions ----------------------------------------------------------------------
    def op(actor: str, body: OperatorIn) -> audit.Operator:
        return audit.Operator(actor, body.incident_id, body.operator_reason)

    def confirmed(body: ConfirmIn) -> None:
        if not body.confirm:
            raise BadInput("confirmation_required", "confirm: must be true for this action",
                           field="confirm")

    @app.post("/v1/admin/proofs/{proof_id}/dry-run-apply")
    def admin_dry_run(proof_id: str, actor: Staff, body: DryRunIn | None = None):
        body = body or DryRunIn()
        via = gate.Via.staff_receipt if body.path == "receipt" else gate.Via.staff
        return gate.dry_run_apply(engine, proof_id, op(actor, body), via)

    @app.post("/v1/admin/proofs/{proof_id}/apply")
    def admin_apply(proof_id: str, body: ConfirmIn, actor: Staff):
        confirmed(body)
        return gate.apply(engine, proof_id, op(actor, body), gate.Via.staff)

    @app.post("/v1/admin/proofs/{proof_id}/receipt")
    def admin_receipt(proof_id: str, body: ConfirmIn, actor: Staff):
        confirmed(body)
        return gate.apply(engine, proof_id, op(actor, body), gate.Via.staff_receipt)

    @app.post("/v1/admin/rails/{rail_id}/pause")
    def admin_pause(rail_id: str, body: ConfirmIn, actor: Staff):
        confirmed(body)
        return rails_admin.set_paused(engine, rail_id, True, op(actor, body))

    @app.post("/v1/admin/rails/{rail_id}/resume")
    def admin_resume(rail_id: str, body: ConfirmIn, actor: Staff):
        confirmed(body)
        return rails_admin.set_paused(engine, rail_id, False, op(actor, body))

    @app.post("/v1/admin/rails/{rail_id}/production/request", status_code=201)
    def admin_production_request(rail_id: str, body: ProductionIn, actor: Staff):
        a = rails_admin.request_change(engine, rail_id, "production",
                                       "true" if body.enable else "false", op(actor, body))
        return JSONResponse({"approval_id": a["approval_id"], "status": a["status"]},
                            status_code=201)

    @app.post("/v1/admin/rails/{rail_id}/treasury/request", status_code=201)
    def admin_treasury_request(rail_id: str, body: TreasuryIn, actor: Staff):
        a = rails_admin.request_change(engine, rail_id, "treasury", body.treasury,
                                       op(actor, body))
        return JSONResponse({"approval_id": a["approval_id"], "status": a["status"]},
                            status_code=201)

    @app.post("/v1/admin/approvals/{approval_id}/approve")
    def admin_approve(approval_id: str, body: ConfirmIn, actor: Staff):
        confirmed(body)
        return rails_admin.approve(engine, approval_id, op(actor, body))

    @app.post("/v1/admin/entitlements/{entitlement_id}/revoke")
    def admin_revoke(entitlement_id: str, body: ConfirmIn, actor: Staff):
        confirmed(body)
        return gate.revoke(engine, entitlement_id, op(actor, body))

    app.include_router(webhook_router(engine, service_owners, staff))
    return app
