"""The one small interface every rail family implements, and the values it speaks in.

An adapter is pure decision code: it asks the chain only through the `Transport` it is
handed and never touches storage. It is built once per resolved `Rail`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar, runtime_checkable

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from rails.codes import FailureCode
from rails.errors import MalformedResponse
from registry.catalog import Rail

# The largest slot, block number or confirmation count railproof keeps: what the settlement
# columns (BIGINT) hold. No chain comes near it; a node answering more is broken or lying.
MAX_CHAIN_INT = 2**63 - 1


def chain_int(value: Any, what: str) -> int:
    """A node's slot, block number or confirmation count, held to 0..MAX_CHAIN_INT: anything
    else is a malformed answer (pending rpc_unavailable), never a database error when the
    settlement is stored."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CHAIN_INT:
        raise MalformedResponse(f"{what}: {value!r:.80} is not a slot or block number")
    return value


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Status(StrEnum):
    verified = "verified"
    failed = "failed"
    pending = "pending"
    requires_review = "requires_review"


class Terms(Model):
    """What the payer was asked to do: the session, as pure data (no storage row)."""

    recipient: str
    amount: int = Field(gt=0)
    at_least: bool = False
    asset: str | None = None  # None: the rail's asset
    reference: str | None = None
    memo: str | None = None
    not_before: datetime | None = None  # session created_at (less the clock skew: generated refs)
    not_after: datetime | None = None  # session expires_at
    now: datetime  # the engine's clock (fixed when replaying recorded chains)
    # When the proof was submitted: a deadline the payment met then stays met when the proof
    # is checked again later (x402's validBefore). None: now.
    submitted_at: datetime | None = None
    sender: str | None = None  # when the payment names its payer (x402)
    # The reference is one railproof generated (Adapter.new_reference with the session's
    # seed): a key no one else can have put in a transaction, found wherever it is carried.
    reference_generated: bool = False


class Settlement(Model):
    """What the chain says about how final one transfer is. `is_final` applies the rail's
    finality policy; `reorged` means the transfer left the canonical chain."""

    ref: str  # the normalized proof reference it is about
    # solana: processed|confirmed|finalized; evm/tron: confirmed|finalized; or not_found|reorged
    finality: str
    is_final: bool = False
    reorged: bool = False
    slot: int | None = None
    block_number: int | None = None
    block_hash: str | None = None
    confirmations: int | None = None
    detail: str = ""
    # The transaction that settled it, where the proof does not name one (an x402 payment's
    # settlement, found on chain after the proof was verified).
    tx_hash: str | None = None
    # The settling block's timestamp, where the rail reads it (x402: a payment verified
    # before it settled has no other chain time for the apply gate's window check).
    block_time: datetime | None = None


