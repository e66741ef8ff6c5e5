"""One transfer, one session, whatever proof names it.

The x402 spec's genuine Base Sepolia payload is settled on a local chain (py-evm, chain id
84532) by the EIP-3009 test token placed at the real Base Sepolia USDC address: the
facilitator's `transferWithAuthorization` with the payload's own signature, inside its window.
The payload (rail x402) and the settlement's transaction hash (rail base_usdc) are then the
same transfer: the engine holds it by its `eip3009:` identity, taken from the payload by the
x402 rail and from the receipt's `AuthorizationUsed` log by the EVM rail, so the second proof
is refused (409 duplicate_payment / nonce_reused for the same owner, proof_owner_conflict for
another), audited and counted, and stored failed with that code. An ordinary transfer of the
same amount by the same payer is another transfer and is not refused.

Through the HTTP API, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_tester.backends.pyevm.main import get_default_account_keys
from eth_utils import to_checksum_address
from fastapi.testclient import TestClient

from rails.base import Status, Terms, eip3009_key
from rails.codes import FailureCode
from rails.evm import AUTHORIZATION_USED_TOPIC, TRANSFER_TOPIC, EvmAdapter
from rails.x402 import X402Adapter, domain_separator
from registry.catalog import RailOverrides, load_catalog
from tests.conftest import OTHER_SERVICE_TOKEN, SERVICE_TOKEN, STAFF_TOKEN, auth, make_settings
from tests.evm_chain import BASE_SEPOLIA_CHAIN_ID, BASE_SEPOLIA_USDC, LocalEvmChain, to_wire
from verifier.core.engine import Engine
from verifier.core.metrics import PREFIX
from verifier.http.api import create_app

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "x402"
PAYLOAD = json.loads((FIX / "x402_base_sepolia_payload_v1.json").read_text())
HEADER = (FIX / "x402_base_sepolia_payload_v1.b64").read_text().strip()
AUTH = PAYLOAD["payload"]["authorization"]
SIGNATURE = PAYLOAD["payload"]["signature"]
PAYER, PAY_TO, VALUE, NONCE = AUTH["from"], AUTH["to"], int(AUTH["value"]), AUTH["nonce"]
VALID_AFTER, VALID_BEFORE = int(AUTH["validAfter"]), int(AUTH["validBefore"])

OPENED_AT = 1740672100  # the engine's clock: sessions open, the payload is valid
SETTLED_AT = 1740672120  # the facilitator's settlement block, inside the window
ORDINARY_AT = 1740672130  # an ordinary transfer by the same payer
assert VALID_AFTER < OPENED_AT < SETTLED_AT < ORDINARY_AT < VALID_BEFORE

# eth-tester's first two test accounts (private keys 1 and 2): the facilitator that settles,
# and an account the payer approved in the genesis state (its transferFrom is a transfer
# without any authorization).
FACILITATOR, SPENDER = (k.public_key.to_checksum_address() for k in get_default_account_keys(2))

IDENTITY = eip3009_key(BASE_SEPOLIA_CHAIN_ID, BASE_SEPOLIA_USDC, PAYER, NONCE)
REFUSAL_ACTIONS = {
    "duplicate_payment": "proof.duplicate_payment",
    "nonce_reused": "proof.nonce_reused",
    "proof_owner_conflict": "proof.owner_conflict",
}
TOKENS = {"alice": SERVICE_TOKEN, "bob": OTHER_SERVICE_TOKEN}


# -- the chain ---------------------------------------------------------------------------


class Settled:
    """A Base Sepolia chain where the payload's authorization was settled (and, apart, an
    ordinary transfer of the same amount by the same payer was made)."""

    def __init__(self, as_bytes: bool = False):
        self.chain = LocalEvmChain.base_sepolia(allowances={(PAYER, SPENDER): VALUE})
        assert self.chain.accounts[:2] == [FACILITATOR, SPENDER]
        self.token = self.chain.eip3009_token()
        self.token.functions.mint(PAYER, 3 * VALUE).transact({"from": FACILITATOR})
        self.chain.set_next_block_timestamp(SETTLED_AT)
        self.settlement = self.chain.transfer_with_authorization(
            self.token, AUTH, SIGNATURE, sender=FACILITATOR, as_bytes=as_bytes
        )
        self.chain.set_next_block_timestamp(ORDINARY_AT)
        self.ordinary = (
            self.token.functions.transferFrom(PAYER, PAY_TO, VALUE)
            .transact({"from": SPENDER})
            .to_0x_hex()
        )

    def receipt(self, tx: str) -> dict[str, Any]:
        return self.chain.call("eth_getTransactionReceipt", [tx])


@pytest.fixture
def settled() -> Settled:
    return Settled()


# -- the engine, over HTTP ---------------------------------------------------------------


@contextmanager
def served(db_url: str, chain: Any) -> Iterator[Api]:
    """The engine with both rails on base-sepolia, where one chain answers for both."""
    engine = Engine(
        make_settings(
            db_url,
            clock=datetime.fromtimestamp(OPENED_AT, tz=UTC),
            env={
                "RAILPROOF_NETWORK_X402": "base-sepolia",
                "RAILPROOF_NETWORK_BASE_USDC": "base-sepolia",
            },
        )
    )
    engine.ensure_rail_states()
    engine.chains.set_transport("base-sepolia", chain)
    try:
        with TestClient(create_app(engine), raise_server_exceptions=False) as client:
            yield Api(engine, client)
    finally:
        engine.db.dispose()


@pytest.fixture
def api(db_url, settled) -> Iterator[Api]:
    with served(db_url, settled.chain) as a:
        yield a


class Api:
    def __init__(self, engine: Engine, client: TestClient):
        self.engine, self.client = engine, client

    def open(
        self,
        rail_id: str,
        owner: str = "alice",
        expires_in_seconds: int | None = None,
        amount: int = VALUE,
        recipient: str = PAY_TO,
    ) -> str:
        body: dict[str, Any] = {
            "owner_id": owner,
            "rail_id": rail_id,
            "access_product_id": "api",
            "amount": amount,
            "recipient": recipient,
        }
        if expires_in_seconds is not None:
            body["expires_in_seconds"] = expires_in_seconds
        if rail_id == "base_usdc":
            body["payer"] = PAYER  # EVM rails bind a transfer to its session by the payer
        r = self.client.post("/v1/payment-sessions", json=body, headers=auth(TOKENS[owner]))
        assert r.status_code == 201, r.text
        assert r.json()["payment_requirements"]["network"] == "base-sepolia"
        return r.json()["id"]

    def submit(self, session_id: str, proof: str, owner: str = "alice"):
        return self.client.post(
            "/v1/proofs",
            json={"session_id": session_id, "proof": proof},
            headers=auth(TOKENS[owner]),
        )

    def verified(self, session_id: str, proof: str, owner: str = "alice") -> dict[str, Any]:
        r = self.submit(session_id, proof, owner)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "verified", r.json()
        return r.json()

    def proof(self, proof_id: str, owner: str = "alice") -> dict[str, Any]:
        r = self.client.get(f"/v1/proofs/{proof_id}", headers=auth(TOKENS[owner]))
        assert r.status_code == 200, r.text
        return r.json()

    def audit(self) -> list[dict[str, Any]]:
        r = self.client.get("/v1/admin/audit", params={"limit": 1000}, headers=auth(STAFF_TOKEN))
        assert r.status_code == 200, r.text
        return r.json()

    def refusals(self, rail_id: str, code: str) -> float:
        value = self.engine.metrics.registry.get_sample_value(
            PREFIX + "replay_refusals_total", {"rail_id": rail_id, "code": code}
        )
        return value or 0.0


def assert_refused(
    api: Api,
    response,
    code: str,
    rail_id: str,
    owner: str,
    held_by_session: str,
    held_by_proof: str,
    session_id: str,
) -> str:
    """The second proof was refused with `code`: 409, stored failed with the code, one audit
    event naming both sessions, counted once. Returns the refused proof's id."""
    assert response.status_code == 409, response.text
    err = response.json()["error"]
    assert err["code"] == code, err
    if code == "proof_owner_conflict":
        assert held_by_session not in err["message"]  # another owner's session is not named
    else:
        assert held_by_session in err["message"]
    refused_id = err["proof_id"]
    stored = api.proof(refused_id, owner)
    assert (stored["status"], stored["failure_code"]) == ("failed", code), stored
    assert stored["session_id"] == session_id

    events = [e for e in api.audit() if e["action"] == REFUSAL_ACTIONS[code]]
    assert len(events) == 1, events
    data = events[0]["data"]
    assert events[0]["subject_id"] == held_by_proof
    assert (
        data["code"],
        data["held_by_session_id"],
        data["session_id"],
        data["refused_proof_id"],
    ) == (code, held_by_session, session_id, refused_id)
    assert api.refusals(rail_id, code) == 1
    return refused_id


