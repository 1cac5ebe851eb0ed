"""A minimal third-party backend: every launch runs as `torchrun --standalone` (one node).

It exists to prove the plugin API from the outside: installed as a package with an entry
point in the `runner` group, it becomes usable as `--backend plainrun`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.run.backend import Backend, Handle, JobState, Rendered, outcome_from_records
from runner.hookspecs import hookimpl


class PlainRunBackend(Backend):
    id = "plainrun"
    description = "torchrun --standalone, one node (a third-party example plugin)"
    poll_interval = 0.2
    options = {"marker": "a word written into the launcher log"}

    def _cmd(self, launch):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(launch.nproc_per_node), *launch.worker_argv]

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
