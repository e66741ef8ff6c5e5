"""Offline verification of one recorded proof: no database, no network. The same adapter and
run_verify as the service, over a cassette."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rails import adapter_for
from rails.base import Adapter, Terms
from rails.cassette import CassetteTransport, read_cassette
from rails.errors import CassetteError, ProofMalformed, UnmatchedRequest
from rails.files import read_regular
from registry.catalog import CatalogError, RailOverrides, load_catalog
from verifier.core.checking import run_verify

# The command's options an adapter's ProofMalformed can name (by their field name).
_OPTIONS = frozenset({"proof", "recipient", "asset", "payer", "reference", "memo"})


class UsageError(ValueError):
    """Bad arguments or an unreadable cassette (the CLI exits 2 with this message)."""


@dataclass
class OfflineRequest:
    rail: str
    proof: str
    recipient: str
    amount: int
    cassette: Path | None = None
    asset: str | None = None
    network: str | None = None
    reference: str | None = None
    memo: str | None = None
    payer: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    now: datetime | None = None
    at_least: bool = False


class _Watch:
    """Remembers an unmatched request: the cassette does not hold this proof."""

    def __init__(self, inner: CassetteTransport):
        self.inner, self.source = inner, inner.source
        self.unmatched: UnmatchedRequest | None = None

    def call(self, method: str, params: list[Any]) -> Any:
        try:
            return self.inner.call(method, params)
        except UnmatchedRequest as e:
            self.unmatched = e
            raise


def _utc(d: datetime | None) -> datetime | None:
    return None if d is None else (d.replace(tzinfo=UTC) if d.tzinfo is None else d)


def proof_text(arg: str) -> str:
    """--proof is a file (an x402 payload saved as JSON or header text) or the proof itself.
    Deciding which never raises: a value the OS cannot take as a path (an X-PAYMENT header is
    longer than a file name may be, and may hold `/`, NUL or anything) is the proof itself."""
    try:
        is_file = Path(arg).is_file()
    except (OSError, ValueError):  # name too long, NUL in the name, ...
        return arg
    if not is_file:
        return arg
    try:
        return read_regular(arg).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"--proof: cannot read {arg}: {type(e).__name__}: {getattr(e, 'strerror', None) or e}"
        ) from e


def _unbindable_terms(req: OfflineRequest, adapter: Adapter) -> None:
    """A reference or memo asked of a rail whose proof is only a signed authorization (x402):
    refused, as a session on that rail refuses them. The command checks exactly the terms it
    is given, and this proof could never carry one. (Rails that read a transaction answer such
    a term requires_review: reference_missing or memo_mismatch.)"""
    if adapter.binds_reference or adapter.reads_chain:
        return
    for field, value in (("reference", req.reference), ("memo", req.memo)):
        if value is not None:
            raise ProofMalformed(
                field,
                f"rail {adapter.rail.rail_id} cannot bind a {field}: its proof is a signed "
                "authorization, which carries none",
            )


def _payer(adapter: Adapter, given: str | None) -> str | None:
    if given is None:
        return None
    if not adapter.binds_payer:
        raise ProofMalformed(
            "payer", f"rail {adapter.rail.rail_id} binds payments by reference, not by payer"
        )
    return adapter.normalize_address(given, "payer")


def _reference(adapter: Adapter, given: str | None) -> str | None:
    """The reference in the rail's own form, as a session takes it: a typo or a pasted key
    with a space is bad input (exit 2), never a genuine payment's `reference_missing`. Rails
    that bind none answer the term `reference_missing` from the transaction (see
    `_unbindable_terms`)."""
    if given is None or not adapter.binds_reference:
        return given
    return adapter.normalize_address(given, "reference")


def verify_offline(req: OfflineRequest) -> dict[str, Any]:
    cat = load_catalog()
    if req.rail not in cat.rails:
        raise UsageError(f"--rail: unknown rail {req.rail!r} (known: {', '.join(cat.rails)})")
    try:
        rail = cat.resolve(req.rail, RailOverrides(network=req.network, asset=req.asset))
    except CatalogError as e:
        raise UsageError(f"--network/--asset: {e}") from e
    if req.amount <= 0:
        raise UsageError("--amount: must be a positive integer of base units")
    proof = proof_text(req.proof)
    try:
        # An adapter may parse its rail's asset when it is built (x402: the token domain).
        adapter = adapter_for(rail)
        if req.asset is not None:
            adapter.normalize_address(req.asset, "asset")
        _unbindable_terms(req, adapter)
        adapter.normalize_proof(rail.proof_types[0], proof)
        recipient = adapter.normalize_address(req.recipient, "recipient")
        payer = _payer(adapter, req.payer)
        reference = _reference(adapter, req.reference)
    except ProofMalformed as e:
        # A field of the proof itself (x402: `authorization.to`) is named inside --proof.
        where = f"--{e.field}" if e.field in _OPTIONS else f"--proof: {e.field}"
        raise UsageError(f"{where}: {e.message}") from e
    try:
        chain = (
            CassetteTransport.from_files([req.cassette]) if req.cassette else CassetteTransport([])
        )
        recorded = read_cassette(req.cassette)["network"] if req.cassette else rail.network
    except CassetteError as e:
        raise UsageError(f"--cassette: {e}") from e
    # SECURITY: nothing in a Solana answer names its cluster: the cassette's label is the only
    # evidence of where a transfer happened, and a devnet transfer pays no mainnet session.
    if recorded != rail.network:
        raise UsageError(
            f"--cassette: recorded on {recorded}; rail {rail.rail_id} is on {rail.network} "
            f"(--network {recorded} to verify it there)"
        )
    watch = _Watch(chain)
    terms = Terms(
        recipient=recipient,
        amount=req.amount,
        at_least=req.at_least,
        asset=rail.asset,
        reference=reference,
        memo=req.memo,
        sender=payer,
        not_before=_utc(req.not_before),
        not_after=_utc(req.not_after),
        now=_utc(req.now) or datetime.now(UTC),
    )
    checked = run_verify(adapter, proof, terms, watch)
    if watch.unmatched is not None and req.cassette is not None:
        raise UsageError(f"--cassette: {req.cassette} has {watch.unmatched}")
    v = checked.verdict
    observed = dict(v.observed)
    if v.settlement is not None:
        observed["finality"] = v.settlement.finality
        # A settlement the node's own answers disagree on (a status with an error) is not
        # final whatever its level: say so, as the apply gate would.
        observed["is_final"] = v.settlement.is_final
        if not v.settlement.is_final and v.settlement.detail:
            observed["settlement_detail"] = v.settlement.detail
        if v.settlement.slot is not None:
            observed.setdefault("slot", v.settlement.slot)
        if v.settlement.block_number is not None:
            observed.setdefault("block_number", v.settlement.block_number)
    return {
        "status": v.status.value,
        "failure_code": v.code.value if v.code else None,
        "detail": v.detail,
        "observed": observed,
        "rpc_calls": checked.rpc_calls,
        "source": checked.source,
    }