# -- the token and the two identities, without the engine --------------------------------


def test_the_real_payload_settles_on_the_local_base_sepolia_token(settled):
    chain, token = settled.chain, settled.token
    assert chain.call("eth_chainId", []) == hex(84532)
    # The token's domain, computed at call time at the real address, is the one x402 pins.
    assert token.functions.DOMAIN_SEPARATOR().call() == domain_separator(
        "USDC", "2", BASE_SEPOLIA_CHAIN_ID, bytes.fromhex(BASE_SEPOLIA_USDC[2:])
    )
    assert token.functions.decimals().call() == 6

    receipt = settled.receipt(settled.settlement)
    assert receipt["status"] == "0x1" and receipt["to"] == BASE_SEPOLIA_USDC
    block = chain.call("eth_getBlockByNumber", [receipt["blockNumber"], False])
    assert int(block["timestamp"], 16) == SETTLED_AT
    used, transfer = receipt["logs"]
    assert used["topics"] == [
        AUTHORIZATION_USED_TOPIC,
        "0x" + PAYER[2:].lower().rjust(64, "0"),
        NONCE.lower(),
    ]
    assert transfer["topics"][0] == TRANSFER_TOPIC and int(transfer["data"], 16) == VALUE
    assert token.functions.authorizationState(PAYER, NONCE).call() is True
    assert token.functions.balanceOf(PAY_TO).call() == 2 * VALUE  # settlement + ordinary

    # A second settlement of the same authorization is refused by the token (mined, reverted).
    again = chain.transfer_with_authorization(token, AUTH, SIGNATURE, as_bytes=True)
    assert settled.receipt(again)["status"] == "0x0"


