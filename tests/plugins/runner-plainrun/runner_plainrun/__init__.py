"""A minimal third-party plugin: a backend (every launch runs as `torchrun --standalone`, one
node) and a metric check (``final``, in ``checks.py``).

It exists to prove the plugin API from the outside: installed as a package with an entry
point in the `runner` group, it becomes usable as `--backend plainrun`, and specs may name
`final` in `compare.metrics.<metric>.checks`. It imports only the public API (`runner`), and
declares its own checked option (`nice`) without any change to the runner.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner import Backend, BackendOption, Handle, JobState, Rendered, hookimpl, outcome_from_records


def _niceness(value):
    if not value.strip().isdigit() or not 0 <= int(value) <= 19:
        raise ValueError("not an integer in 0..19")
    return int(value)


class PlainRunBackend(Backend):
    id = "plainrun"
    description = "torchrun --standalone, one node (a third-party example plugin)"
    poll_interval = 0.2
    options = {
        "marker": "a word written into the launcher log",
        "nice": BackendOption("run torchrun under `nice -n N` (0..19)", check=_niceness),
    }

    def _cmd(self, launch):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(launch.nproc_per_node), *launch.worker_argv]
        if "nice" in self.opts:
            cmd = ["nice", "-n", str(_niceness(self.opts["nice"])), *cmd]
        return cmd

    def render(self, launch):
        return Rendered(launch, "PLAINRUN " + " ".join(self._cmd(launch)), command=tuple(self._cmd(launch)))

    def submit(self, launch):
        logs = Path(launch.results_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / "launcher.log", "ab")
        out.write(f"plainrun marker={self.opts.get('marker', '-')}\n".encode())
        out.flush()
        env = dict(os.environ, **launch.env, CUDA_VISIBLE_DEVICES="")
        proc = subprocess.Popen(self._cmd(launch), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        return Handle(str(proc.pid), launch, time.monotonic(), {"proc": proc, "out": out})

    def poll(self, handles):
        return {h.id: JobState(h.data["proc"].poll() is not None) for h in handles}

    def cancel(self, handle, reason):
        handle.cancel_reason = reason
        try:
            os.killpg(handle.data["proc"].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def collect(self, handle):
        handle.data["out"].close()
        return outcome_from_records(handle.launch, exit_code=handle.data["proc"].returncode,
                                    duration=time.monotonic() - handle.submitted_at,
                                    cancel_reason=handle.cancel_reason)


@hookimpl
def runner_register_backends(registry):
    registry.add(PlainRunBackend)


@hookimpl
def runner_register_checks(registry):
    from runner_plainrun.checks import FinalValue

    registry.add(FinalValue)
# -- a third-party reporter with its own option, and a plain plugin option -------------------
class PlainSummaryReporter:
    """``--plain-summary FILE``: one line per case, ``<verdict> <case id>``; the first line
    carries ``--plain-tag`` (a plugin option added through ``runner_addoption``)."""

    id = "plain-summary"
    description = "--plain-summary FILE: one line per case (a third-party example reporter)"

    def __init__(self, path, tag):
        self.path, self.tag, self.seen = Path(path), tag, []

    @classmethod
    def add_options(cls, parser):
        parser.add_argument("--plain-summary", dest="plain_summary", metavar="FILE")

    @classmethod
    def create(cls, ns, session):
        path = getattr(ns, "plain_summary", None)
        return cls(path, session.options.extra.get("plain_tag")) if path else None

    # the reporter interface, duck-typed: a plugin need not import runner.report.base
    def session_start(self, session, cases):
        self.total = len(cases)

    def line(self, text):
        pass

    def progress(self, done, running, total):
        pass

    def annotate(self, result):
        return result

    def case_result(self, result):
        self.seen.append(result.case.id)

    def session_finish(self, session, results, summary):
        lines = [f"tag={self.tag} cases={self.total} streamed={len(self.seen)} exit={summary.exit_code}"]
        lines += [f"{r.verdict.value} {r.case.id}" for r in results]
        self.path.write_text("\n".join(lines) + "\n")

    def close(self):
        pass


@hookimpl
def runner_register_reporters(registry):
    registry.add(PlainSummaryReporter)


@hookimpl
def runner_addoption(parser):
    parser.add_argument("--plain-tag", dest="plain_tag", default="none", help="a word for the plain summary")
