"""Proofs: submit one for a session of the token's owners, read it back."""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.responses import JSONResponse

from verifier.http.deps import EngineDep, IdempotencyKey, RateLimit, ServiceDep
from verifier.http.errors import error_responses
from verifier.http.models import ProofIn, ProofOut
from verifier.http.routes import replayable, reply, run_service, service_router
from verifier.services import idempotency, proofs

router = service_router("proofs")
SUBMIT = "POST /v1/proofs"


@router.post(
    "/v1/proofs",
    status_code=201,
    response_model=ProofOut,
    dependencies=[Depends(RateLimit(SUBMIT))],
    responses=replayable(
        {
            200: {
                "model": ProofOut,
                "description": "The same proof again (same "
                "transfer, owner and session): nothing new was stored",
            },
            **error_responses(404, 409, 429),
        },
        201,
        200,
        409,
    ),
)
async def submit_proof(
    body: ProofIn, svc: ServiceDep, engine: EngineDep, key: IdempotencyKey
) -> JSONResponse:
    def answer(result: tuple[dict[str, Any], bool]) -> tuple[int, dict[str, Any]]:
        view, created = result
        return (201 if created else 200), ProofOut.checked(view)

    def work() -> tuple[dict[str, Any], bool]:
        return proofs.submit_proof(
            engine, body.session_id, body.proof, svc.owners, body.proof_type, actor=svc.name
        )

    def call() -> idempotency.Answer:
        return idempotency.run_idempotent(
            engine, svc.name, SUBMIT, key, body.idempotent_request, work, answer
        )

    return reply(await run_service(engine, call))


@router.get("/v1/proofs/{proof_id}", response_model=ProofOut, responses=error_responses(404))
def read_proof(proof_id: str, svc: ServiceDep, engine: EngineDep) -> dict[str, Any]:
    return proofs.get_proof(engine, proof_id, svc.owners)
