"""Storage: SQLAlchemy 2 models, the database handle, Alembic migrations, and the repo
(`storage.repo`), the only code that writes SQL or asks which database it runs on. It never
talks to the chain."""
