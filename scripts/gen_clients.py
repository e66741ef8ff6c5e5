"""Regenerate what the clients are built from: the OpenAPI document of the app
(clients/openapi.json) and the TypeScript types made from it by openapi-typescript
(clients/typescript/schema.d.ts). Run after changing the API: `make clients`.

    python scripts/gen_clients.py            # write both in place
    python scripts/gen_clients.py --out DIR  # write both into DIR (the drift test compares)
    python scripts/gen_clients.py --document-only  # the document alone (no node needed)

The document is the one `railproof serve` answers at /openapi.json with the shipped catalog;
building the app opens no database. The Python client's models are kept by hand and held to
this document by tests/test_clients.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLIENTS = REPO / "clients"
TS_DIR = CLIENTS / "typescript"
OPENAPI = "openapi.json"
SCHEMA_TS = "schema.d.ts"
GENERATOR = TS_DIR / "node_modules" / ".bin" / "openapi-typescript"


def openapi_document() -> dict[str, Any]:
    # The deployment's own settings must not shape the contract: none of RAILPROOF_* is read.
    for key in [k for k in os.environ if k.startswith("RAILPROOF_")]:
        del os.environ[key]
    sys.path.insert(0, str(REPO))
    from verifier.core.config import Settings
    from verifier.core.engine import Engine
    from verifier.http.app import create_app

    engine = Engine(Settings(database_url="sqlite:///:memory:", env={}))
    return create_app(engine).openapi()


def ensure_generator() -> Path:
    """openapi-typescript at the version package-lock.json pins (`npm ci` when missing)."""
    if not GENERATOR.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is not installed: node 20+ and npm are needed for the types")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, check=True)
    return GENERATOR


def generate(doc: Path, types: Path | None) -> None:
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    if types is None:
        return
    generator = ensure_generator()
    # --default-non-nullable false: a request field with a default (a session's `reference`)
    # stays optional to send.
    args = [str(generator), str(doc), "--output", str(types), "--default-non-nullable", "false"]
    subprocess.run(args, cwd=TS_DIR, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write both files here instead of in place")
    parser.add_argument("--document-only", action="store_true", help="no TypeScript (no node)")
    args = parser.parse_args()
    doc, types = (
        (args.out / OPENAPI, args.out / SCHEMA_TS)
        if args.out
        else (CLIENTS / OPENAPI, TS_DIR / SCHEMA_TS)
    )
    generate(doc, None if args.document_only else types)


if __name__ == "__main__":
    main()
