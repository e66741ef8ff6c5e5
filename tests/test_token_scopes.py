"""A token is a tenant's, a staff member's or the metrics scraper's, never two of these; and a
staff name never passes for an actor the audit trail already names (the worker, a
submission, discovery, the catalog, a tenant's principal)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tests.conftest import SERVICE_TOKEN, STAFF_TOKEN
from verifier.core.config import PRINCIPAL_PREFIX, SYSTEM_ACTORS, Settings
from verifier.services import discovery, proofs
from verifier.services.principals import principal_name
from verifier.worker import loop


@pytest.mark.parametrize(
    ("tables", "named"),
    [
        (
            {"service_tokens": {SERVICE_TOKEN: ["alice"]}, "staff_tokens": {SERVICE_TOKEN: "ops1"}},
            ("RAILPROOF_SERVICE_TOKENS", "RAILPROOF_STAFF_TOKENS"),
        ),
        (
            {"staff_tokens": {STAFF_TOKEN: "ops1"}, "metrics_token": STAFF_TOKEN},
            ("RAILPROOF_STAFF_TOKENS", "RAILPROOF_METRICS_TOKEN"),
        ),
        (
            {"service_tokens": {SERVICE_TOKEN: ["alice"]}, "metrics_token": SERVICE_TOKEN},
            ("RAILPROOF_SERVICE_TOKENS", "RAILPROOF_METRICS_TOKEN"),
        ),
    ],
)
def test_one_token_on_two_lists_stops_startup_without_repeating_it(tables, named):
    # SECURITY: the tenant holding a token that is also staff would reach every admin route.
    with pytest.raises(ValidationError) as e:
        Settings(env={}, **tables)
    message = str(e.value.errors()[0]["msg"])
    assert all(var in message for var in named), message
    assert SERVICE_TOKEN not in message and STAFF_TOKEN not in message


def test_separate_tokens_are_accepted():
    s = Settings(
        env={},
        service_tokens={SERVICE_TOKEN: ["alice"]},
        staff_tokens={STAFF_TOKEN: "ops1"},
        metrics_token="scraper-token",
    )
    assert s.staff_tokens == {STAFF_TOKEN: "ops1"}


@pytest.mark.parametrize(
    "name", ["worker", "system", "discovery", "catalog", "service", "Worker", "svc:alice"]
)
def test_a_staff_name_cannot_pass_for_an_actor_the_audit_trail_already_names(name):
    with pytest.raises(ValidationError, match="reserved"):
        Settings(env={}, staff_tokens={STAFF_TOKEN: name})


def test_the_reserved_names_are_the_ones_the_code_signs_with():
    # The list the configuration refuses is the list the audit trail is written with.
    assert {loop.SYSTEM.actor, proofs.SYSTEM.actor, discovery.ACTOR} <= SYSTEM_ACTORS
    assert principal_name(["alice"]).startswith(PRINCIPAL_PREFIX)
    assert principal_name(["alice", "bob"]).startswith(PRINCIPAL_PREFIX)


def test_the_asgi_factory_names_a_bad_variable_without_quoting_its_value(monkeypatch):
    """`uvicorn --factory verifier.http.asgi:make_app` prints what the factory raises: the
    variable and what is wrong, never the token table pydantic's own message quotes."""
    import traceback

    from verifier.http.asgi import make_app

    monkeypatch.setenv("RAILPROOF_SERVICE_TOKENS", json.dumps({SERVICE_TOKEN: ["bad,owner"]}))
    with pytest.raises(RuntimeError, match="RAILPROOF_SERVICE_TOKENS") as e:
        make_app()
    printed = "".join(traceback.format_exception(e.value))
    assert SERVICE_TOKEN not in printed, printed
