"""Running stages end to end: DVC decides what is stale, Prefect runs and records it."""
