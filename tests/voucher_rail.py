"""A rail family with a proof type the engine has never seen (`voucher_code`), added the way
the catalog says a rail is added: this module and a catalog fragment, nothing else.

A voucher is a code that a (scripted) issuer redeems to a recipient; the "chain" answers
`voucher_getRedemption` with {"to", "amount", "asset", "time"} or null. The family settles on
the fake family's networks (its own `vouchernet`), as x402 settles on EVM networks.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from rails.base import (
    Check,
    Finding,
    InflowScan,
    Observed,
    PaymentRequirements,
    SessionShape,
    Settlement,
    Terms,
    Transport,
    Verdict,
    first_finding,
)
from rails.codes import FailureCode
from rails.errors import ProofMalformed
from registry.catalog import Rail

PROOF_TYPE = "voucher_code"
_CODE = re.compile(r"^VCH-[0-9A-Z]{4}-[0-9A-Z]{4}$")
_ADDR = re.compile(r"^fa[0-9a-z]{4,40}$")

CATALOG_FRAGMENT = """
[families.voucher]
adapter = "tests.voucher_rail:VoucherAdapter"
network_family = "fake"

[networks.vouchernet]
family = "fake"

[rails.voucher_live]
family = "voucher"
stage = "live"
production_enabled = true
network = "vouchernet"
asset_symbol = "VUSD"
decimals = 2
proof_types = ["voucher_code"]
finality = { mode = "commitment", level = "finalized" }
assets = { vouchernet = "vusd" }
"""


@dataclass(frozen=True)
class Ctx:
    redemption: Mapping[str, Any]
    terms: Terms
    asset: str


def check_asset(c: Ctx) -> Finding | None:
    if c.redemption["asset"] != c.asset:
        return Finding(FailureCode.wrong_asset, f"voucher is in {c.redemption['asset']}")
    return None


def check_recipient(c: Ctx) -> Finding | None:
    if c.redemption["to"] != c.terms.recipient:
        return Finding(FailureCode.wrong_recipient, f"voucher redeemed to {c.redemption['to']}")
    return None


def check_amount(c: Ctx) -> Finding | None:
    if int(c.redemption["amount"]) != c.terms.amount:
        return Finding(FailureCode.amount_mismatch, f"voucher worth {c.redemption['amount']}")
    return None


CHECKS: tuple[Check[Ctx], ...] = (check_asset, check_recipient, check_amount)


class VoucherAdapter:
    family: ClassVar[str] = "voucher"
    network_family: ClassVar[str] = "fake"
    proof_types: ClassVar[tuple[str, ...]] = (PROOF_TYPE,)
    proof_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        PROOF_TYPE: ("voucher code (VCH-XXXX-XXXX, case-insensitive)",),
    }
    reads_chain: ClassVar[bool] = True
    # The code itself is the binding: a voucher redeems once, to one recipient.
    binds_reference: ClassVar[bool] = False
    binds_payer: ClassVar[bool] = False
    requires_payer: ClassVar[bool] = False
    paid_by: ClassVar[str | None] = None
    replay_code: ClassVar[FailureCode] = FailureCode.duplicate_payment
    paid_at_submission: ClassVar[bool] = False
    chain_time_margin_s: ClassVar[int] = 0
    inflow_scan: ClassVar[InflowScan | None] = None
    inflow_scan_gap: ClassVar[str] = "a voucher is redeemed, not transferred to a treasury"

    def __init__(self, rail: Rail) -> None:
        self.rail = rail

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        code = raw.strip().upper()
        if proof_type != PROOF_TYPE or not _CODE.match(code):
            raise ProofMalformed("proof", "not a voucher code (VCH-XXXX-XXXX)")
        return code

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        if not _ADDR.match(address):
            raise ProofMalformed(field, "not a fake address (fa + 4..40 chars)")
        return address

    def proof_of(self, transfer_key: str) -> str | None:
        return None  # a transaction is named by its hash, which no transfer key holds

    def new_reference(self, seed: bytes | None = None) -> str | None:
        return None

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        return frozenset()

    def prepare(self, session: SessionShape) -> PaymentRequirements:
        return PaymentRequirements(
            rail_id=self.rail.rail_id,
            network=self.rail.network,
            asset=self.rail.asset,
            recipient=session.recipient,
            amount=str(session.amount),
            data={"redeem_to": session.recipient},
        )

    def verify(self, proof: str, terms: Terms, chain: Transport) -> Verdict:
        code = self.normalize_proof(PROOF_TYPE, proof)
        got = chain.call("voucher_getRedemption", [code])
        if got is None:
            return Verdict.wait(FailureCode.tx_not_found, f"voucher {code} not redeemed (yet)")
        observed = Observed(
            amount=str(got["amount"]),
            recipient=got["to"],
            asset=got["asset"],
            block_time=datetime.fromtimestamp(got["time"], tz=UTC),
        )
        found = first_finding(CHECKS, Ctx(got, terms, terms.asset or self.rail.asset))
        if found is not None:
            return found.verdict(observed)
        settlement = Settlement(ref=code, finality="finalized", is_final=True)
        return Verdict.ok(
            "voucher redeemed",
            observed=observed,
            settlement=settlement,
            transfer_keys=(f"voucher:{self.rail.network}:{code}",),
        )

    def finality(
        self,
        refs: list[str],
        chain: Transport,
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[Settlement]:
        return [Settlement(ref=r, finality="finalized", is_final=True) for r in refs]

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Transport:
        raise RuntimeError("the voucher rail has no live chain")


class VoucherIssuer:
    """The scripted "chain" of vouchernet: {code: redemption}."""

    source = "cassette"

    def __init__(self) -> None:
        self.redeemed: dict[str, dict[str, Any]] = {}

    def call(self, method: str, params: list[Any]) -> Any:
        if method != "voucher_getRedemption":
            raise KeyError(method)
        return self.redeemed.get(params[0])
