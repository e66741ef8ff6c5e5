from alembic import context

from verifier.storage import (
    reconciliation_models,  # noqa: F401  (registers the reconciliation tables)
    release_gate_models,  # noqa: F401  (registers the release-gate evidence table)
    webhook_models,  # noqa: F401  (registers the webhook tables on Base)
)
from verifier.storage.db import make_engine
from verifier.storage.models import Base

# The advisory lock `db upgrade` holds on PostgreSQL while it migrates (its own key: the audit
# chain's and the payments' are others).
MIGRATION_LOCK_KEY = 0x6D696772

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        url = config.get_main_option("sqlalchemy.url")
        if url is None:  # alembic_config sets it; a connection is passed otherwise
            raise RuntimeError("migrations: no sqlalchemy.url and no connection")
        engine = make_engine(url)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connectable)


def _run(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite and not connection.in_transaction():
        # Batch migrations rebuild SQLite tables (copy, drop, rename) that other tables refer
        # to; the pragma only takes effect outside a transaction, so it is set on the driver
        # connection before the migration's transaction begins, and every reference is
        # checked before that transaction commits.
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two `db upgrade`s at once (the replicas of one deploy) would both run the same
            # migration, and all but one fail on what the first created. One waits for the
            # other's commit, then reads the version it left and has nothing to do.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left broken references: {broken[:5]}")
    if sqlite:
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
