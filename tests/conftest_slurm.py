"""pytest fixtures for the real local Slurm cluster (see tests/slurm_cluster.py).

Load it from tests/conftest.py with ``pytest_plugins = ["conftest_slurm"]`` (or
``"tests.conftest_slurm"`` when tests/ is a package).

``slurm_cluster`` (session scope) starts munge, slurmctld and two slurmd nodes once per
test session and stops exactly those daemons at the end. It yields the
:class:`SlurmCluster` object: ``.env`` (``SLURM_CONF``), ``.nodes``, ``.stop_node(name)``,
``.start_node(name)``, ``.scratch``, ``.run(*argv)``, ``.queue()``.

When Slurm cannot be installed or started the tests using it are skipped with the reason;
in CI (``CI=true``) that is a failure instead, so the suite cannot silently lose them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

try:  # tests/ imported as a package or as a rootdir on sys.path
    from tests.slurm_cluster import ClusterUnavailable, SlurmCluster
except ImportError:  # pragma: no cover - depends on how pytest was started
    from slurm_cluster import ClusterUnavailable, SlurmCluster  # type: ignore[no-redef]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    # A short scratch path, whatever --basetemp says: munge and slurmstepd put unix sockets
    # in it, and a socket path must fit in 108 bytes. Removed at the end unless
    # RUNNER_KEEP_SLURM_SCRATCH=1 (its log/ has the daemons' logs).
    scratch = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp" if Path("/tmp").is_dir() else None))
    cluster = SlurmCluster(scratch)
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        message = f"local Slurm cluster unavailable: {exc}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("RUNNER_KEEP_SLURM_SCRATCH") != "1":
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def slurm_env(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this test's Slurm clients (the backend runs them with os.environ) at the cluster."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    env = slurm_cluster.client_env()
    monkeypatch.setenv("PATH", env["PATH"])
    return env
