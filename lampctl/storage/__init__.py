"""The SQLite usage log: schema and migrations, the one writer, read queries, reports, user accounts."""