class Observed(BaseModel):
    """Redacted evidence of what the chain (or the signed payload) said, one shape for every
    family. Amounts are strings of integer base units; `block_time` is a datetime here and
    ISO-8601 text once dumped (`as_dict`), which is how it is stored and returned.

    Families add their own evidence keys (slot, tx_hash, nonce…): `extra="allow"` keeps them
    without this model knowing each family."""

    model_config = ConfigDict(frozen=True, extra="allow")

    amount: str | None = None
    recipient: str | None = None
    sender: str | None = None
    asset: str | None = None
    network: str | None = None
    block_time: datetime | None = None
    block_number: int | None = None

    @field_serializer("block_time", when_used="json")
    def _iso(self, moment: datetime | None) -> str | None:
        # datetime.isoformat ("+00:00"), as the EVM and Tron evidence has always been stored.
        return moment.isoformat() if moment is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The stored JSON shape: datetimes as ISO text; unset family fields left out."""
        return self.model_dump(mode="json", exclude_unset=True)


def observed_dict(obs: Observed | Mapping[str, Any]) -> dict[str, Any]:
    return obs.as_dict() if isinstance(obs, Observed) else dict(obs)


class Verdict(Model):
    status: Status
    code: FailureCode | None = None
    detail: str = ""
    # The stored JSON shape of an `Observed` (verification_attempts.observed): the engine
    # reads "amount", "sender", "recipient" and "block_time" (ISO text) from it.
    observed: dict[str, Any] = Field(default_factory=dict)
    settlement: Settlement | None = None
    # The on-chain transfer's identities, whatever proof type named it: a proof that holds its
    # transfer holds every key, so one transfer backs one session (duplicate_payment).
    transfer_keys: tuple[str, ...] = ()
    # On rails that bind a reference: every key of the transfer that could be one session's
    # reference, so the engine can tell whether another open session's reference is in the
    # same transfer (ambiguous_transfer).
    references: tuple[str, ...] = ()

    @field_validator("observed", mode="before")
    @classmethod
    def _observed_as_dict(cls, value: Any) -> Any:
        return value.as_dict() if isinstance(value, Observed) else value

    @property
    def fails_once_final(self) -> FailureCode | None:
        """The failure this verdict's proof becomes once its block is final, when it failed a
        check and waits only for that (`pending not_final` from `Finding.verdict_once_final`,
        marked under FAILS_ONCE_FINAL_KEY); None for any other verdict."""
        said = self.observed.get(FAILS_ONCE_FINAL_KEY)
        if self.status is not Status.pending or self.code is not FailureCode.not_final:
            return None
        if not isinstance(said, str) or said not in {c.value for c in FailureCode}:
            return None
        return FailureCode(said)

    @classmethod
    def ok(cls, detail: str = "", **kw: Any) -> Verdict:
        return cls(status=Status.verified, detail=detail, **kw)

    @classmethod
    def fail(cls, code: FailureCode, detail: str, **kw: Any) -> Verdict:
        return cls(status=Status.failed, code=code, detail=detail, **kw)

    @classmethod
    def wait(cls, code: FailureCode, detail: str, **kw: Any) -> Verdict:
        return cls(status=Status.pending, code=code, detail=detail, **kw)

    @classmethod
    def review(cls, code: FailureCode, detail: str, **kw: Any) -> Verdict:
        return cls(status=Status.requires_review, code=code, detail=detail, **kw)


# How a pending detail ends when the proof failed a check its block's finality will confirm
# (`Finding.verdict_once_final`), for people to read.
FAILS_ONCE_FINAL = "failed once final"
# The observed key such a pending verdict carries, valued with the failure it becomes: the
# mark the engine reads (`Verdict.fails_once_final`; never the detail, which the quorum and
# the stage rules add to). Such a proof claims no transfer for another session.
FAILS_ONCE_FINAL_KEY = "fails_once_final"


@dataclass(frozen=True)
class Finding:
    """What one failed check says: its code and why. `review` holds the proof for a human
    instead of failing it (the chain data cannot decide); `evidence` adds observed keys."""

    code: FailureCode
    detail: str
    review: bool = False
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def verdict(self, observed: Observed | Mapping[str, Any]) -> Verdict:
        obs = observed_dict(observed) | dict(self.evidence)
        if self.review:
            return Verdict.review(self.code, self.detail, observed=obs)
        return Verdict.fail(self.code, self.detail, observed=obs)

    def verdict_once_final(
        self, where: Settlement, observed: Observed | Mapping[str, Any]
    ) -> Verdict:
        """A failure read from what a transaction did in its block (`where`: that block's
        finality under the rail's policy): `failed` once the block is final, before that
        `pending not_final` naming the failure it will become (the worker asks again)."""
        # SECURITY: a failed proof is terminal (the same proof submitted again returns it),
        # and a block not final yet may be replaced by one where the same signed transaction
        # does something else (succeeds, pays in full, lands inside the window).
        if where.is_final:
            return self.verdict(observed)
        obs = observed_dict(observed) | dict(self.evidence)
        obs |= {"finality": where.finality, FAILS_ONCE_FINAL_KEY: self.code.value}
        return Verdict.wait(
            FailureCode.not_final,
            f"{self.code.value}: {self.detail}, in a block not final yet ({where.detail}): "
            + FAILS_ONCE_FINAL,
            observed=obs,
        )


C = TypeVar("C")

# The one shape of a check in every family: the family's context in, a Finding or None out.
# A family lists its checks in a tuple, in the fixed order of rails.codes.
Check: TypeAlias = Callable[[C], Finding | None]


def first_finding(checks: Iterable[Check[C]], ctx: C) -> Finding | None:
    """The first check that finds something, in the order given."""
    for check in checks:
        found = check(ctx)
        if found is not None:
            return found
    return None


class PaymentRequirements(Model):
    """What the payer must do, in the rail's own vocabulary (`data`), plus a URL where the
    rail has one (Solana Pay)."""

    rail_id: str
    network: str
    asset: str
    recipient: str
    amount: str  # base units, as a string
    reference: str | None = None
    memo: str | None = None
    url: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class SessionShape(Model):
    """What `prepare` needs of a session."""

    id: str
    recipient: str
    amount: int
    reference: str | None
    memo: str | None
    expires_at: datetime
    access_product_id: str
    now: datetime | None = None  # the engine's clock (fixed when replaying recorded chains)


class InflowScan(StrEnum):
    """How the transfers into a treasury are listed on a family's chain (reconciliation's
    `chain_inflows` scope and the worker's discovery run the matching scan)."""

    # The treasury's token account's signature history (getSignaturesForAddress, paged),
    # then each new transaction; a transfer is bound by the session reference it carries.
    signatures = "signatures"
    # The token's Transfer(to=treasury) logs (eth_getLogs over bounded block ranges); a
    # transfer is bound by its sender as a session's payer, with that amount.
    transfer_logs = "transfer_logs"


@runtime_checkable
class Transport(Protocol):
    """Chain I/O: one JSON-RPC method call, returning the raw `result` member.

    Raises rails.errors.TransportError (transient or malformed) or CassetteError."""

    @property
    def source(self) -> str:
        """ "live" or "cassette" (a class attribute or an instance attribute)."""
        ...

    def call(self, method: str, params: list[Any]) -> Any: ...


class Adapter(Protocol):
    """What a rail family is, declared (the core reads these, never the family's name), and
    what it does."""

    family: ClassVar[str]
    # The networks the family settles on, as the catalog's [networks] tables name their
    # family (x402's exact scheme runs on "evm" networks). The catalog's [families] entry
    # states the same (registry cannot import rails); `rails.adapter_class` checks they agree.
    network_family: ClassVar[str]
    proof_types: ClassVar[tuple[str, ...]]
    # Per proof type, what a caller must submit (the proof contract's `required_fields`).
    proof_fields: ClassVar[Mapping[str, tuple[str, ...]]]
    # Whether verifying a proof reads the chain (a transaction id: offline that needs a
    # cassette), or the proof carries everything the checks need (a signed authorization).
    reads_chain: ClassVar[bool]
    # Whether a session reference (and memo) can be bound on chain: when True every session
    # carries a reference only its payment has (sessions generate one by default).
    binds_reference: ClassVar[bool]
    # Whether the transfer's sender can be checked against a session's payer
    # (sender_mismatch).
    binds_payer: ClassVar[bool]
    # Whether a session must name its payer: rails that can bind neither a reference nor an
    # authorization bind the transfer to a session by its sender.
    requires_payer: ClassVar[bool]
    # The refusal when the transfer already backs another session of the same owner.
    replay_code: ClassVar[FailureCode]
    # When a payment was made, for its session's window: False, its transfer's chain time;
    # True, when its proof was submitted (a signed authorization handed over inside the
    # window and settled by someone else, possibly after it closed). `chain_time_margin_s`:
    # how much earlier than the window's start the transfer's chain time may be, the chain's
    # clock not being railproof's. The apply gate checks the window as the rail does.
    paid_at_submission: ClassVar[bool]
    chain_time_margin_s: ClassVar[int]
    # How the transfers into a treasury are listed (reconciliation and discovery ask this,
    # never the family's name); None: the family's inflows are not scanned, and
    # `inflow_scan_gap` says why (a chain_inflows run then says nothing was checked).
    inflow_scan: ClassVar[InflowScan | None]
    inflow_scan_gap: ClassVar[str]
    # The kind of transfer identity every payment of this rail carries (the prefix of its
    # `Verdict.transfer_keys`, e.g. "eip3009"); None: any transfer of the rail's token can
    # pay it. A transfer found through another rail of the same token is a candidate for
    # this rail's sessions only if it is of that kind.
    paid_by: ClassVar[str | None]
    rail: Rail

    def __init__(self, rail: Rail) -> None: ...

    def normalize_proof(self, proof_type: str, raw: str) -> str:
        """The normalized reference used in the fingerprint; raises ProofMalformed."""

    def normalize_address(self, address: str, field: str = "recipient") -> str:
        """A valid address for this family in canonical form; raises ProofMalformed."""

    def proof_of(self, transfer_key: str) -> str | None:
        """The normalized proof of this rail that is, by itself, the transfer with this
        identity (an x402 authorization is its EIP-3009 identity), or None: none is."""

    def new_reference(self, seed: bytes | None = None) -> str | None:
        """A fresh reference for a session when the caller asks for "auto" (None: none): from
        `seed` (32 secret bytes only the deployment can compute again) when given, else
        random."""

    def reserved_references(self, wallets: Collection[str] = ()) -> frozenset[str]:
        """Accounts every transfer of the rail may carry (programs, sysvars, the asset) and,
        for each of `wallets` (a recipient, the treasuries), every account a payment to it
        carries (its token accounts): never a session's reference, which must single out one
        payment."""

    def prepare(self, session: SessionShape) -> PaymentRequirements: ...

    def verify(self, proof: str, terms: Terms, chain: Transport) -> Verdict:
        """`proof` is the raw proof as submitted (already shape-checked by normalize_proof)."""

    def finality(
        self,
        refs: list[str],
        chain: Transport,
        expected: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[Settlement]:
        """Batched settlement refresh for normalized refs of verified proofs. `expected`
        (ref → (recipient, amount)) lets a rail whose ref does not pin the transfer itself
        (x402: a nonce) check that the settlement paid what the session asked."""

    @classmethod
    def live_transport(cls, urls: list[str], network: str) -> Transport:
        """The live JSON-RPC transport for this family (retries, failover)."""


def canonical_json(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def fingerprint(family: str, network: str, proof_type: str, ref: str) -> str:
    """sha256 of canonical JSON {"v":1,"family","network","proof_type","ref"}. The owner is
    deliberately not part of it, so a proof replayed by another owner collides."""
    doc = {"v": 1, "family": family, "network": network, "proof_type": proof_type, "ref": ref}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def eip3009_key(chain_id: int, token: str, authorizer: str, nonce: str) -> str:
    """The transfer identity of one EIP-3009 authorization, shared by every proof type that
    can name it: an x402 payload, or the hash of the transaction that settled it."""
    return f"eip3009:{chain_id}:{token.lower()}:{authorizer.lower()}:{nonce.lower()}"
