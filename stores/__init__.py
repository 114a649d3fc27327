"""Where views live: SQLite in embedded mode, PostgreSQL in Kafka mode."""
