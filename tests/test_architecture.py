"""The layers of docs/architecture.md, kept true: which package may import which, what a
service may take from SQLAlchemy, that the HTTP layer never opens a transaction, and that the
README's layout names only folders that exist.

Each rule is checked over every module's source (parsed, not grepped; relative imports are
resolved against the module's package), so a new module that breaks a rule fails here and
names the line.
"""

from __future__ import annotations

import ast
import re
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

# All a service may import from SQLAlchemy: the Session type (the repo's functions take it),
# the exceptions it handles, and the session lifecycle events audit and events hook. Every
# statement (select, insert, update, delete, text, sqlalchemy.sql ...) is built in
# storage.repo.
SERVICES_MAY_IMPORT = ("sqlalchemy.orm.Session", "sqlalchemy.exc", "sqlalchemy.event")
# Names a service may not use at all: running a statement, asking for a row lock, or
# branching on the database (`engine.db.postgres`, `.dialect`, `rows.is_postgres`).
SERVICES_NEVER_USE = frozenset(
    {
        "execute",
        "exec_driver_sql",
        "scalar",
        "scalars",
        "query",
        "connection",
        "get_bind",
        "with_for_update",
        "dialect",
        "postgres",
        "is_postgres",
    }
)
# Uses of `Any` in verifier/services (names in annotations and code; the `from typing import`
# lines, comments and prose are not counted). A ratchet: lower it when a precise type replaces
# one, never raise it — a model, verdict, rail or adapter has its own type.
SERVICES_ANY_CEILING = 138
# The HTTP layer never holds the database: no `engine.db`, no transaction of its own.
HTTP_NEVER_USES = frozenset({"db", "tx", "begin", "begin_nested"})


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(
    source: str, module: str, package: bool, leaves: bool = False
) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`, the source of `module`
    (`package`: it is a package's __init__). `from a import b` gives `a` and `a.b`, or only
    `a.b` with `leaves`; relative imports are resolved against the module's package."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not leaves and node.module:
                out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _file_imports(path: Path, leaves: bool = False) -> list[tuple[int, str]]:
    return _imports(path.read_text(), _module(path), path.name == "__init__.py", leaves)


def _names_used(source: str, names: frozenset[str]) -> list[tuple[int, str]]:
    """(line, name) of every attribute, name or keyword argument in `names`."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            out.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Name) and node.id in names:
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.keyword) and node.arg in names:
            out.append((node.lineno, f"{node.arg}="))
    return out


def _sqlalchemy_not_allowed(imports: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [
        (line, name)
        for line, name in imports
        if _within(name, "sqlalchemy") and not any(_within(name, a) for a in SERVICES_MAY_IMPORT)
    ]


def _sources(under: str | None = None) -> list[Path]:
    tops = (under,) if under else ("registry", "rails", "verifier")
    return sorted(
        p for top in tops for p in (ROOT / top).rglob("*.py") if "migrations" not in p.parts
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
        for line, name in _file_imports(path):
            for banned in RULES[package]:
                if _within(name, banned):
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not broken, "\n".join(sorted(set(broken)))


def test_relative_imports_are_resolved_against_the_package():
    # A relative import must not slip past the rules above.
    src = "from ..storage import models\nfrom . import deps\nfrom .routes.proofs import x\n"
    got = {name for _, name in _imports(src, "verifier.http.app", package=False)}
    assert {"verifier.storage", "verifier.storage.models", "verifier.http.deps"} <= got
    assert "verifier.http.routes.proofs.x" in got
    got = {name for _, name in _imports("from .. import storage\n", "verifier.http", True)}
    assert got == {"verifier.storage"}


def test_services_build_no_sql_and_never_branch_on_the_database():
    broken = []
    for path in _sources("verifier/services"):
        rel = path.relative_to(ROOT)
        for line, name in _sqlalchemy_not_allowed(_file_imports(path, leaves=True)):
            broken.append(f"{rel}:{line} imports {name}")
        for line, name in _names_used(path.read_text(), SERVICES_NEVER_USE):
            broken.append(f"{rel}:{line} uses {name}")
    assert not broken, "SQL and dialect branches belong in verifier/storage/repo:\n" + "\n".join(
        sorted(broken)
    )


def test_the_service_rule_catches_sql_however_it_is_written():
    imports = _imports(
        "import sqlalchemy as sa\n"
        "from sqlalchemy import select, update, text\n"
        "from sqlalchemy.sql import func\n"
        "from sqlalchemy.orm import Session, aliased\n"
        "from sqlalchemy.exc import IntegrityError\n"
        "from sqlalchemy import event\n",
        "verifier.services.x",
        package=False,
        leaves=True,
    )
    assert {name for _, name in _sqlalchemy_not_allowed(imports)} == {
        "sqlalchemy",
        "sqlalchemy.select",
        "sqlalchemy.update",
        "sqlalchemy.text",
        "sqlalchemy.sql.func",
        "sqlalchemy.orm.aliased",
    }
    used = _names_used(
        "ep = s.get(M, k, with_for_update=engine.db.postgres)\n"
        "if conn.dialect.name == 'postgresql': s.execute(q)\n"
        "rows.is_postgres(s)\n",
        SERVICES_NEVER_USE,
    )
    assert {name for _, name in used} == {
        "with_for_update=",
        ".postgres",
        ".dialect",
        ".execute",
        ".is_postgres",
    }


def _any_uses(source: str) -> list[int]:
    """The line of every use of `Any` (`Any` or `typing.Any`); an import is not a use."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if (isinstance(node, ast.Name) and node.id == "Any")
        or (isinstance(node, ast.Attribute) and node.attr == "Any")
    ]


def test_services_gain_no_any():
    uses = {
        path.relative_to(ROOT): len(_any_uses(path.read_text()))
        for path in _sources("verifier/services")
    }
    total = sum(uses.values())
    worst = ", ".join(f"{p}: {n}" for p, n in sorted(uses.items(), key=lambda i: -i[1]) if n)
    assert total <= SERVICES_ANY_CEILING, (
        f"verifier/services uses Any {total} times, more than {SERVICES_ANY_CEILING}: type the "
        f"new parameter or return precisely ({worst})"
    )


def test_the_any_count_sees_uses_not_imports_or_prose():
    source = (
        '"""Any other refusal."""\n'
        "from typing import Any\n"
        "import typing\n"
        "# Any comment\n"
        "def f(x: Any, y: dict[str, Any]) -> typing.Any:\n"
        "    z: list[Any] = []\n"
    )
    assert sorted(_any_uses(source)) == [5, 5, 5, 6]


def test_http_never_opens_a_transaction():
    broken = [
        f"{path.relative_to(ROOT)}:{line} uses {name}"
        for path in _sources("verifier/http")
        for line, name in _names_used(path.read_text(), HTTP_NEVER_USES)
    ]
    assert not broken, "a service opens the transaction:\n" + "\n".join(sorted(broken))
    used = _names_used("with engine.db.tx() as s: pass\nconn.begin()\n", HTTP_NEVER_USES)
    assert {name for _, name in used} == {".db", ".tx", ".begin"}


def test_every_layer_named_in_the_rules_exists():
    # A renamed package would make its rule vacuous.
    for package in RULES:
        assert (ROOT / package.replace(".", "/")).is_dir(), package
    for allowed in SERVICES_MAY_IMPORT:
        module, _, attr = allowed.rpartition(".")
        assert hasattr(__import__(module, fromlist=[attr]), attr), allowed


def test_the_rules_are_the_documented_ones():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for package, banned in RULES.items():
        line = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{package}`")), None)
        assert line is not None, f"docs/architecture.md has no row for {package}"
        for b in banned:
            assert f"`{b}`" in line, f"{package}: the document does not say it never imports {b}"
    rows = {ln.split("|")[1].strip(): ln for ln in doc.splitlines() if ln.startswith("| `")}
    services, http = rows["`verifier.services`"], rows["`verifier.http`"]
    for name in ("sqlalchemy", *SERVICES_MAY_IMPORT, *SERVICES_NEVER_USE):
        assert f"`{name}`" in services, f"verifier.services: the document does not name {name}"
    for name in HTTP_NEVER_USES:
        assert f"`{name}`" in http, f"verifier.http: the document does not say it never uses {name}"


