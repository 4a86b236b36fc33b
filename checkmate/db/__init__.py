"""PostgreSQL side of CheckMate: tables, engine, migrations and every SQL statement."""
