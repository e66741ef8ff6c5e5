"""The official x402 SDK's facilitator verify, run fully offline: the reference our own x402
verification is compared against (in tests and in the benchmark).

The SDK's exact-EVM facilitator asks its signer for two things during verify: `get_code`
(is the payer a contract wallet? is the asset a deployed contract?) and an `eth_call`
simulation of `transferWithAuthorization`. `StubSigner` answers both locally: the listed
contracts have code, every other address is an EOA, and the simulation succeeds unless the
(from, nonce) pair is listed as used (then it reverts like FiatToken does). Everything the SDK
decides about the signature, recipient, amount, network and time window is its own code.

The SDK reads the clock with `time.time()` inside its facilitator modules; `sdk_clock(now)`
pins it for both of them (and only them) while it is active.

Importing this module has no side effects.
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from x402 import x402FacilitatorSync
from x402.schemas import PaymentPayload, PaymentRequirements, SchemeNotFoundError, VerifyResponse
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

# x402.mechanisms has no __init__.py: import submodules by their full path.
_exact = importlib.import_module("x402.mechanisms.evm.exact")
_exact_facilitator = importlib.import_module("x402.mechanisms.evm.exact.facilitator")
_exact_v1_facilitator = importlib.import_module("x402.mechanisms.evm.exact.v1.facilitator")
_v1_constants = importlib.import_module("x402.mechanisms.evm.v1.constants")

SDK_CLOCK_MODULES = (_exact_facilitator, _exact_v1_facilitator)

FACILITATOR_ADDRESS = "0x000000000000000000000000000000000000fAC1"
_FAKE_CODE = bytes.fromhex("6080604052")  # any non-empty bytecode


class StubSigner:
    """A FacilitatorEvmSigner that never leaves the process."""

    def __init__(self, contracts: Iterable[str] = (), used_nonces: Iterable[tuple[str, str]] = ()):
        self.contracts = {c.lower() for c in contracts}
        self.used = {(f.lower(), n.lower()) for f, n in used_nonces}
        self.calls: Counter[str] = Counter()

    def get_addresses(self) -> list[str]:
        return [FACILITATOR_ADDRESS]

    def get_code(self, address: str) -> bytes:
        self.calls["get_code"] += 1
        return _FAKE_CODE if address.lower() in self.contracts else b""

    def read_contract(self, address: str, abi: Any, function_name: str, *args: Any) -> Any:
        self.calls[f"eth_call:{function_name}"] += 1
        if function_name == "transferWithAuthorization":
            auth_from, nonce = str(args[0]).lower(), "0x" + bytes(args[5]).hex()
            if (auth_from, nonce) in self.used:
                raise RuntimeError(
                    "execution reverted: FiatTokenV2: authorization is used or canceled"
                )
            return None
        # Anything else (the multicall diagnosis after a failed simulation) is not emulated.
        raise RuntimeError(f"stub signer: {function_name} is not emulated")

    def verify_typed_data(self, *args: Any, **kwargs: Any) -> bool:  # not used by exact verify
        raise RuntimeError("not used by offline verification")

    def write_contract(self, *args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the oracle verifies only; it never settles")

    def send_transaction(self, to: str, data: bytes) -> str:
        raise RuntimeError("the oracle verifies only; it never settles")

    def wait_for_transaction_receipt(self, tx_hash: str) -> Any:
        raise RuntimeError("the oracle verifies only; it never settles")

    def get_balance(self, address: str, token_address: str) -> int:
        raise RuntimeError("not used by offline verification")

    def get_chain_id(self) -> int:
        raise RuntimeError("not used by offline verification")


def make_facilitator(signer: StubSigner) -> x402FacilitatorSync:
    """The SDK facilitator with the exact EVM scheme registered for v2 (every eip155 chain)
    and v1 (every legacy network name the SDK knows)."""
    facilitator = x402FacilitatorSync()
    facilitator.register(["eip155:8453", "eip155:84532"], _exact.ExactEvmFacilitatorScheme(signer))
    facilitator.register_v1(
        list(_v1_constants.V1_NETWORKS),
        _exact_v1_facilitator.ExactEvmSchemeV1(signer),
    )
    return facilitator


def requirements_doc(
    version: int,
    network: str,
    asset: str,
    pay_to: str,
    amount: int,
    name: str,
    eip712_version: str,
    timeout: int = 60,
) -> dict[str, Any]:
    """x402 PaymentRequirements JSON for one version (network in that version's naming)."""
    doc: dict[str, Any] = {
        "scheme": "exact",
        "network": network,
        "asset": asset,
        "payTo": pay_to,
        "maxTimeoutSeconds": timeout,
        "extra": {"name": name, "version": eip712_version},
    }
    if version == 1:
        doc.update(maxAmountRequired=str(amount), resource="https://example.test/resource")
    else:
        doc["amount"] = str(amount)
    return doc


def sdk_verify(
    facilitator: x402FacilitatorSync,
    payload: Mapping[str, Any],
    requirements: Mapping[str, Any],
) -> VerifyResponse:
    """The SDK's verdict on one payload document against one requirements document. A payload
    for a network no scheme is registered for is invalid, as the SDK's HTTP facilitator says."""
    if payload.get("x402Version") == 1:
        p: Any = PaymentPayloadV1.model_validate(payload)
        r: Any = PaymentRequirementsV1.model_validate(requirements)
    else:
        p = PaymentPayload.model_validate(payload)
        r = PaymentRequirements.model_validate(requirements)
    try:
        return facilitator.verify(p, r)
    except SchemeNotFoundError as e:
        return VerifyResponse(
            is_valid=False, invalid_reason="unsupported_scheme", invalid_message=str(e)
        )


@contextlib.contextmanager
def sdk_clock(now: int) -> Iterator[None]:
    """Pin the SDK facilitators' `time.time()` to `now` (unix seconds) while active."""
    # getattr/setattr: the modules are imported by name, so their `time` is not declared.
    saved = [(m, getattr(m, "time")) for m in SDK_CLOCK_MODULES]  # noqa: B009
    pinned = types.SimpleNamespace(time=lambda: float(now))
    try:
        for module, _ in saved:
            setattr(module, "time", pinned)  # noqa: B010
        yield
    finally:
        for module, original in saved:
            setattr(module, "time", original)  # noqa: B010
