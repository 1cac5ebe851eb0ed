"""Rendering a Launch into the Slurm batch script (pure: reads nothing but the launch and options).

::

    #SBATCH --job-name/--nodes/--ntasks-per-node=1/--gpus-per-node/--time/--output ...
    export <launch env>
    HEAD_NODE / HEAD_IP / RDZV_PORT       resolved on the batch host (= the first node)
    srun ... python -m torch.distributed.run --nnodes N --nproc-per-node P
         --rdzv-backend c10d --rdzv-endpoint $HEAD_IP:$RDZV_PORT --rdzv-id $SLURM_JOB_ID
         -m runner.worker <results_dir>/launch.json

HEAD_IP and RDZV_PORT come from ``backends/slurm/head_node.py``, whose source the script
runs with ``python3 -c`` (self-contained: nothing to stage on the nodes). Every string that
comes from a spec reaches the script through ``shlex.quote`` (the shell body and the
``#SBATCH`` lines, which sbatch splits with shell-like quoting); values that could break a
line are rejected.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path

from backends.slurm.options import ENV_NAME, SlurmOptions
from runner.errors import UsageError
from runner.records import Launch

SCRIPT_NAME = "slurm-job.sh"
LAUNCHER_LOG = "launcher-%j.log"

#: the program that prints "<head ip> <port>" on the batch host (a real module file)
HEAD_NODE_PROGRAM = (Path(__file__).with_name("head_node.py")).read_text()

# Runs on every node under srun: the head node hosts the rendezvous store.
NODE_WRAPPER = ('if [ "${SLURMD_NODENAME:-}" = "$RUNNER_HEAD_NODE" ]; then h=1; else h=0; fi; '
                'py=$1; shift; exec "$py" -m torch.distributed.run --rdzv-conf "is_host=$h" "$@"')


def format_time_limit(seconds: float) -> str:
    """Slurm's ``--time`` ([D-]HH:MM:SS), rounded up to whole minutes (Slurm's granularity)."""
    minutes = max(1, math.ceil(seconds / 60.0))
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    text = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{text}" if days else text


def _one_line(what: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise UsageError(f"slurm backend: {what} must not contain line breaks: {value!r}")
    return value


def _slurm_path(path: str) -> str:
    """A path for --output/--error: '%' would start a Slurm filename pattern, so double it."""
    return path.replace("%", "%%")


def sbatch_flags(launch: Launch, cfg: SlurmOptions, results: str) -> list[str]:
    q = shlex.quote
    log = _slurm_path(str(Path(results) / "logs")) + "/" + LAUNCHER_LOG
    sb: list[str] = [f"--job-name={q(launch.job_name)}", f"--nodes={int(launch.nodes)}", "--ntasks-per-node=1"]
    if int(launch.gpus_per_node) > 0:
        sb.append(f"--gpus-per-node={int(launch.gpus_per_node)}")
    sb += [
        f"--time={format_time_limit(float(launch.timeout) + cfg.time_margin)}",
        f"--output={q(log)}",
        f"--error={q(log)}",
        f"--chdir={q(results)}",
        "--no-requeue",          # the runner retries INFRA failures itself
        f"--export={cfg.env_passthrough}",
    ]
    for key in ("partition", "account", "qos"):
        value = getattr(cfg, key)
        if value:
            sb.append(f"--{key}={q(value)}")
    return sb + [q(arg) for arg in cfg.extra_sbatch]


def render_script(launch: Launch, cfg: SlurmOptions) -> str:
    """The batch script of one launch."""
    q = shlex.quote
    results = _one_line("the results dir", str(Path(launch.results_dir)))
    if not Path(results).is_absolute():
        raise UsageError(f"slurm backend: results dir must be an absolute path: {results!r}")
    launch_json = str(Path(results) / "launch.json")
    nodes, nproc, gpus = int(launch.nodes), int(launch.nproc_per_node), int(launch.gpus_per_node)
    if nodes < 1 or nproc < 1 or gpus < 0:
        raise UsageError(f"slurm backend: bad resources for {launch.job_name}: nodes={nodes} "
                         f"nproc_per_node={nproc} gpus_per_node={gpus}")

    host_python = "python3" if cfg.container_image else '"$RUNNER_PYTHON"'
    lines = [
        "#!/bin/bash",
        f"# runner launch {launch.job_name}: {nodes} node(s) x {nproc} process(es)",
        *(f"#SBATCH {flag}" for flag in sbatch_flags(launch, cfg, results)),
        "",
        "set -euo pipefail",
    ]
    env_lines = []
    for key in sorted(launch.env):
        if not ENV_NAME.match(str(key)):
            raise UsageError(f"slurm backend: env: {key!r} is not a valid environment variable name")
        env_lines.append(f"export {key}={q(str(launch.env[key]))}")
    if env_lines:
        lines += ["", "# the case's environment", *env_lines]
    lines += [
        "",
        f"RUNNER_PYTHON={q(cfg.python)}",
        "# the batch script runs on the first node of the allocation: it is the head node",
        'export RUNNER_HEAD_NODE="${SLURMD_NODENAME:-$(hostname -s)}"',
        # outside the container on the batch host: its own python3 when a container is used
        f'read -r HEAD_IP RDZV_PORT < <({host_python} -c {q(HEAD_NODE_PROGRAM)} {cfg.rdzv_port})',
        'echo "runner: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST; rendezvous $HEAD_IP:$RDZV_PORT '
        'hosted by $RUNNER_HEAD_NODE"',
        "",
    ]
    srun = ["srun", "--export=ALL", "--kill-on-bad-exit=1", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if cfg.container_image:
        srun.append(f"--container-image={q(cfg.container_image)}")
    if cfg.container_mounts:
        srun.append(f"--container-mounts={q(cfg.container_mounts)}")
    torchrun = [
        "bash", "-c", q(NODE_WRAPPER), "runner-node", '"$RUNNER_PYTHON"',
        "--nnodes", str(nodes), "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", '--rdzv-endpoint "$HEAD_IP:$RDZV_PORT"', '--rdzv-id "$SLURM_JOB_ID"',
        "-m", "runner.worker", q(launch_json),
    ]
    lines.append(" ".join(srun) + " \\\n    " + " ".join(torchrun))
    return "\n".join(lines) + "\n"
