"""`railproof record`: make a cassette from a live RPC by running exactly the calls one
verification and one finality refresh make, through a recording transport. A progress bar
(one unit per proof, one for finality) is drawn when stdout is a terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from rails import adapter_for
from rails.base import Terms
from rails.errors import ProofMalformed, RailError
from rails.files import unwritable
from rails.recording import RecordingTransport, live_transport_for
from rails.transport.failover import provider_of
from registry.catalog import CatalogError, RailOverrides, load_catalog
from verifier.cli.progress import progress


def record_cassette(
    rail_id: str,
    network: str,
    urls: list[str],
    proofs: list[str],
    out: Path,
    recipient: str,
    amount: int = 1,
    progress_stream: IO[str] | None = None,
) -> int:
    check_out(out)
    cat = load_catalog()
    if rail_id not in cat.rails:
        raise ValueError(f"--rail: unknown rail {rail_id!r}")
    try:
        rail = cat.resolve(rail_id, RailOverrides(network=network))
    except CatalogError as e:
        raise ValueError(f"--network: {e}") from e
    adapter = adapter_for(rail)
    try:
        recipient = adapter.normalize_address(recipient, "recipient")
        refs = [adapter.normalize_proof(rail.proof_types[0], p) for p in proofs]
    except ProofMalformed as e:
        raise ValueError(f"--{e.field}: {e.message}") from e
    rec = RecordingTransport(live_transport_for(network, urls))
    terms = Terms(recipient=recipient, amount=amount, at_least=True, now=datetime.now(UTC))
    try:
        with progress("recording", len(proofs) + 1, stream=progress_stream) as advance:
            for i, p in enumerate(proofs, 1):
                adapter.verify(p, terms, rec)
                advance(f"proof {i}/{len(proofs)}")
            adapter.finality(refs, rec)
            advance("finality")
    except RailError as e:
        raise ValueError(f"recording stopped: {type(e).__name__}: {e}") from e
    # SECURITY: cassettes are committed and shipped: the source names each node by scheme and
    # host only (a key rides in a URL's user information, path or query).
    hosts = ", ".join(provider_of(u) for u in urls)
    try:
        rec.write(out, network, f"railproof record from {hosts}")
    except OSError as e:  # the checks before recording cannot foresee everything (a full disk)
        raise ValueError(f"--out: cannot write {out}: {e.strerror or e}") from e
    return len(rec.calls)


def check_out(out: Path) -> None:
    """ValueError naming --out when the cassette could not be written there: said before the
    recording runs (many calls to a paid node), not after it."""
    why = unwritable(out, make_dirs=True)  # RecordingTransport.write makes them
    if why is not None:
        raise ValueError(f"--out: cannot write {out}: {why}")
