"""Build the treasury-inflow cassettes in fixtures/solana/generated/inflows/.

Real transfers signed with deterministic keys and executed by the SPL programs in LiteSVM
(the harness of scripts/make_solana_cassettes.py), rendered as a node's `getTransaction`
(jsonParsed) answers, plus the `getSignaturesForAddress` pages of the treasury's USDC token
account that list them (newest first, pages of PAGE entries, `before` = the oldest signature
of the previous page). Pages asked with `before` are written first: a cassette matches a
request on the option keys it recorded, so the first page ({"limit"}) must come last.

    .venv/bin/python scripts/make_inflow_cassettes.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_solana_cassettes import (  # noqa: E402
    ALICE,
    BOB,
    DEMO_BLOCK_TIME,
    NETWORK,
    TREASURY,
    USDC,
    Chain,
    dump,
    key,
    render,
    transfer_checked,
    tx_calls,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "solana" / "generated" / "inflows"
PAGE = 2
HOW = (
    "real signed transfers executed by the SPL programs in LiteSVM (solders 0.29), rendered as getTransaction "
    "jsonParsed and listed as getSignaturesForAddress pages by scripts/make_inflow_cassettes.py"
)

# (case, payer, amount, seconds after 2026-01-01T00:00:00Z); each carries reference:inflow-<case>
CASES = (
    ("matched", ALICE, 1_000_000, 100),
    ("bound", BOB, 2_000_000, 200),
    ("unbound", ALICE, 3_000_000, 300),
    ("discovered", BOB, 4_000_000, 400),
)


def build() -> dict[str, Any]:
    c = Chain()
    usdc = c.make_mint("usdc", 6, at=USDC)
    c.fund(ALICE.pubkey(), usdc, 1_000 * 10**6)
    c.fund(BOB.pubkey(), usdc, 1_000 * 10**6)
    treasury_ata = c.open_account(TREASURY, usdc)
    t0 = DEMO_BLOCK_TIME - 60
    calls: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    expect: dict[str, Any] = {}
    for case, payer, amount, dt in CASES:
        ref = key(f"reference:inflow-{case}").pubkey()
        ex = c.send(
            [transfer_checked(payer, usdc, TREASURY, amount, 6, reference=ref)],
            [payer],
            block_time=t0 + dt,
        )
        result = render(ex, c)
        sig = result["transaction"]["signatures"][0]
        calls += tx_calls(sig, result)
        entries.append(
            {
                "blockTime": t0 + dt,
                "confirmationStatus": "finalized",
                "err": None,
                "memo": None,
                "signature": sig,
                "slot": result["slot"],
            }
        )
        expect[case] = {
            "signature": sig,
            "reference": str(ref),
            "amount": amount,
            "sender": str(payer.pubkey()),
            "block_time": t0 + dt,
        }
    newest_first = list(reversed(entries))
    pages = [newest_first[i : i + PAGE] for i in range(0, len(newest_first), PAGE)] + [[]]
    listing = []
    for n, page in enumerate(pages):
        opts: dict[str, Any] = {"limit": PAGE}
        if n:
            opts["before"] = pages[n - 1][-1]["signature"]
        listing.append(
            {
                "method": "getSignaturesForAddress",
                "params": [str(treasury_ata), opts],
                "result": page,
            }
        )
    listing = listing[1:] + listing[:1]  # pages with `before` first (see the module doc)
    return {
        "cassette": 1,
        "network": NETWORK,
        "source": "generated: treasury inflows",
        "how": HOW,
        "treasury": str(TREASURY),
        "token_account": str(treasury_ata),
        "page": PAGE,
        "expect": expect,
        "calls": listing + calls,
    }


def main() -> None:
    doc = build()
    path = OUT / "treasury_inflows.json"
    dump(path, doc)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
