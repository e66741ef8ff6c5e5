"""The PostgreSQL pipeline (storage.repo.prepared `_pipeline`) against psycopg's own cursor:
the same statements, with the same values, read and write the same things, count the same
rows and fail the same way. It drives libpq through psycopg's lower layer, so these are the
checks that it still does what psycopg's cursor does."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, insert, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError

from tests.test_engine_proofs import open_session, pay
from verifier.services import proofs
from verifier.storage.models import (
    AuditEvent,
    PaymentSession,
    Proof,
    SettlementEvidence,
    VerificationAttempt,
)
from verifier.storage.repo import prepared
from verifier.storage.repo.prepared import PREPARE_AFTER, Prepared
from verifier.storage.webhook_models import OutboxEvent

TABLES = [PaymentSession, Proof, VerificationAttempt, SettlementEvidence, AuditEvent, OutboxEvent]


@pytest.fixture
def pg(engine):
    if engine.db.engine.dialect.name != "postgresql":
        pytest.skip("the pipeline is PostgreSQL's")
    return engine


def paid(engine, chain) -> None:
    """A verified proof: a row in each table the submission path writes."""
    sess = open_session(engine)
    pay(chain, "fxabcdef01", sess)
    view, _ = proofs.submit_proof(engine, sess["id"], "fxabcdef01", ["alice"])
    assert view["status"] == "verified"


def by_cursor(conn, sql: str, args) -> tuple[list[tuple], int]:
    """psycopg's own path, as SQLAlchemy's execute would take it."""
    with conn.connection.driver_connection.cursor() as cur:
        cur.execute(sql, args)
        return (cur.fetchall() if cur.description else []), cur.rowcount


def by_pipeline(conn, sql: str, args) -> tuple[list[tuple], int]:
    driver = conn.connection.driver_connection
    items = prepared._dump(driver, [], [(sql, args)])
    (res,) = prepared._pipeline(driver, items, False, conn.info.get(PREPARE_AFTER))
    return res.fetchall(), res.rowcount


def typed(rows: list[tuple]) -> list[list[tuple[type, object]]]:
    return [[(type(v), v) for v in row] for row in rows]


def test_every_stored_column_reads_back_the_same_value_and_type(pg, chain):
    paid(pg, chain)
    with pg.db.tx() as s:
        conn = s.connection()
        for model in TABLES:
            t = model.__table__
            form, args = Prepared(select(*t.columns))._args(conn.dialect, {})
            for _ in range(7):  # unprepared, then past psycopg's threshold: prepared
                ours, ref = by_pipeline(conn, form.sql, args), by_cursor(conn, form.sql, args)
                assert ours[0], t.name
                assert typed(ours[0]) == typed(ref[0]), t.name
                assert ours[1] == ref[1] == len(ref[0])


def test_a_row_written_either_way_is_stored_the_same(pg, chain):
    paid(pg, chain)
    t = PaymentSession.__table__
    with pg.db.tx() as s:
        conn = s.connection()
        (row,) = conn.execute(select(t)).mappings().all()
        written = {}
        for way, run in (("cursor", by_cursor), ("pipeline", by_pipeline)):
            copy = {**row, "id": f"ps_{way}", "reference": f"ref-{way}", "payer": None}
            form, args = Prepared(insert(t))._args(conn.dialect, copy)
            assert run(conn, form.sql, args) == ([], 1)
            written[way] = conn.execute(select(t).where(t.c.id == copy["id"])).mappings().one()
        a, b = (
            {k: v for k, v in w.items() if k not in ("id", "reference")} for w in written.values()
        )
        assert a == b and a["payer"] is None and a["amount"] == row["amount"]


def test_counts_of_an_update_and_of_a_refused_insert_match(pg, chain):
    paid(pg, chain)
    t = PaymentSession.__table__
    upd = Prepared(update(t).where(t.c.owner_id == bindparam("o")).values(status=t.c.status))
    ins = Prepared(pg_insert(t).on_conflict_do_nothing())
    with pg.db.tx() as s:
        conn = s.connection()
        (row,) = conn.execute(select(t)).mappings().all()
        for owner, matched in (("alice", 1), ("nobody", 0)):
            form, args = upd._args(conn.dialect, {"o": owner})
            assert by_pipeline(conn, form.sql, args)[1] == matched
            assert by_cursor(conn, form.sql, args)[1] == matched
        form, args = ins._args(conn.dialect, dict(row))  # the row that is there: refused
        assert by_pipeline(conn, form.sql, args) == by_cursor(conn, form.sql, args) == ([], 0)


def names(conn) -> list[str]:
    return sorted(conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars())


def test_one_text_with_values_of_other_types_is_prepared_once_per_type(pg, chain):
    """psycopg dumps a Python int as the smallest integer type that holds it: a statement
    prepared for int2 values must not be run with a value beyond it."""
    paid(pg, chain)
    t = PaymentSession.__table__
    q = Prepared(select(t.c.id).where(t.c.amount <= bindparam("a")))
    with pg.db.tx() as s:
        conn = s.connection()
        for _ in range(8):
            assert q.all(conn, {"a": 5}) == []  # prepared after psycopg's threshold (5)
        for _ in range(8):
            assert len(q.all(conn, {"a": 10**15})) == 1
        made = [n for n in names(conn) if n.startswith("_rp_")]
        assert len(made) == len(set(made)) >= 2


def test_many_statements_past_the_threshold_get_distinct_names(pg, chain):
    paid(pg, chain)
    t = PaymentSession.__table__
    stmts = [Prepared(select(t.c.id, literal_column(str(i)))) for i in range(6)]
    with pg.db.tx() as s:
        conn = s.connection()
        for _ in range(7):
            for q in stmts:
                assert len(q.all(conn)) == 1
        made = [n for n in names(conn) if n.startswith("_rp_")]
        assert len(made) == len(set(made)) >= len(stmts)


def test_a_statement_that_fails_names_itself_and_leaves_nothing(pg, chain):
    """A queued row that the server refuses fails the transaction with its own SQL, and a
    statement that was to be prepared behind it in the same pipeline is prepared again
    later rather than run under a name the server never took."""
    paid(pg, chain)
    t = PaymentSession.__table__
    q = Prepared(select(t.c.id).where(t.c.owner_id == bindparam("o")))
    with pg.db.tx() as s:
        conn = s.connection()
        for _ in range(5):  # one run short of being prepared
            assert len(q.all(conn, {"o": "alice"})) == 1
        (row,) = conn.execute(select(t)).mappings().all()
    with pytest.raises(IntegrityError) as refused, pg.db.tx() as s:
        conn = s.connection()
        Prepared(insert(t)).defer(conn, dict(row))  # the same id: refused
        q.all(conn, {"o": "alice"})  # PREPARE and run, aborted behind the refused row
    assert "INSERT INTO payment_sessions" in refused.value.statement
    with pg.db.tx() as s:
        assert len(q.all(s.connection(), {"o": "alice"})) == 1
        assert s.execute(select(t.c.id)).scalars().all() == [row["id"]]


def test_without_a_threshold_nothing_is_prepared(pg, chain):
    """PgBouncer in transaction mode: `prepare_threshold=none` in the URL."""
    paid(pg, chain)
    from verifier.storage.db import Database

    t = PaymentSession.__table__
    q = Prepared(select(t.c.id).where(t.c.amount > 0))
    url = pg.db.engine.url.render_as_string(hide_password=False)
    db = Database(url + "?prepare_threshold=none")
    try:
        with db.tx() as s:
            conn = s.connection()
            for _ in range(10):
                assert len(q.all(conn)) == 1
            assert [n for n in names(conn) if n.startswith("_rp_")] == []
    finally:
        db.dispose()


def test_a_connection_gone_mid_transaction_is_invalidated_and_replaced(pg, chain):
    paid(pg, chain)
    t = PaymentSession.__table__
    q = Prepared(select(t.c.id))
    with pytest.raises(DBAPIError) as gone, pg.db.tx() as s:
        conn = s.connection()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with pg.db.engine.connect() as other:
            assert other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})").scalar()
        q.all(conn)
    assert gone.value.connection_invalidated
    with pg.db.tx() as s:
        assert len(q.all(s.connection())) == 1


def test_a_batch_of_rows_with_values_of_changing_types_is_stored_exactly(pg, chain):
    """Rows of one statement go as one run, each dumping only its values (as executemany
    does): a None after a string, or an amount past int4 after a small one, changes the
    parameter types between rows of the same text."""
    paid(pg, chain)
    t = PaymentSession.__table__
    with pg.db.tx() as s:
        (row,) = s.connection().execute(select(t)).mappings().all()
    rows = [
        {**row, "id": f"ps_batch_{i}", "reference": f"ref-batch-{i}", "payer": payer, "amount": amt}
        for i, (payer, amt) in enumerate([(None, 7), ("payer-1", 10**15), (None, 2**31), ("p", 1)])
    ]
    with pg.db.tx() as s:
        conn = s.connection()
        for r in rows:
            Prepared(insert(t)).defer(conn, r)
    with pg.db.tx() as s:
        stored = s.connection().execute(
            select(t.c.id, t.c.payer, t.c.amount).where(t.c.id.like("ps_batch_%")).order_by(t.c.id)
        )
        assert [tuple(r) for r in stored] == [(r["id"], r["payer"], r["amount"]) for r in rows]


def test_a_commit_the_server_refuses_raises_its_own_error(pg):
    """A COMMIT refused by the server (a deferred constraint; a serialization failure is the
    same case) fails as the database error it is, with the COMMIT as its statement."""
    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

    scratch = Table(
        "pipeline_deferred_fk",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column(
            "parent",
            Integer,
            ForeignKey("pipeline_deferred_fk.id", deferrable=True, initially="DEFERRED"),
        ),
    )
    scratch.create(pg.db.engine)
    try:
        with pytest.raises(IntegrityError) as refused, pg.db.tx() as s:
            Prepared(insert(scratch)).defer(s.connection(), {"id": 1, "parent": 99})
        assert refused.value.statement == "COMMIT"
        with pg.db.tx() as s:
            Prepared(insert(scratch)).defer(s.connection(), {"id": 2, "parent": 2})
        with pg.db.tx() as s:
            assert s.execute(select(scratch.c.id)).scalars().all() == [2]
    finally:
        scratch.drop(pg.db.engine)


def test_a_value_psycopg_refuses_sends_nothing_and_loses_nothing(pg, chain):
    """A NUL in a string is refused by psycopg before anything is sent: the queued rows stay
    queued (the transaction commits them), and a statement that was to be prepared in that
    pipeline is not taken for prepared."""
    paid(pg, chain)
    t = PaymentSession.__table__
    q = Prepared(select(t.c.id).where(t.c.owner_id == bindparam("o")))
    with pg.db.tx() as s:
        (row,) = s.connection().execute(select(t)).mappings().all()
    with pg.db.tx() as s:
        conn = s.connection()
        for _ in range(5):  # one run short of being prepared
            assert len(q.all(conn, {"o": "alice"})) == 1
        Prepared(insert(t)).defer(conn, {**row, "id": "ps_kept", "reference": "ref-kept"})
        with pytest.raises(DBAPIError):
            prepared._run(conn, [_text(q, conn, "alice"), _text(q, conn, "a\x00b")])
        assert len(q.all(conn, {"o": "alice"})) == 2  # the kept row went with it, prepared
    with pg.db.tx() as s:
        assert s.execute(select(t.c.id).where(t.c.id == "ps_kept")).scalar() == "ps_kept"


def _text(q: Prepared, conn, owner: str) -> tuple[str, object]:
    form, args = q._args(conn.dialect, {"o": owner})
    return form.sql, args


class _Deadline(Exception):
    pass


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, _Deadline])
def test_an_interruption_mid_wait_never_leaves_the_connection_out_of_step(pg, interrupt):
    """Ctrl-C while the server works: psycopg cancels it and the whole exchange is read, so
    the connection is usable (its transaction failed). Any other exception there (a request
    deadline's alarm) closes the connection, which the pool then drops: nothing can tell
    what the server did. Either way the interruption itself reaches the caller."""
    import signal

    from psycopg import pq

    def alarm(*_):
        raise interrupt()

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        with pg.db.tx() as s:
            conn = s.connection()
            driver = conn.connection.driver_connection
            slow = [("SELECT pg_sleep(%(s)s)", {"s": 2}), ("SELECT %(a)s::int", {"a": 1})]
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(interrupt):
                prepared._pipeline(driver, prepared._dump(driver, [], slow), False, None)
            assert driver.pgconn.pipeline_status == pq.PipelineStatus.OFF
            if interrupt is KeyboardInterrupt:
                assert driver.pgconn.transaction_status == pq.TransactionStatus.INERROR
                driver.rollback()
                assert by_pipeline(conn, "SELECT %(a)s::text", {"a": "mine"})[0] == [("mine",)]
            else:
                assert driver.closed
            s.rollback()
    except DBAPIError:
        assert interrupt is _Deadline  # the closed connection's rollback, as any lost one
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pg.db.tx() as s:  # the pool hands out a working connection
        assert by_pipeline(s.connection(), "SELECT %(a)s::int", {"a": 7})[0] == [(7,)]
