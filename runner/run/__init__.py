"""Running: the backend contract, the session and the scheduler that drives backends."""