def test_outside_its_window_the_authorization_does_not_settle():
    chain = LocalEvmChain.base_sepolia()
    token = chain.eip3009_token()
    token.functions.mint(PAYER, VALUE).transact({"from": FACILITATOR})
    chain.set_next_block_timestamp(VALID_BEFORE)  # validBefore is exclusive
    tx = chain.transfer_with_authorization(token, AUTH, SIGNATURE)
    assert chain.call("eth_getTransactionReceipt", [tx])["status"] == "0x0"
    assert token.functions.authorizationState(PAYER, NONCE).call() is False


@pytest.mark.parametrize("as_bytes", [False, True], ids=["vrs", "bytes_signature"])
def test_payload_and_settlement_receipt_name_the_same_transfer(as_bytes):
    settled = Settled(as_bytes=as_bytes)
    catalog = load_catalog()
    on_sepolia = RailOverrides(network="base-sepolia")
    x402 = X402Adapter(catalog.resolve("x402", on_sepolia))
    evm = EvmAdapter(catalog.resolve("base_usdc", on_sepolia))
    now = datetime.fromtimestamp(OPENED_AT, tz=UTC)

    by_payload = x402.verify(HEADER, Terms(recipient=PAY_TO, amount=VALUE, now=now), settled.chain)
    by_receipt = evm.verify(
        settled.settlement,
        Terms(recipient=PAY_TO, amount=VALUE, now=now, sender=PAYER),
        settled.chain,
    )
    ordinary = evm.verify(
        settled.ordinary,
        Terms(recipient=PAY_TO, amount=VALUE, now=now, sender=PAYER),
        settled.chain,
    )
    assert by_payload.status is by_receipt.status is ordinary.status is Status.verified
    assert by_payload.transfer_keys == (IDENTITY,)
    assert IDENTITY in by_receipt.transfer_keys
    assert not any(k.startswith("eip3009:") for k in ordinary.transfer_keys)
    assert set(ordinary.transfer_keys).isdisjoint(by_receipt.transfer_keys)
    # The identity leads back to the payload's own proof (its pending claims are found by it).
    assert x402.proof_of(IDENTITY) == x402.normalize_proof("x402_payment_payload", HEADER)
    assert x402.proof_of(IDENTITY.replace(":84532:", ":8453:")) is None  # another chain's
    assert evm.proof_of(IDENTITY) is None


