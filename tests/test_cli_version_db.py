"""The CLI's `--version`, `db current` and `db history`, and a help text on every option."""

import re
from importlib.metadata import version

import pytest
import typer
from sqlalchemy import text
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from verifier.cli.main import app
from verifier.storage.db import Database, NotMigrated, require_migrated, upgrade


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_version_prints_the_installed_version():
    r = cli("--version")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"railproof {version('railproof')}\n"


def test_db_history_lists_migrations_oldest_first_with_descriptions():
    r = cli("db", "history")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    revisions = [line.split()[0] for line in lines]
    assert revisions[0] == "0001" and revisions == sorted(revisions)
    assert lines[0] == "0001  initial schema"
    assert all(re.fullmatch(r"\d{4}  \S.*", line) for line in lines)
    # A description wrapped over two lines in the migration is printed whole.
    assert any(line.endswith("one holding proof per fingerprint, transfer holds") for line in lines)


def test_db_current_says_whether_the_database_is_at_head(empty_url, monkeypatch):
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", empty_url)
    head = cli("db", "history").stdout.splitlines()[-1].split()[0]

    r = cli("db", "current")
    assert r.exit_code == 1 and "empty (never migrated)" in r.stdout
    assert "railproof db upgrade" in r.stdout

    upgrade(empty_url, "0001")
    r = cli("db", "current")
    assert r.exit_code == 1 and f"0001, head is {head}" in r.stdout

    upgrade(empty_url)
    r = cli("db", "current")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"{head} (head): ")


def test_a_database_a_newer_version_migrated_is_named_as_such(empty_url, monkeypatch):
    # Its revision is unknown here: `db upgrade` cannot help, and used to be what every
    # message asked for (then failed with alembic's "Can't locate revision").
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", empty_url)
    upgrade(empty_url)
    db = Database(empty_url)
    with db.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    for args in (("db", "current"), ("db", "upgrade")):
        r = cli(*args)
        assert r.exit_code in (1, 2) and "does not know" in r.output, (args, r.output)
        assert "run `railproof db upgrade`" not in r.output and "Traceback" not in r.output
    with pytest.raises(NotMigrated, match="a newer version migrated it"):
        require_migrated(db.engine)
    db.dispose()


def test_db_current_does_not_create_a_missing_sqlite_file(tmp_path, monkeypatch):
    path = tmp_path / "none.db"
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", f"sqlite:///{path}")
    r = cli("db", "current")
    assert r.exit_code == 2 and "no SQLite file" in r.output and "Traceback" not in r.output
    assert not path.exists()


def _commands(group, prefix: str = ""):
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, TyperGroup):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


# Options of the webhook and reconciliation commands (verifier/cli/webhooks.py, reconcile.py)
# are not covered yet.
NOT_YET = {"list-webhook-events", "reconcile", "list-reconciliation-runs"}


def test_every_option_has_a_help_text():
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    missing = [
        f"railproof {name} {opt.opts[0]}"
        for name, cmd in _commands(root)
        if name not in NOT_YET
        for opt in cmd.params
        if isinstance(opt, TyperOption) and not opt.help
    ]
    missing += [
        f"railproof {o.opts[0]}" for o in root.params if isinstance(o, TyperOption) and not o.help
    ]
    assert missing == []
