"""The database: tables, the unit of work and Alembic migrations."""
