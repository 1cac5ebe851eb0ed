"""Planning: the case-kind contract (what a kind of test is, how its launches are planned)."""