class Live:
    """The local chain as a live node (the x402 rail reads authorizationState only there);
    `hides` the answers of a method whose pool member has not caught up (a receipt: null,
    logs: none), as a load-balanced RPC's members lag each other."""

    source = "live"

    def __init__(self, chain: LocalEvmChain, hides: str | None = None):
        self.chain, self.hides = chain, hides

    def call(self, method: str, params: list[Any]) -> Any:
        if method == self.hides:
            return [] if method == "eth_getLogs" else None
        if method == "eth_call":  # eth-tester wants a funded sender; a node needs none
            params = [{"from": FACILITATOR, **params[0]}, *params[1:]]
        if method == "eth_getLogs":  # eth-tester takes a filter only through web3's formatters
            query = {**params[0], "address": to_checksum_address(params[0]["address"])}
            return to_wire([dict(log) for log in self.chain.w3.eth.get_logs(query)])
        return self.chain.call(method, params)


@pytest.mark.parametrize("hides", ["eth_getTransactionReceipt", "eth_getLogs"])
def test_a_settlement_a_lagging_node_does_not_serve_yet_is_pending(settled, hides):
    """authorizationState says used; the node serving the receipt (or the logs) is a block
    behind. This used to be `failed nonce_reused` for good: the payer's own settlement taken
    for a transfer elsewhere."""
    x402 = X402Adapter(load_catalog().resolve("x402", RailOverrides(network="base-sepolia")))
    terms = Terms(recipient=PAY_TO, amount=VALUE, now=datetime.fromtimestamp(OPENED_AT, tz=UTC))
    behind = x402.verify(HEADER, terms, Live(settled.chain, hides))
    assert (behind.status, behind.code) == (Status.pending, FailureCode.rpc_unavailable)
    caught_up = x402.verify(HEADER, terms, Live(settled.chain))
    assert caught_up.status is Status.verified, caught_up.detail
    assert caught_up.observed["tx_hash"] == settled.settlement


# -- through the engine ------------------------------------------------------------------


@pytest.mark.parametrize(
    "owner, code",
    [("alice", "duplicate_payment"), ("bob", "proof_owner_conflict")],
    ids=["same_owner", "other_owner"],
)
def test_payload_first_then_its_settlement_hash_is_refused(api, settled, owner, code):
    a = api.open("x402")
    held = api.verified(a, HEADER)
    b = api.open("base_usdc", owner)
    r = api.submit(b, settled.settlement, owner)
    assert_refused(
        api, r, code, "base_usdc", owner, held_by_session=a, held_by_proof=held["id"], session_id=b
    )
    assert api.proof(held["id"])["status"] == "verified"  # the holder keeps its transfer


