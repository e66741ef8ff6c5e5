"""The audit log against someone who can write its table: TRUNCATE is refused, a rewritten
chain does not verify without the key, a signed checkpoint catches removed newest events, the
service and the worker refuse to start without a key, and the runtime role of
docs/security.md cannot switch the guards off. SQLite and PostgreSQL where both apply."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from tests.conftest import make_pg_db
from verifier.cli.main import app
from verifier.core.errors import BadInput
from verifier.services import audit
from verifier.storage.db import Database, upgrade
from verifier.storage.models import AuditEvent

KEY = b"test-audit-key"  # tests/conftest.py make_settings
SECURITY_MD = Path(__file__).resolve().parent.parent / "docs" / "security.md"


@pytest.fixture
def pg_url(request) -> Iterator[str]:
    # pg_template skips (or fails under CI) without PostgreSQL.
    url, drop = make_pg_db(request.getfixturevalue("pg_template"))
    yield url
    drop()


@pytest.fixture
def cli_env(db_url, monkeypatch):
    """The CLI on `db_url` with the tests' audit key."""
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", db_url)
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY", KEY.decode())
    monkeypatch.delenv("RAILPROOF_AUDIT_KEY_FILE", raising=False)
    monkeypatch.delenv("RAILPROOF_CLOCK", raising=False)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def append_events(db: Database, n: int, first: int = 0, action: str = "test.event") -> list[int]:
    """Append `n` events; their ids, oldest first."""
    with db.tx() as s:
        for i in range(first, first + n):
            audit.append(
                s,
                datetime(2026, 1, 1, i % 24),
                audit.Operator("ops", "INC-7", "why"),
                action,
                "thing",
                f"t{i}",
                {"n": i},
            )
    with db.tx() as s:
        ids = s.scalars(text("SELECT id FROM audit_events ORDER BY id DESC LIMIT :n"), {"n": n})
        return sorted(ids)


def as_superuser(db: Database, *sql: str, params: dict | None = None) -> None:
    """What a superuser (or a stolen owner login) can do: switch the append-only guard off
    for the statements given."""
    with db.engine.begin() as c:
        if db.postgres:
            c.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            c.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
            c.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
        for stmt in sql:
            c.execute(text(stmt), params or {})
        if db.postgres:
            c.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))


def verify(db: Database) -> audit.ChainReport:
    with db.tx() as s:
        return audit.verify_chain(s)


# -- TRUNCATE -----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_truncate_is_refused_on_postgresql_even_for_the_owner(pg_url):
    db = Database(pg_url, audit_key=KEY)
    try:
        append_events(db, 3)
        with db.engine.connect() as c:
            owner, me = c.execute(
                text(
                    "SELECT tableowner, current_user FROM pg_tables "
                    "WHERE tablename = 'audit_events'"
                )
            ).one()
        assert owner == me
        with pytest.raises(DBAPIError, match="append-only"):
            with db.engine.begin() as c:
                c.execute(text("TRUNCATE audit_events"))
        rep = verify(db)
        assert rep.ok and rep.events == 3
    finally:
        db.dispose()


def _event_hash(prev: str, ev: AuditEvent, data, key) -> str:
    """`ev`'s hash after `prev`, with `data` in place of its own (a forger's re-hash)."""
    return audit.event_hash(
        prev,
        ev.at,
        ev.actor,
        ev.action,
        ev.subject_type,
        ev.subject_id,
        data,
        ev.incident_id,
        ev.reason,
        key,
    )


def rehash(db: Database, start: int, key: bytes | None, forged: dict[int, dict]) -> None:
    """Re-hash the chain from its `start`-th event (0: from the genesis) with `key` (None:
    plain SHA-256), the data of the events in `forged` replaced: what someone with write
    access to the table but without the key can do."""
    with db.tx() as s:
        rows = s.scalars(text("SELECT id FROM audit_events ORDER BY id")).all()
        evs = [s.get(AuditEvent, i) for i in rows]
    prev, stmts = (evs[start - 1].hash if start else audit.GENESIS), []
    for ev in evs[start:]:
        data = forged.get(ev.id, ev.data)
        h = _event_hash(prev, ev, data, key)
        stmts.append((ev.id, json.dumps(data), prev, h))
        prev = h
    for i, data, p, h in stmts:
        as_superuser(
            db,
            "UPDATE audit_events SET data = :d, prev_hash = :p, hash = :h WHERE id = :i",
            params={"d": data, "p": p, "h": h, "i": i},
        )


