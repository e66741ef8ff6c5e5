"""The committed client artefacts are what `make clients` makes from the app today: the OpenAPI
document (clients/openapi.json) and the TypeScript types generated from it by the pinned
openapi-typescript (clients/typescript/schema.d.ts); and the usage example type-checks against
those types with the pinned TypeScript compiler, and runs against `railproof serve`."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import REPO

CLIENTS = REPO / "clients"
TS_DIR = CLIENTS / "typescript"
REGENERATE = "run `make clients` and commit the result"


def _generate(out: Path, *extra: str) -> Path:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_clients.py"), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document and, with node and npm, the types, as `make clients` makes them now."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are missing under CI")
        return _generate(tmp_path_factory.mktemp("clients"), "--document-only")
    return _generate(tmp_path_factory.mktemp("clients"))


def _types(regenerated: Path) -> Path:
    if not (regenerated / "schema.d.ts").exists():
        pytest.skip("node and npm are not installed: the TypeScript types are not checked")
    return regenerated / "schema.d.ts"


def _same(committed: Path, fresh: Path) -> None:
    assert committed.exists(), f"{committed.relative_to(REPO)} is missing: {REGENERATE}"
    want, got = fresh.read_text(), committed.read_text()
    if want != got:
        diff = "".join(
            list(
                difflib.unified_diff(
                    got.splitlines(keepends=True),
                    want.splitlines(keepends=True),
                    str(committed.relative_to(REPO)),
                    "regenerated",
                )
            )[:60]
        )
        pytest.fail(f"{committed.relative_to(REPO)} is out of date: {REGENERATE}\n{diff}")


def test_the_committed_openapi_document_is_the_apps(regenerated: Path):
    _same(CLIENTS / "openapi.json", regenerated / "openapi.json")


def test_the_committed_typescript_types_are_generated_from_it(regenerated: Path):
    _same(TS_DIR / "schema.d.ts", _types(regenerated))


def test_the_typescript_example_type_checks(regenerated: Path):
    _types(regenerated)
    tsc = TS_DIR / "node_modules" / ".bin" / "tsc"  # installed by gen_clients' `npm ci`
    run = subprocess.run(
        [str(tsc), "--noEmit", "-p", str(TS_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TS_DIR,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_type_check_catches_a_body_the_api_would_refuse(regenerated: Path, tmp_path: Path):
    _types(regenerated)
    # The same compiler and types on a body without its amount: the check above can fail.
    shutil.copy(TS_DIR / "schema.d.ts", tmp_path / "schema.d.ts")
    bad = tmp_path / "bad.ts"
    bad.write_text(
        'import type { components } from "./schema";\n'
        'export const body: components["schemas"]["SessionIn"] = '
        '{ owner_id: "o", rail_id: "solana_usdc", access_product_id: "p" };\n'
    )
    tsc = TS_DIR / "node_modules" / ".bin" / "tsc"
    run = subprocess.run(
        [str(tsc), "--noEmit", "--strict", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert "TS2741" in run.stdout and "'amount'" in run.stdout, run.stdout


RUN_EXAMPLE = """
import { ApiError, Railproof } from "./example.js";

const [base, token, reference, signature] = process.argv.slice(2);
const rp = new Railproof(base, token);
const body = {
  owner_id: "demo-owner", rail_id: "solana_usdc", access_product_id: "api-credits",
  amount: "1500000", reference, memo: "order-1001",
};
const session = await rp.openSession(body, "ts-walk-s-1");
const again = await rp.openSession(body, "ts-walk-s-1");
const submitted = await rp.submitProof({ session_id: session.id, proof: signature });
const proof = await rp.getProof(submitted.id);
let error = null;
try {
  await rp.openSession({ ...body, access_product_id: "no spaces allowed" });
} catch (e) {
  error = e instanceof ApiError ? { status: e.status, ...e.detail } : String(e);
}
console.log(JSON.stringify({ session, again: again.id, proof, error }));
"""


@pytest.mark.slow
def test_the_typescript_example_runs_against_railproof_serve(regenerated: Path, tmp_path: Path):
    from railproof_client import Proof, Session

    from tests.test_clients import REFERENCE, SIGNATURE, TOKEN, _serve

    _types(regenerated)
    out = tmp_path / "js"
    tsc = TS_DIR / "node_modules" / ".bin" / "tsc"
    build = [str(tsc), "-p", str(TS_DIR), "--noEmit", "false", "--outDir", str(out)]
    run = subprocess.run(build, capture_output=True, text=True, timeout=300, cwd=TS_DIR)
    assert run.returncode == 0, run.stdout + run.stderr
    (out / "package.json").write_text('{"type": "module"}\n')
    (out / "run.js").write_text(RUN_EXAMPLE)

    api, _ = _serve(tmp_path)
    try:
        run = subprocess.run(
            [shutil.which("node") or "node", "run.js", api.url, TOKEN, REFERENCE, SIGNATURE],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=out,
        )
    finally:
        api.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout)
    # What the typed calls received is what the types say (read by the document-checked models).
    session, proof = Session.model_validate(got["session"]), Proof.model_validate(got["proof"])
    assert got["again"] == session.id and session.reference == REFERENCE
    assert (proof.session_id, proof.status) == (session.id, "verified")
    assert got["error"]["status"] == 422 and got["error"]["field"] == "access_product_id"