@pytest.mark.parametrize(
    "owner, code",
    [("alice", "nonce_reused"), ("bob", "proof_owner_conflict")],
    ids=["same_owner", "other_owner"],
)
def test_settlement_hash_first_then_the_payload_is_refused(api, settled, owner, code):
    a = api.open("base_usdc")
    held = api.verified(a, settled.settlement)
    b = api.open("x402", owner)
    r = api.submit(b, HEADER, owner)
    assert_refused(
        api, r, code, "x402", owner, held_by_session=a, held_by_proof=held["id"], session_id=b
    )
    assert api.proof(held["id"])["status"] == "verified"


def test_an_ordinary_transfer_by_the_same_payer_is_another_transfer(api, settled):
    a = api.open("x402")
    held = api.verified(a, HEADER)
    # Same payer, recipient, token and amount, but no authorization: not the x402 transfer.
    b = api.open("base_usdc")
    api.verified(b, settled.ordinary)
    assert api.refusals("base_usdc", "duplicate_payment") == 0
    assert not [e for e in api.audit() if e["action"] in REFUSAL_ACTIONS.values()]
    # The settlement itself still is the x402 transfer, and is refused for a third session
    # (the sessions B took and A took are no longer waiting for a payment).
    c = api.open("base_usdc")
    r = api.submit(c, settled.settlement)
    assert_refused(
        api,
        r,
        "duplicate_payment",
        "base_usdc",
        "alice",
        held_by_session=a,
        held_by_proof=held["id"],
        session_id=c,
    )


class _Flaky:
    """The chain behind a node that is down until the test says otherwise. Down, it is
    `live`, so x402 asks it (and is left pending); up, it is the local chain, on which x402
    verifies offline and the EVM rail reads the settlement."""

    def __init__(self, chain: LocalEvmChain):
        self.chain, self.down = chain, True

    @property
    def source(self) -> str:
        return "live" if self.down else "local"

    def call(self, method: str, params: list[Any]) -> Any:
        if self.down:
            from rails.errors import RpcUnavailable

            raise RpcUnavailable("connection refused")
        return self.chain.call(method, params)


@pytest.mark.parametrize(
    "bob_submits, bob_ttl",
    [(True, None), (False, None), (True, 10)],
    ids=["bob_pending", "bob_not_yet", "bob_pending_session_expired"],
)
def test_a_session_of_the_other_rail_is_a_candidate_for_the_same_transfer(
    api, settled, bob_submits, bob_ttl
):
    """SECURITY: Bob's x402 session waits for his customer's payment; Mallory opened a Base
    USDC session naming the same payer for the same price. Seeing the payment settle, she
    submits the settlement's hash: the transfer could back either session, so it is held for
    review naming both (never verified for her), and Bob's pending proof waits for the
    decision. Bob's session may even have expired before the payment settled: his proof,
    submitted in time, is his claim on it."""
    from tests.helpers import advance

    flaky = _Flaky(settled.chain)
    api.engine.chains.set_transport("base-sepolia", flaky)
    bob_s = api.open("x402", "bob", expires_in_seconds=bob_ttl)
    mallory_s = api.open("base_usdc", "alice")
    bob = api.submit(bob_s, HEADER, "bob").json() if bob_submits else None
    if bob is not None:
        assert bob["status"] == "pending", bob
    advance(api.engine, SETTLED_AT + 5 - OPENED_AT)  # Bob's 10 s session is over by then
    flaky.down = False
    r = api.submit(mallory_s, settled.settlement, "alice")
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["failure_code"]) == (
        "requires_review",
        "ambiguous_transfer",
    )
    attempts = api.client.get(
        f"/v1/admin/proofs/{r.json()['id']}/attempts", headers=auth(STAFF_TOKEN)
    ).json()
    assert set(attempts[-1]["observed"]["candidate_sessions"]) == {mallory_s, bob_s}
    if bob is not None:
        from verifier.services import proofs

        waiting = proofs.verify_proof(api.engine, bob["id"])
        assert (waiting.status.value, waiting.code) == ("pending", "ambiguous_transfer")


