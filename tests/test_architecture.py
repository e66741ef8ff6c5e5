"""The layers of docs/architecture.md, kept true: which package may import which.

Each rule is checked over every module's import statements (parsed, not grepped), so a new
module that breaks a rule fails here and names the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package (path prefix) → prefixes it must never import
RULES: dict[str, tuple[str, ...]] = {
    "registry": ("rails", "verifier"),  # pure: the catalog, stages, contracts, readiness
    "rails": ("verifier",),  # adapters and transports: no database, no engine
    "verifier.core": (
        "verifier.services",
        "verifier.http",
        "verifier.cli",
        "verifier.worker",
        "verifier.tools",
    ),
    "verifier.storage": (
        "verifier.services",
        "verifier.http",
        "verifier.cli",
        "verifier.worker",
        "verifier.tools",
        "rails",
    ),
    "verifier.services": ("verifier.http", "verifier.cli", "verifier.worker", "verifier.tools"),
    "verifier.worker": ("verifier.http", "verifier.cli", "verifier.tools"),
    # Routes call services; only services (through storage.repo) reach the database.
    "verifier.http": (
        "verifier.storage",
        "verifier.cli",
        "verifier.worker",
        "verifier.tools",
        "sqlalchemy",
    ),
}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _sources() -> list[Path]:
    return sorted(
        p
        for top in ("registry", "rails", "verifier")
        for p in (ROOT / top).rglob("*.py")
        if "migrations" not in p.parts
    )


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(RULES))
def test_layer_imports_only_what_it_may(package):
    broken = []
    for path in _sources():
        mod = _module(path)
        if not _within(mod, package):
            continue
        for line, name in _imports(path):
            for banned in RULES[package]:
                if _within(name, banned):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not broken, "\n".join(sorted(set(broken)))


def test_every_layer_named_in_the_rules_exists():
    # A renamed package would make its rule vacuous.
    for package in RULES:
        assert (ROOT / package.replace(".", "/")).is_dir(), package


def test_the_rules_are_the_documented_ones():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for package, banned in RULES.items():
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{package}`")), None)
        assert line is not None, f"docs/architecture.md has no row for {package}"
        for b in banned:
            assert f"`{b}`" in line, f"{package}: the document does not say it never imports {b}"
