"""A fake rail family: lets the registry, sessions, proofs, attempts and the apply gate be
tested without any chain library. Its "chain" is a transport answering `fake_getTransfer`
with {"status": "ok"|"failed", "to", "amount", "asset", "time", "finality"} or null."""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from rails.base import (
    Observed,
    PaymentRequirements,
    SessionShape,
    Settlement,
    Terms,
    Verdict,
)
from rails.codes import FailureCode
from rails.errors import ProofMalformed
from registry.catalog import Catalog, Rail, parse_catalog

_TX = re.compile(r"^fx[0-9a-f]{8,64}$")
_ADDR = re.compile(r"^fa[0-9a-z]{4,40}$")


class FakeAdapter:
    family = "fake"
    network_family = "fake"
    proof_types = ("fake_tx",)
    proof_fields = {"fake_tx": ("fake tx id (fx + 8..64 hex)",)}
    reads_chain = True
    binds_reference = True
    binds_payer = False
    requires_payer = False
    paid_by = None
    replay_code = FailureCode.duplicate_payment
    paid_at_submission = False
    chain_time_margin_s = 0
    inflow_scan = None
    inflow_scan_gap = "the fake chain lists no inflows"

    def __init__(self, rail: Rail):
        self.rail = rail

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        if proof_type != "fake_tx" or not _TX.match(raw.lower()):
            raise ProofMalformed("proof", "not a fake tx id (fx + 8..64 hex)")
        return raw.lower()

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        if not _ADDR.match(address):
            raise ProofMalformed(field, "not a fake address (fa + 4..40 chars)")
        return address

    def proof_of(self, transfer_key: str) -> str | None:
        return None  # a transaction is named by its hash, which no transfer key holds

    def new_reference(self, seed: bytes | None = None) -> str | None:
        return "fa" + (seed[:8].hex() if seed is not None else secrets.token_hex(8))

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        return frozenset({"fawellknown"})

    def prepare(self, session: SessionShape) -> PaymentRequirements:
        return PaymentRequirements(
            rail_id=self.rail.rail_id,
            network=self.rail.network,
            asset=self.rail.asset,
            recipient=session.recipient,
            amount=str(session.amount),
            reference=session.reference,
            memo=session.memo,
            url=f"fake:{session.recipient}",
        )

    def verify(self, proof: str, terms: Terms, chain: Any) -> Verdict:
        tx = chain.call("fake_getTransfer", [proof.lower()])
        if tx is None:
            return Verdict.wait(FailureCode.tx_not_found, "not found")
        if tx["status"] != "ok":
            return Verdict.fail(FailureCode.tx_failed_onchain, "failed on chain")
        t = tx.get("time")
        obs = Observed(
            amount=str(tx["amount"]),
            recipient=tx["to"],
            asset=tx["asset"],
            block_time=datetime.fromtimestamp(t, tz=UTC) if t is not None else None,
        )
        if tx["asset"] != (terms.asset or self.rail.asset):
            return Verdict.fail(FailureCode.wrong_asset, "other asset", observed=obs)
        if tx["to"] != terms.recipient:
            return Verdict.fail(FailureCode.wrong_recipient, "other recipient", observed=obs)
        if int(tx["amount"]) != terms.amount:
            return Verdict.fail(FailureCode.amount_mismatch, "other amount", observed=obs)
        if terms.reference and terms.reference not in tx.get("refs", []):
            return Verdict.fail(FailureCode.reference_missing, "no reference", observed=obs)
        if t is not None and terms.not_after and t > terms.not_after.timestamp():
            return Verdict.fail(FailureCode.session_expired, "late", observed=obs)
        return Verdict.ok(
            "paid",
            observed=obs,
            settlement=self._settlement(proof, tx),
            references=tuple(tx.get("refs", [])),
        )

    def _settlement(self, ref: str, tx: dict[str, Any]) -> Settlement:
        fin = tx.get("finality", "finalized")
        return Settlement(
            ref=ref.lower(),
            finality=fin,
            is_final=fin == "finalized",
            reorged=fin == "reorged",
            slot=tx.get("slot", 1),
        )

    def finality(self, refs: list[str], chain: Any, expected: Any = None) -> list[Settlement]:
        got = chain.call("fake_getStatuses", [refs])
        return [
            Settlement(ref=r, finality=f, is_final=f == "finalized", reorged=f == "reorged")
            for r, f in zip(refs, got, strict=True)
        ]

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Any:
        raise RuntimeError("the fake rail has no live chain")


def fake_rail_toml(
    rail_id: str,
    stage: str = "live",
    production_enabled: bool = True,
    finality: str = '{ mode = "commitment", level = "finalized" }',
) -> str:
    """One fake rail's catalog entry (a test adds its own with `catalog_with_fake`)."""
    return f"""[rails.{rail_id}]
family = "fake"
stage = "{stage}"
production_enabled = {str(production_enabled).lower()}
network = "fakenet"
asset_symbol = "FUSD"
decimals = 6
proof_types = ["fake_tx"]
finality = {finality}
assets = {{ fakenet = "fusd" }}
"""


FAKE_CATALOG_EXTRA = (
    """
[families]
fake = "tests.fake_rail:FakeAdapter"
[networks.fakenet]
family = "fake"
"""
    + fake_rail_toml("fake_live")
    + fake_rail_toml("fake_gated", stage="gated", production_enabled=False)
    + fake_rail_toml("fake_review", stage="review_only", production_enabled=False)
)


def catalog_text_with_fake() -> str:
    """The shipped catalog's TOML plus the fake rails (adding rails touches only the catalog)."""
    shipped = resources.files("registry").joinpath("catalog.toml").read_text()
    text = shipped.replace("[families]\n", '[families]\nfake = "tests.fake_rail:FakeAdapter"\n', 1)
    extra = FAKE_CATALOG_EXTRA.split("[networks.fakenet]", 1)[1]
    return text + "\n[networks.fakenet]" + extra


def catalog_with_fake(fragment: str = "") -> Catalog:
    """The shipped catalog plus the fake rails, plus a test's own catalog fragment."""
    return parse_catalog(catalog_text_with_fake() + fragment)


class ScriptedChain:
    """A transport answering from a dict the test edits: {ref: tx or None}."""

    source = "cassette"

    def __init__(self) -> None:
        self.txs: dict[str, Any] = {}
        self.statuses: dict[str, str] = {}
        self.calls = 0
        self.fail_with: Exception | None = None

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        if method == "fake_getTransfer":
            return self.txs.get(params[0])
        if method == "fake_getStatuses":
            return [self.statuses.get(r, "confirmed") for r in params[0]]
        raise KeyError(method)
