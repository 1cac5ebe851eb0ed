"""Test doubles and shared helpers for the tests: ``net`` (free ports), ``k8s`` (the
stand-in Kubernetes API server). They stand in only for what cannot run on a CI machine."""