# -- the keyed chain ----------------------------------------------------------------------------


@pytest.mark.parametrize("forger_key", [None, b"wrong-key"], ids=["unkeyed", "wrong_key"])
def test_rewritten_and_rehashed_chain_is_detected(db_url, cli_env, forger_key):
    db = Database(db_url, audit_key=KEY)
    try:
        ids = append_events(db, 5)
        assert verify(db).ok
        # Edit event 3, then recompute its hash and every later one, as someone with write
        # access to the table but without the key would.
        rehash(db, 2, forger_key, {ids[2]: {"n": 99}})
        rep = verify(db)
        assert not rep.ok and rep.first_broken_id == ids[2] and rep.keyed
        r = cli("audit", "verify")
        assert r.exit_code == 1 and f"event {ids[2]}" in r.output
    finally:
        db.dispose()


def test_keyed_hash_depends_on_the_key():
    args = (audit.GENESIS, datetime(2026, 1, 1), "ops", "a", "t", "i", {}, None, None)
    assert (
        len(
            {
                audit.event_hash(*args),
                audit.event_hash(*args, KEY),
                audit.event_hash(*args, b"other"),
            }
        )
        == 3
    )


# -- checkpoints --------------------------------------------------------------------------------


def _checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "checkpoint.json"
    r = cli("audit", "checkpoint", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out, json.loads(out.read_text())


def test_checkpoint_catches_removed_newest_events(db_url, cli_env, tmp_path):
    db = Database(db_url, audit_key=KEY)
    try:
        ids = append_events(db, 5)
        out, cp = _checkpoint(tmp_path)
        assert set(cp) == {"head_id", "head_hash", "events", "at", "mac"}
        assert cp["head_id"] == ids[-1] and cp["events"] == 5
        assert cli("audit", "verify", "--checkpoint", str(out)).exit_code == 0
        # The two newest events go: what is left still links, so the chain alone says intact.
        as_superuser(db, f"DELETE FROM audit_events WHERE id IN ({ids[3]}, {ids[4]})")
        assert cli("audit", "verify").exit_code == 0
        r = cli("audit", "verify", "--checkpoint", str(out))
        assert r.exit_code == 1 and f"event {ids[4]} is gone" in r.output, r.output
        # New events bring the count back; the checkpoint's head is still missing.
        append_events(db, 2, first=5)
        r = cli("audit", "verify", "--checkpoint", str(out), "--json")
        doc = json.loads(r.stdout)
        assert r.exit_code == 1 and doc["ok"] is False and doc["events"] == 5
        assert doc["checkpoint"]["ok"] is False
    finally:
        db.dispose()


def test_checkpoint_files_that_cannot_be_used_exit_2_with_a_message(db_url, cli_env, tmp_path):
    db = Database(db_url, audit_key=KEY)
    try:
        append_events(db, 1)
        deep = tmp_path / "deep.json"
        deep.write_text("[" * 100_000 + "]" * 100_000)
        binary = tmp_path / "binary.json"
        binary.write_bytes(b"\xff\xfe{}")
        for path in (deep, binary):
            r = cli("audit", "verify", "--checkpoint", str(path))
            assert r.exit_code == 2 and "--checkpoint" in r.output, r.output
            assert r.exception is None or isinstance(r.exception, SystemExit)
        for out in (tmp_path, tmp_path / "missing" / "cp.json"):  # a directory, no directory
            r = cli("audit", "checkpoint", "--out", str(out))
            assert r.exit_code == 2 and "--out" in r.output, r.output
            assert r.exception is None or isinstance(r.exception, SystemExit)
    finally:
        db.dispose()


def rehash_from(db: Database, first_id: int, key: bytes | None, edit: dict) -> None:
    """Rewrite event `first_id`'s data to `edit` and re-hash it and every later event under
    `key`, as someone who holds the key and can write the table would: same events, same
    ids, a chain that links."""
    with db.tx() as s:
        evs = [
            s.get(AuditEvent, i) for i in s.scalars(text("SELECT id FROM audit_events ORDER BY id"))
        ]
    prev = next(e.prev_hash for e in evs if e.id == first_id)
    for ev in (e for e in evs if e.id >= first_id):
        data = edit if ev.id == first_id else ev.data
        h = _event_hash(prev, ev, data, key)
        as_superuser(
            db,
            "UPDATE audit_events SET data = :d, prev_hash = :p, hash = :h WHERE id = :i",
            params={"d": json.dumps(data), "p": prev, "h": h, "i": ev.id},
        )
        prev = h


def test_checkpoint_catches_a_same_length_chain_rewritten_with_the_key(db_url, cli_env, tmp_path):
    """The key leaked: an event is edited and the chain re-hashed under the right key, as many
    events as before. The chain alone verifies; the checkpoint taken earlier does not."""
    db = Database(db_url, audit_key=KEY)
    try:
        ids = append_events(db, 5)
        out, cp = _checkpoint(tmp_path)
        rehash_from(db, ids[2], KEY, {"n": 99})
        rep = verify(db)
        assert rep.ok and rep.events == 5
        assert cli("audit", "verify").exit_code == 0
        with db.tx() as s:
            assert (
                s.scalar(text(f"SELECT hash FROM audit_events WHERE id = {ids[4]}"))
                != cp["head_hash"]
            )
        r = cli("audit", "verify", "--checkpoint", str(out))
        assert r.exit_code == 1, r.output
        assert f"event {ids[4]} no longer has the checkpoint's hash" in r.output, r.output
    finally:
        db.dispose()


def test_forged_checkpoint_is_refused(db_url, cli_env, tmp_path):
    db = Database(db_url, audit_key=KEY)
    try:
        ids = append_events(db, 5)
        out, cp = _checkpoint(tmp_path)
        as_superuser(db, f"DELETE FROM audit_events WHERE id IN ({ids[3]}, {ids[4]})")
        with db.tx() as s:
            h3 = s.scalar(text(f"SELECT hash FROM audit_events WHERE id = {ids[2]}"))
        # A checkpoint edited to match the shortened chain: with the old signature, signed
        # under another key, and unsigned.
        forged = dict(cp, head_id=ids[2], head_hash=h3, events=3)
        resigned = dict(forged, mac=audit._checkpoint_mac(b"wrong-key", forged))
        unsigned = {k: v for k, v in forged.items() if k != "mac"}
        for doc in (forged, resigned, unsigned, [forged], "x"):
            out.write_text(json.dumps(doc))
            r = cli("audit", "verify", "--checkpoint", str(out))
            assert r.exit_code == 1 and "checkpoint signature invalid" in r.output, r.output
    finally:
        db.dispose()


def test_no_checkpoint_of_a_broken_chain(db_url, cli_env, tmp_path):
    db = Database(db_url, audit_key=KEY)
    try:
        ids = append_events(db, 3)
        as_superuser(db, f"UPDATE audit_events SET actor = 'mallory' WHERE id = {ids[1]}")
        out = tmp_path / "cp.json"
        r = cli("audit", "checkpoint", "--out", str(out))
        assert r.exit_code == 1 and f"event {ids[1]}" in r.output and not out.exists()
    finally:
        db.dispose()


# -- refusing to start without a key ------------------------------------------------------------


@pytest.fixture
def migrated_sqlite(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path}/railproof.db"
    upgrade(url)
    monkeypatch.setenv("RAILPROOF_DATABASE_URL", url)
    for name in ("RAILPROOF_AUDIT_KEY", "RAILPROOF_AUDIT_KEY_FILE", "RAILPROOF_CLOCK"):
        monkeypatch.delenv(name, raising=False)
    return url


@pytest.mark.parametrize(
    "args",
    [["serve", "--port", "1"], ["worker", "--once"], ["audit", "checkpoint"]],
    ids=["serve", "worker", "checkpoint"],
)
def test_refuses_to_start_without_an_audit_key(migrated_sqlite, args, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)  # a serve that got past: exit 0
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert "RAILPROOF_AUDIT_KEY " in r.output and "RAILPROOF_AUDIT_KEY_FILE" in r.output
    assert "Traceback" not in r.output


def test_the_asgi_factory_refuses_to_start_without_an_audit_key(migrated_sqlite, monkeypatch):
    """`uvicorn --factory verifier.http.asgi:make_app` without `railproof serve`."""
    from verifier.http.asgi import make_app

    with pytest.raises(RuntimeError, match="RAILPROOF_AUDIT_KEY .*RAILPROOF_AUDIT_KEY_FILE"):
        make_app()
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY", KEY.decode())
    app = make_app()
    assert any(getattr(r, "path", None) == "/v1/proofs" for r in app.routes)


def test_audit_key_from_a_file_and_never_from_two_places(migrated_sqlite, monkeypatch, tmp_path):
    key_file = tmp_path / "audit.key"
    key_file.write_text("  file-key\n")
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY_FILE", str(key_file))
    assert cli("worker", "--once").exit_code == 0
    db = Database(migrated_sqlite, audit_key=b"file-key")
    try:
        append_events(db, 2)
    finally:
        db.dispose()
    assert cli("audit", "verify").exit_code == 0  # the file's key, stripped
    monkeypatch.setenv("RAILPROOF_AUDIT_KEY", "another")
    r = cli("worker", "--once")
    assert r.exit_code == 2 and "both set" in r.output
    monkeypatch.delenv("RAILPROOF_AUDIT_KEY")
    key_file.write_text("\n")
    r = cli("worker", "--once")
    assert r.exit_code == 2 and "is empty" in r.output


# -- a chain written without a key (railproof 0.1.0), adopted under the key ---------------------

OPS = audit.Operator("system", "CHG-1", "upgrade from 0.1.0")


def adopt(db: Database) -> audit.Adoption:
    with db.tx() as s:
        return audit.adopt_key(s, datetime(2026, 1, 2), OPS)


def refused_adoption(db: Database) -> audit.KeyAdoptionRefused:
    with pytest.raises(audit.KeyAdoptionRefused) as refused:
        adopt(db)
    return refused.value


def unkeyed_chain(db_url: str, n: int = 3) -> Database:
    """`n` events as railproof 0.1.0 wrote them (plain SHA-256); the keyed Database on it."""
    unkeyed = Database(db_url)
    try:
        append_events(unkeyed, n, action="session.opened")
    finally:
        unkeyed.dispose()
    return Database(db_url, audit_key=KEY)


def test_an_adopted_chain_verifies_and_takes_its_key(db_url):
    db = unkeyed_chain(db_url)
    try:
        with db.tx() as s:
            assert audit.key_state(s) is audit.KeyState.unkeyed and not audit.key_fits(s)
        rep = verify(db)
        assert not rep.ok and rep.first_broken_id is not None and "adopt-key" in rep.message
        assert adopt(db).unkeyed_events == 3
        append_events(db, 2, first=3)
        rep = verify(db)
        assert rep.ok and rep.events == 6 and rep.keyed, rep.message
        with db.tx() as s:
            assert audit.key_fits(s)
        # Another key is still another key, not a history to adopt.
        other = Database(db_url, audit_key=b"another-key")
        with other.tx() as s:
            assert audit.key_state(s) is audit.KeyState.other
        other.dispose()
        assert refused_adoption(db).code is audit.AdoptionRefusal.adopted
    finally:
        db.dispose()


def test_an_unkeyed_anchor_is_a_broken_event(db_url):
    # Anyone who can write the table can append a plain SHA-256 "anchor": it vouches for
    # nothing, and neither does the history before it.
    db = unkeyed_chain(db_url)
    try:
        unkeyed = Database(db_url)
        with unkeyed.tx() as s:
            audit.append(s, datetime(2026, 1, 2), OPS, audit.KEY_ADOPTED, "audit_chain", "3", {})
        unkeyed.dispose()
        rep = verify(db)
        assert not rep.ok and rep.first_broken_id == 4, rep.message
        refused = refused_adoption(db)
        assert refused.code is audit.AdoptionRefusal.broken and refused.event_id == 4
    finally:
        db.dispose()


def test_a_second_anchor_is_a_broken_event(db_url):
    db = unkeyed_chain(db_url)
    try:
        adopt(db)
        with db.tx() as s:  # written with the key, past the one adoption
            audit.append(s, datetime(2026, 1, 3), OPS, audit.KEY_ADOPTED, "audit_chain", "4", {})
        rep = verify(db)
        assert not rep.ok and rep.first_broken_id == 5 and "second" in rep.message, rep.message
    finally:
        db.dispose()


def test_an_anchor_in_a_chain_keyed_from_its_genesis_is_a_broken_event(db_url):
    db = Database(db_url, audit_key=KEY)
    try:
        append_events(db, 2)
        assert refused_adoption(db).code is audit.AdoptionRefusal.keyed
        data = {"unkeyed_head": "0" * 64, "unkeyed_events": 2}
        with db.tx() as s:
            audit.append(s, datetime(2026, 1, 2), OPS, audit.KEY_ADOPTED, "audit_chain", "2", data)
        rep = verify(db)
        assert not rep.ok and rep.first_broken_id == 3, rep.message
    finally:
        db.dispose()


def test_a_broken_or_empty_unkeyed_chain_is_not_adopted(db_url):
    db = Database(db_url, audit_key=KEY)
    try:
        assert refused_adoption(db).code is audit.AdoptionRefusal.empty
    finally:
        db.dispose()
    db = unkeyed_chain(db_url)
    try:
        as_superuser(db, """UPDATE audit_events SET data = '{"n": 9}' WHERE id = 2""")
        refused = refused_adoption(db)
        assert refused.code is audit.AdoptionRefusal.broken and refused.event_id == 2
        assert "event 2" in refused.message
        with db.tx() as s:
            assert s.scalar(text("SELECT count(*) FROM audit_events")) == 3  # nothing written
    finally:
        db.dispose()


def rebuild_unkeyed(db: Database, forge: dict | None = None) -> None:
    """What someone who can write the table but lacks the key can do: re-hash the whole chain
    as plain SHA-256, the second event's data replaced by `forge`."""
    with db.tx() as s:
        second = s.scalars(text("SELECT id FROM audit_events ORDER BY id")).all()[1]
    rehash(db, 0, None, {second: forge} if forge is not None else {})


def keyed_chain_rebuilt_unkeyed(db_url: str, *events: tuple[str, dict]) -> Database:
    """A chain this version wrote with the key, `events` (action, data), rebuilt without it
    and a forged event in it: the keyed Database on it, refused at start as unkeyed."""
    db = Database(db_url, audit_key=KEY)
    with db.tx() as s:
        for i, (action, data) in enumerate(events):
            audit.append(s, datetime(2026, 1, 1, i), OPS, action, "thing", f"t{i}", data)
    assert verify(db).ok
    rebuild_unkeyed(db, forge={"n": 999, "forged": True})
    with db.tx() as s:
        assert audit.key_state(s) is audit.KeyState.unkeyed
    assert not verify(db).ok
    return db


def assert_nothing_adopted(db: Database, events: int) -> None:
    with db.tx() as s:
        assert s.scalar(text("SELECT count(*) FROM audit_events")) == events
        assert audit.key_state(s) is audit.KeyState.unkeyed
    assert not verify(db).ok


def test_a_keyed_chain_rebuilt_without_the_key_is_not_adopted(db_url):
    # The startup refusal of such a chain names adoption as one of two readings: adoption
    # itself must not vouch for a chain a keyed version wrote (an action 0.1.0 never wrote).
    db = keyed_chain_rebuilt_unkeyed(
        db_url,
        ("session.opened", {"n": 0}),
        ("proof.submitted", {"n": 1}),
        ("webhook_endpoint.retired", {"n": 2}),
        ("proof.verified", {"n": 3}),
    )
    try:
        refused = refused_adoption(db)
        assert refused.code is audit.AdoptionRefusal.newer and refused.event_id == 3
        assert "'webhook_endpoint.retired'" in refused.message, refused.message
        assert_nothing_adopted(db, 4)
    finally:
        db.dispose()


def test_an_event_with_a_request_id_is_not_of_0_1_0(db_url):
    # 0.1.0's actions only, but one written during an HTTP request by a later version.
    db = keyed_chain_rebuilt_unkeyed(
        db_url,
        ("session.opened", {"n": 0}),
        ("proof.submitted", {"n": 1}),
        ("proof.verified", {"n": 2, "request_id": "req-1"}),
    )
    try:
        refused = refused_adoption(db)
        assert refused.code is audit.AdoptionRefusal.newer and refused.event_id == 3
        assert_nothing_adopted(db, 3)
    finally:
        db.dispose()


def test_adoption_is_refused_when_a_checkpoint_does_not_hold(db_url, tmp_path, cli_env):
    # A rewrite careful enough to look like 0.1.0 is caught by an off-host checkpoint.
    db = Database(db_url, audit_key=KEY)
    try:
        append_events(db, 3, action="session.opened")
        cp = tmp_path / "cp.json"
        assert cli("audit", "checkpoint", "--out", str(cp)).exit_code == 0
        rebuild_unkeyed(db, forge={"n": 999})
        context = ["--incident-id", "CHG-1", "--operator-reason", "upgrade", "--confirm"]
        r = cli("audit", "adopt-key", *context, "--checkpoint", str(cp))
        assert r.exit_code == 2 and "audit_checkpoint_mismatch" in r.output, r.output
        assert "no longer has the checkpoint's hash" in r.output, r.output
        assert_nothing_adopted(db, 3)
    finally:
        db.dispose()


def test_the_startup_refusal_of_an_unkeyed_chain_does_not_assume_0_1_0():
    from verifier.core.config import AUDIT_CHAIN_UNKEYED

    assert "rewritten by someone without the key" in AUDIT_CHAIN_UNKEYED
    assert "checkpoint" in AUDIT_CHAIN_UNKEYED and "adopt-key" in AUDIT_CHAIN_UNKEYED


def test_every_action_0_1_0_wrote_is_still_one_this_version_writes():
    # The frozen set names real actions: each is still appended somewhere in the code (a
    # typo in it would refuse a genuine 0.1.0 history).
    source = "\n".join(p.read_text() for p in Path(audit.__file__).parents[1].rglob("*.py"))
    for action in audit.V0_1_0_ACTIONS:
        head, _, tail = action.partition(".")
        dynamic = head in ("proof", "settlement") and tail in (
            "pending",
            "verified",
            "failed",
            "requires_review",
            "observed",
            "finalized",
            "reorged",
        )
        assert dynamic or f'"{action}"' in source, action


def test_adoption_needs_the_operator_context(db_url):
    db = unkeyed_chain(db_url, 1)
    try:
        with pytest.raises(BadInput):
            with db.tx() as s:
                audit.adopt_key(s, datetime(2026, 1, 2), audit.Operator("system", "CHG-1"))
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("option", "context"),
    [
        ("--incident-id", ["--incident-id", "CHG-" + "1" * 200, "--operator-reason", "upgrade"]),
        ("--operator-reason", ["--incident-id", "CHG-1", "--operator-reason", "up\x00grade"]),
        ("--operator-reason", ["--incident-id", "CHG-1", "--operator-reason", "u" * 1001]),
    ],
    ids=["incident-id-too-long", "reason-with-nul", "reason-too-long"],
)
def test_adopt_key_refuses_context_the_audit_row_cannot_hold_naming_the_option(
    db_url, cli_env, option, context
):
    # On PostgreSQL the row's INSERT failed: a driver traceback, exit 1.
    db = unkeyed_chain(db_url)
    try:
        r = cli("audit", "adopt-key", "--confirm", *context)
        assert isinstance(r.exception, SystemExit), repr(r.exception)
        assert r.exit_code == 2, (r.exit_code, r.output)
        assert f"error: {option}: invalid_request" in r.output, r.output
        assert_nothing_adopted(db, 3)
    finally:
        db.dispose()