def test_an_ordinary_transfer_is_no_candidate_for_an_x402_session(api, settled):
    """Only an EIP-3009 authorization pays an x402 session: another owner's payer-less x402
    session at the same price does not send an ordinary Base USDC payment to review."""
    api.open("x402", "bob")
    mine = api.open("base_usdc")
    api.verified(mine, settled.ordinary)


def test_a_rail_its_overrides_leave_unusable_is_no_sibling(db_url):
    """x402 moved to sepolia, where the catalog pins no token domain, cannot build its
    adapter: Ethereum USDC's payments there are not held up by it (no candidate, no 500)."""
    engine = Engine(
        make_settings(
            db_url,
            env={
                "RAILPROOF_NETWORK_EVM_USDC": "sepolia",
                "RAILPROOF_NETWORK_X402": "sepolia",
                "RAILPROOF_ASSET_X402": "0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238",
            },
        )
    )
    try:
        usdc = engine.rail("evm_usdc")
        assert (usdc.network, usdc.asset.lower()) == (
            "sepolia",
            "0x1c7d4b196cb0c7b01d743fbc6116a902379c7238",
        )
        assert engine.sibling_rails("evm_usdc", usdc.network, usdc.asset) == []
        # Moved off base, x402 is not Base USDC's sibling either.
        base = engine.rail("base_usdc")
        assert engine.sibling_rails("base_usdc", "base", base.asset) == []
    finally:
        engine.db.dispose()


def _batching_initcode(token: str, calls: list[bytes]) -> bytes:
    """Contract creation code that CALLs `token` with each calldata in turn, then stops: a
    facilitator settling an authorization in one transaction with other transfers."""
    from eth_utils import to_canonical_address

    per_call = 3 + 3 + 2 + 1 + 4 + 3 + 4 + 21 + 3
    header = per_call * len(calls) + 1
    code, offset = b"", header
    for data in calls:
        n = len(data).to_bytes(2, "big")
        code += b"\x61" + n + b"\x61" + offset.to_bytes(2, "big") + b"\x60\x00\x39"  # CODECOPY
        code += b"\x60\x00\x60\x00\x61" + n + b"\x60\x00\x60\x00"  # ret, args, value
        code += b"\x73" + to_canonical_address(token) + b"\x5a\xf1\x50"  # CALL, POP
        offset += len(data)
    code += b"\x00"
    assert len(code) == header
    return code + b"".join(calls)


def _batch_settling_the_authorization_and(also_to: str) -> tuple[LocalEvmChain, Any, str]:
    """A chain where the payer approved a batching contract for VALUE, that contract's
    creation code (to send): it settles the payload's authorization (VALUE to PAY_TO) and
    transfers VALUE more from the payer to `also_to`."""
    import rlp
    from eth_utils import keccak as eth_keccak
    from eth_utils import to_canonical_address, to_checksum_address

    batcher = to_checksum_address(
        eth_keccak(rlp.encode([to_canonical_address(FACILITATOR), 0]))[12:]
    )
    chain = LocalEvmChain.base_sepolia(
        balances={PAYER: 3 * VALUE}, allowances={(PAYER, batcher): VALUE}
    )
    token = chain.eip3009_token()
    sig = bytes.fromhex(SIGNATURE.removeprefix("0x"))
    settle = token.get_function_by_signature(
        "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
    )(PAYER, PAY_TO, VALUE, VALID_AFTER, VALID_BEFORE, NONCE, sig[64], sig[:32], sig[32:64])
    more = token.functions.transferFrom(PAYER, also_to, VALUE)
    calls = [bytes.fromhex(f._encode_transaction_data()[2:]) for f in (settle, more)]
    return chain, token, "0x" + _batching_initcode(BASE_SEPOLIA_USDC, calls).hex()


