"""In-rank code: the entry point every rank runs and the context a kind's entry receives."""