# -- least privilege (docs/security.md) ---------------------------------------------------------


def documented_sql(marker: str, role: str) -> list[str]:
    """The statements of the ```sql block after `<!-- marker -->` in docs/security.md, with
    the runtime role renamed."""
    doc = SECURITY_MD.read_text()
    m = re.search(rf"<!-- {marker} -->\s*```sql\n(.*?)```", doc, re.S)
    assert m, f"docs/security.md: no sql block marked {marker}"
    body = "\n".join(line for line in m.group(1).splitlines() if not line.lstrip().startswith("--"))
    return [s.strip().replace("railproof_app", role) for s in body.split(";") if s.strip()]


@pytest.mark.postgres
def test_runtime_role_cannot_switch_the_guards_off(pg_url):
    role = "railproof_app_" + uuid.uuid4().hex[:10]
    db = Database(pg_url, audit_key=KEY)
    owner = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        ids = append_events(db, 2)
        with owner.connect() as c:
            c.execute(text(f'CREATE ROLE "{role}" NOLOGIN'))
            for stmt in documented_sql("sql:runtime-role", role):
                c.execute(text(stmt))

        def as_role(sql: str, match: str) -> None:
            with pytest.raises(DBAPIError, match=match):
                with db.engine.begin() as c:
                    c.execute(text(f'SET LOCAL ROLE "{role}"'))
                    c.execute(text(sql))

        as_role("ALTER TABLE audit_events DISABLE TRIGGER ALL", "must be owner")
        as_role(
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only", "must be owner"
        )
        as_role("TRUNCATE audit_events", "permission denied")
        as_role(f"UPDATE audit_events SET actor = 'mallory' WHERE id = {ids[0]}", "append-only")
        as_role(f"DELETE FROM audit_events WHERE id = {ids[1]}", "append-only")
        # What the service needs it still has: appending (sequence, advisory lock, insert).
        with db.tx() as s:  # the service's own transaction, as the runtime role
            s.execute(text(f'SET LOCAL ROLE "{role}"'))
            audit.append(
                s, datetime(2026, 1, 2), audit.Operator("svc"), "test.event", "thing", "r1"
            )
        # A TRUNCATE grant given by mistake still meets the trigger.
        with owner.connect() as c:
            c.execute(text(f'GRANT TRUNCATE ON audit_events TO "{role}"'))
        as_role("TRUNCATE audit_events", "append-only")
        # The optional tightening: no UPDATE or DELETE on the log at all.
        with owner.connect() as c:
            for stmt in documented_sql("sql:runtime-role-tighter", role):
                c.execute(text(stmt))
        as_role(
            f"UPDATE audit_events SET actor = 'mallory' WHERE id = {ids[0]}", "permission denied"
        )
        rep = verify(db)
        assert rep.ok and rep.events == 3
    finally:
        db.dispose()
        with owner.connect() as c:
            if c.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
                c.execute(text(f'DROP OWNED BY "{role}"'))  # its grants in this database
                c.execute(text(f'DROP ROLE "{role}"'))
        owner.dispose()