_PATH = re.compile(r"[\w.-]+(?:/[\w.-]*)+")


def _layout() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```")[1].splitlines()


def test_the_readme_layout_names_only_folders_that_exist():
    """Each path in the block (`rails/`, `repo/`, `rails/base.py`, `clients/python` ...) exists,
    from the root, its top-level folder or the sub-folder whose line it is on."""
    missing, top, sub = [], ROOT, ROOT
    for line in _layout():
        entry = re.match(r"(\s*)([\w.-]+)/\s", line)
        if entry and not entry[1]:
            top = sub = ROOT / entry[2]
        elif entry:
            sub = top / entry[2]
        for token in _PATH.findall(line):
            if not any((base / token).exists() for base in (ROOT, top, sub)):
                missing.append(f"{token!r} in {line.strip()!r}")
    assert not missing, "README.md's Layout names what does not exist:\n" + "\n".join(missing)


def test_the_readme_layout_names_every_package_of_verifier():
    block = "\n".join(_layout())
    packages = sorted(
        p.parent.name for p in (ROOT / "verifier").glob("*/__init__.py") if p.parent.name
    )
    assert packages, "verifier/ has no sub-packages"
    unnamed = [p for p in packages if not re.search(rf"(?<![\w/]){p}/", block)]
    assert not unnamed, f"README.md's Layout does not name verifier/{unnamed}"
