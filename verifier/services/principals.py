"""Who a service token is, as stored rows name it: its principal, from the owners it acts for.

Idempotency claims, rate-limit buckets and webhook endpoints are keyed by the principal, so
every token for the same owners shares them; a deployment that changes a token's owners
changes its principal."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from verifier.core.config import HASHED_PRINCIPAL, PRINCIPAL_PREFIX

MAX_PRINCIPAL = 128  # the stored key's width (idempotency claims)


def principal_name(owners: Iterable[str]) -> str:
    """The owners, sorted and joined. A long list is named by its sha256 instead: a token
    acting for many owners must fit the claim's key, not fail on it."""
    name = PRINCIPAL_PREFIX + ",".join(sorted(owners))
    if len(name) <= MAX_PRINCIPAL:
        return name
    # No owner id begins with HASHED_PRINCIPAL (core.config), so this never names one owner.
    return PRINCIPAL_PREFIX + HASHED_PRINCIPAL + hashlib.sha256(name.encode()).hexdigest()


def still_held(service_tokens: Mapping[str, list[str]], owners: Iterable[str]) -> bool:
    """Whether a configured token still acts for every owner of `owners` (what an endpoint
    was created for): a token that gained owners keeps its endpoints; once an owner moved to
    another token, no token holds the set and the endpoint receives nothing more."""
    wanted = set(owners)
    return any(wanted <= set(held) for held in service_tokens.values())
