"""Storage: SQLAlchemy 2 models, the database handle, Alembic migrations. The only layer that
talks to the database; it never talks to the chain."""
