"""Benchmark figures of discovery and reconciliation, for `railproof bench`:

- `discovery_rpc_calls_per_payment`: N open sessions paid in one window, one worker watch of
  the treasury; discovery's own chain calls (the paged signature listing plus one transaction
  fetch per new inflow) per payment found. Target ≤ 1.2 at N = 1,000: the watch is shared,
  not one poll per session. (Verifying each submitted proof costs its own calls, counted in
  its attempt as for any proof.)
- `reconcile_inflows_per_s`: a `chain_inflows` dry run over a recorded window of M inflows
  (served from memory, so this measures railproof, not a node).

Synthetic transfers are copies of the LiteSVM-made transfer in
fixtures/solana/generated/inflows/ with fresh signatures and reference keys (swapped as text).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from solders.keypair import Keypair

from rails.cassette import Call, CassetteTransport, CountingTransport
from verifier.core.config import REPO_FIXTURES, Settings

INFLOWS = REPO_FIXTURES / "solana" / "generated" / "inflows" / "treasury_inflows.json"
CLOCK = datetime(2026, 1, 1, tzinfo=UTC)
PAGE = 1000


def synthetic_window(n: int) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """(recorded calls, the references the transfers carry, the template document): n copies
    of the recorded transfer into the treasury, listed newest first in pages of PAGE."""
    doc = json.loads(INFLOWS.read_text())
    exp = doc["expect"]["discovered"]
    sig, ref = exp["signature"], exp["reference"]
    by = {(c["method"], json.dumps(c["params"][0])): c for c in doc["calls"]}
    tx = by[("getTransaction", json.dumps(sig))]
    status = by[("getSignatureStatuses", json.dumps([sig]))]
    blob = json.dumps(tx["result"])
    calls, refs, entries = [], [], []
    for _ in range(n):
        new_sig = str(Keypair().sign_message(b"railproof-bench-discovery"))
        new_ref = str(Keypair().pubkey())
        result = json.loads(blob.replace(sig, new_sig).replace(ref, new_ref))
        calls.append(
            {"method": "getTransaction", "params": [new_sig, tx["params"][1]], "result": result}
        )
        calls.append(
            {
                "method": "getSignatureStatuses",
                "params": [[new_sig], status["params"][1]],
                "result": status["result"],
            }
        )
        entries.append(
            {
                "blockTime": exp["block_time"],
                "confirmationStatus": "finalized",
                "err": None,
                "memo": None,
                "signature": new_sig,
                "slot": result["slot"],
            }
        )
        refs.append(new_ref)
    entries.reverse()
    pages = [entries[i : i + PAGE] for i in range(0, len(entries), PAGE)]
    if not pages or len(pages[-1]) == PAGE:
        pages.append([])
    listing = []
    for k, page in enumerate(pages):
        opts: dict[str, Any] = {"limit": PAGE}
        if k:
            opts["before"] = pages[k - 1][-1]["signature"]
        listing.append(
            {
                "method": "getSignaturesForAddress",
                "params": [doc["token_account"], opts],
                "result": page,
            }
        )
    # Pages asked with `before` first: a recorded call matches on the option keys it has.
    return listing[1:] + listing[:1] + calls, refs, doc


def _engine(tmp: Path, doc: dict[str, Any]) -> Any:
    from verifier.core.engine import Engine
    from verifier.storage.db import upgrade

    url = f"sqlite:///{tmp}/bench.db"
    upgrade(url)
    settings = Settings(
        database_url=url,
        chain="cassette",
        cassette_dir=tmp / "none",
        clock=CLOCK,
        discovery=True,
        discovery_page_limit=PAGE,
        audit_key="bench-audit-key",
        env={"RAILPROOF_TREASURY_SOLANA_USDC": doc["treasury"]},
    )
    e = Engine(settings)
    e.ensure_rail_states()
    return e


def discovery_figures(sessions: int = 1000, inflows: int = 10_000) -> dict[str, Any]:
    from verifier.services import discovery, reconciliation
    from verifier.services.sessions import NewSession, open_session

    out: dict[str, Any] = {"discovery_sessions": sessions, "reconcile_window_inflows": inflows}
    tmp = Path(tempfile.mkdtemp(prefix="railproof-bench-discovery-"))
    try:
        calls, refs, doc = synthetic_window(sessions)
        (tmp / "a").mkdir()
        e = _engine(tmp / "a", doc)
        chain = CountingTransport(CassetteTransport([Call(c) for c in calls]))
        e.chains.set_transport("solana-mainnet", chain)
        amount = doc["expect"]["discovered"]["amount"]
        for r in refs:
            open_session(
                e,
                NewSession(
                    owner_id="bench",
                    rail_id="solana_usdc",
                    access_product_id="p",
                    amount=amount,
                    reference=r,
                ),
                actor="bench",
            )
        t0 = time.perf_counter()
        res = discovery.watch_solana(e, e.rail("solana_usdc"))
        out["discovery_seconds"] = round(time.perf_counter() - t0, 3)
        out["discovery_payments"] = res["submitted"]
        out["discovery_rpc_calls"] = res["rpc_calls"]
        out["discovery_rpc_calls_per_payment"] = (
            round(res["rpc_calls"] / res["submitted"], 4) if res["submitted"] else None
        )
        out["discovery_total_rpc_calls_per_payment"] = (
            round(chain.calls / res["submitted"], 4) if res["submitted"] else None
        )
        e.db.dispose()

        calls, _, doc = synthetic_window(inflows)
        (tmp / "b").mkdir()
        e = _engine(tmp / "b", doc)
        e.settings.reconcile_max_pages = inflows // PAGE + 2
        e.chains.set_transport("solana-mainnet", CassetteTransport([Call(c) for c in calls]))
        t0 = time.perf_counter()
        run = reconciliation.run(
            e,
            reconciliation.RunRequest(
                scope="chain_inflows",
                rail_id="solana_usdc",
                limit=min(inflows, reconciliation.MAX_LIMIT),
                incident_id="BENCH",
                operator_reason="bench: reconcile a recorded window",
            ),
            "bench",
        )
        dt = time.perf_counter() - t0
        out["reconcile_status"] = run["status"]
        out["reconcile_inflows_checked"] = run["summary"].get("inflows", 0)
        out["reconcile_seconds"] = round(dt, 3)
        out["reconcile_inflows_per_s"] = (
            round(run["summary"].get("inflows", 0) / dt, 1) if dt else None
        )
        e.db.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":  # pragma: no cover - a manual run
    import sys

    print(json.dumps(discovery_figures(*(int(a) for a in sys.argv[1:3])), indent=2))
