"""Payment sessions: open one for an owner of the token, read it back."""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.responses import JSONResponse

from verifier.http.deps import EngineDep, IdempotencyKey, RateLimit, ServiceDep, acting_for
from verifier.http.errors import error_responses
from verifier.http.models import SessionIn, SessionOut
from verifier.http.routes import replayable, reply, run_service, service_router
from verifier.services import idempotency, sessions

router = service_router("payment sessions")
CREATE = "POST /v1/payment-sessions"


@router.post(
    "/v1/payment-sessions",
    status_code=201,
    response_model=SessionOut,
    dependencies=[Depends(RateLimit(CREATE))],
    responses=replayable(error_responses(404, 409, 429), 201),
)
async def create_session(
    body: SessionIn, svc: ServiceDep, engine: EngineDep, key: IdempotencyKey
) -> JSONResponse:
    def answer(view: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 201, SessionOut.checked(view)

    def work() -> dict[str, Any]:
        acting_for(engine, svc, body.owner_id, "session_create", field="owner_id")
        return sessions.open_session(
            engine, sessions.NewSession(**body.model_dump()), actor=svc.name
        )

    def call() -> idempotency.Answer:
        return idempotency.run_idempotent(
            engine, svc.name, CREATE, key, body.idempotent_request, work, answer
        )

    # A replay answers the stored body as it was stored, marked Idempotent-Replayed.
    return reply(await run_service(engine, call))


@router.get(
    "/v1/payment-sessions/{session_id}", response_model=SessionOut, responses=error_responses(404)
)
def read_session(session_id: str, svc: ServiceDep, engine: EngineDep) -> dict[str, Any]:
    return sessions.get_session(engine, session_id, svc.owners)
