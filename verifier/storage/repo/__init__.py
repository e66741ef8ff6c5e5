"""The only code that writes SQL: one module per area of the schema.

Functions take the caller's `Session` (the service owns the transaction) and return models,
plain `rows.Record`s or small dataclasses. Where PostgreSQL and SQLite differ (row locks,
SKIP LOCKED, advisory and table locks, savepoints around an insert that may conflict) the
branch is here, behind a name that says what is locked (`rows.is_postgres` is the one test).
Prepared statements (`prepared.Prepared`, SQLite's driver path) are used only here, by the
hot-path functions that opt in; tests/test_prepared.py holds them to `Connection.execute`.
"""
