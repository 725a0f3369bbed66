"""Data: sources, the shapes world and its oracle, curation into DuckDB, validation."""