def test_an_event_inserted_below_the_first_id_is_not_outside_the_verified_chain(db_url):
    """Someone who can only INSERT into audit_events (the append-only triggers refuse UPDATE,
    DELETE and TRUNCATE, not INSERT) writes a forged event with id 0, a staff approval no one
    gave, which staff listings show among the real events: the walk starts at the lowest id
    there is, so it breaks the chain there."""
    from datetime import datetime

    from sqlalchemy import text

    from verifier.storage.db import Database
    from verifier.storage.repo import staff_reads

    db = Database(db_url, audit_key=KEY)
    try:
        append_events(db, 3)
        forged = {
            "id": 0,
            "at": datetime(2026, 1, 1, 5),
            "actor": "ops2",
            "action": "approval.approved",
            "subject_type": "approval",
            "subject_id": "apr_forged",
            "data": '{"kind": "treasury"}',
            "incident_id": "INC-7",
            "reason": "approved",
            "prev_hash": "f" * 64,
            "hash": "e" * 64,
        }
        with db.engine.begin() as c:  # a plain INSERT: no trigger refuses it
            c.execute(
                text(
                    "INSERT INTO audit_events (id, at, actor, action, subject_type, subject_id, "
                    "data, incident_id, reason, prev_hash, hash) VALUES (:id, :at, :actor, "
                    ":action, :subject_type, :subject_id, :data, :incident_id, :reason, "
                    ":prev_hash, :hash)"
                ),
                forged,
            )
        with db.tx() as s:
            listed = [e.subject_id for e in staff_reads.audit_events(s, 10, None, "INC-7")]
        assert "apr_forged" in listed  # what staff are shown
        rep = verify(db)
        assert not rep.ok, rep.message  # ... must not verify as an intact chain
        assert rep.first_broken_id == 0
    finally:
        db.dispose()