@pytest.mark.parametrize("others", ["x402_at_the_authorizations_value", "x402_at_the_total"])
def test_an_authorization_among_a_transactions_transfers_is_matched_on_its_own(db_url, others):
    """One transaction settles the payer's authorization (VALUE) and transfers VALUE more from
    the same payer to the same recipient. A Base USDC session naming the payer for the total
    takes the transaction, but an x402 session at the authorization's value could take the
    authorization in it: held for review. An x402 session at the total could not (no
    authorization in it pays that much): the Base USDC payment verifies."""
    chain, token, batch = _batch_settling_the_authorization_and(PAY_TO)
    with served(db_url, chain) as api:
        x402_amount = VALUE if others == "x402_at_the_authorizations_value" else 2 * VALUE
        api.open("x402", "bob", amount=x402_amount)
        total = api.open("base_usdc", amount=2 * VALUE)
        chain.set_next_block_timestamp(SETTLED_AT)
        tx = chain.w3.eth.send_transaction(
            {
                "from": FACILITATOR,
                "data": batch,
                "gas": 600_000,
            }
        ).to_0x_hex()
        assert token.functions.authorizationState(PAYER, NONCE).call() is True
        assert token.functions.balanceOf(PAY_TO).call() == 2 * VALUE
        r = api.submit(total, tx)
        assert r.status_code == 201, r.text
        want = (
            ("requires_review", "ambiguous_transfer")
            if others == "x402_at_the_authorizations_value"
            else ("verified", None)
        )
        assert (r.json()["status"], r.json()["failure_code"]) == want, r.json()


MERCHANT = "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"


@pytest.mark.parametrize("first", ["merchant", "x402"])
def test_an_authorization_paying_another_merchant_is_not_this_payments(db_url, first):
    """One transaction settles Bob's x402 authorization (to PAY_TO) and transfers VALUE from
    the same payer to another merchant, whose Base USDC session it pays. Two payments: each
    verifies for its own session, whichever is submitted first; the merchant's proof neither
    holds nor is matched on an authorization that paid someone else."""
    chain, token, batch = _batch_settling_the_authorization_and(MERCHANT)
    with served(db_url, chain) as api:
        bob = api.open("x402", "bob")
        merchant = api.open("base_usdc", recipient=MERCHANT)
        chain.set_next_block_timestamp(SETTLED_AT)
        tx = chain.w3.eth.send_transaction(
            {"from": FACILITATOR, "data": batch, "gas": 600_000}
        ).to_0x_hex()
        assert token.functions.balanceOf(MERCHANT).call() == VALUE
        submissions = [(merchant, tx, "alice"), (bob, HEADER, "bob")]
        for session_id, proof, owner in submissions if first == "merchant" else submissions[::-1]:
            api.verified(session_id, proof, owner)


def test_a_nodes_odd_logs_and_amounts_are_no_authorizations(settled):
    """A log whose address is not text, or an authorization's Transfer larger than any
    session can ask, is nothing a session is matched on (never a 500)."""
    from rails.base import Verdict
    from rails.evm import authorizations_paid, parse_receipt
    from verifier.services.proofs import MAX_AMOUNT, _paying

    raw = settled.receipt(settled.settlement)
    raw["logs"] = [{"address": 7, "topics": [], "data": "0x", "logIndex": "0xffff"}, *raw["logs"]]
    receipt = parse_receipt(raw, settled.settlement)
    [paid] = authorizations_paid(receipt, BASE_SEPOLIA_USDC, BASE_SEPOLIA_CHAIN_ID)
    assert (paid["key"], paid["recipient"], paid["amount"]) == (IDENTITY, PAY_TO, str(VALUE))
    for amount, kept in ((VALUE, True), (MAX_AMOUNT + 1, False), (0, False)):
        verdict = Verdict.ok(
            "",
            observed={"authorizations": [{**paid, "amount": str(amount)}]},
            transfer_keys=(IDENTITY,),
        )
        parts = _paying("eip3009", verdict, PAYER.lower())
        assert parts == ([(PAYER.lower(), (PAY_TO, amount))] if kept else [(PAYER.lower(), None)])
