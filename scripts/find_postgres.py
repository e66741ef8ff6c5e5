"""Print a PostgreSQL URL for the test suite if a server answers on 127.0.0.1:5432 with trust
auth (as on this project's machines); print nothing otherwise."""

import psycopg

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

try:
    psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=2
    ).close()
    print(URL)
except Exception:
    pass
