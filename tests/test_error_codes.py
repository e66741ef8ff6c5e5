"""Every error code the code raises is a documented one: an API error code (ApiErrorCode,
listed in README's table) or a verification failure code (FailureCode). A code only the
source knows is a contract clients cannot branch on."""

from __future__ import annotations

import ast
from pathlib import Path

from verifier.core.checking import FailureCode
from verifier.http.errors import ApiErrorCode

ROOT = Path(__file__).resolve().parents[1]
ERRORS = {"BadInput", "NotFound", "Conflict", "Forbidden", "Refused", "Unauthorized"}


def _raised_codes() -> dict[str, set[str]]:
    """code -> files, for each error constructed with a literal code (or an f-string prefix
    such as f"invalid_{field}", reported by its prefix and the names it may take)."""
    found: dict[str, set[str]] = {}
    for path in [*ROOT.glob("verifier/**/*.py"), *ROOT.glob("rails/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name not in ERRORS:
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.setdefault(arg.value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_raised_code_is_documented():
    known = {c.value for c in ApiErrorCode} | {c.value for c in FailureCode}
    unknown = {code: sorted(files) for code, files in _raised_codes().items() if code not in known}
    assert unknown == {}


def test_the_scan_sees_the_codes_it_should():
    # The scan itself works: codes raised in several modules are found.
    codes = _raised_codes()
    assert {"invalid_amount", "operator_context_required", "release_gates_incomplete"} <= set(codes)
