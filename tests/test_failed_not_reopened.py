"""A failed proof stays failed when its transfer is submitted again to the same session in
another spelling. On a rail that reads the chain, another spelling of a transaction id (its
case) names the same transaction: the chain's answer cannot differ, so it is not verified
again; a transient answer (the node unreachable) once reopened a definitive `failed` as
`pending`. Another payload replaces a failed one only on rails whose proof is the payment
itself (x402), and only when it verifies or needs a person."""

from __future__ import annotations

import sqlite3

import pytest

from rails.errors import RpcUnavailable
from tests.conftest import make_settings
from tests.fake_rail import ScriptedChain, catalog_with_fake
from verifier.core.engine import Engine
from verifier.services.proofs import get_proof, submit_proof
from verifier.services.sessions import NewSession, open_session

TX = "fx00000000deadbeef"


@pytest.fixture
def engine(tmp_path, sqlite_template):
    target = tmp_path / "railproof.db"
    with sqlite3.connect(sqlite_template) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    chain = ScriptedChain()
    e = Engine(make_settings(f"sqlite:///{target}"), catalog=catalog_with_fake())
    e.chains.set_transport("fakenet", chain)
    e.ensure_rail_states()
    yield e, chain
    e.db.dispose()


def test_a_failed_proof_is_not_reopened_by_a_recased_hash_during_an_rpc_outage(engine):
    e, chain = engine
    ps = open_session(
        e,
        NewSession(
            owner_id="alice",
            rail_id="fake_live",
            access_product_id="pro",
            amount=5,
            recipient="fatreasury",
        ),
        actor="svc",
    )
    chain.txs[TX] = {"status": "failed"}
    view, created = submit_proof(e, ps["id"], TX, ["alice"])
    assert created and (view["status"], view["failure_code"]) == ("failed", "tx_failed_onchain")

    chain.fail_with = RpcUnavailable("node down")  # a transient outage
    again, _ = submit_proof(e, ps["id"], TX.upper().replace("FX", "fx"), ["alice"])
    stored = get_proof(e, view["id"], ["alice"])
    # The chain said no; an unreachable node says nothing: the proof stays failed.
    assert (again["status"], stored["status"]) == ("failed", "failed"), (again, stored)
