"""A local history of runs: one compact record per case per run, in SQLite (standard library)."""
