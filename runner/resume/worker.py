"""In-rank wrapper of a ckpt-resume case's second launch: ``runner.resume.worker:run``.

Rank 0 rewinds the first launch's checkpoint folder through the case's layout and writes
``resume/rewound.json`` in this launch's results dir; the other ranks wait for that record
(the results dir is shared by every node), so no rank starts training before the folder
is final. Then every rank calls the real training entry with the same context.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from runner.resume.plan import RESUME_KEY, resume_iteration_for
from runner.results import write_json_atomic
from runner.worker.main import resolve_entry

RECORD = Path("resume") / "rewound.json"


def rewind(folder: Path, rec: Mapping[str, Any]) -> dict[str, Any]:
    layout = resolve_entry(str(rec["layout_ref"]))()
    saved = layout.saved_iterations(folder)
    train_iters = int(rec["train_iters"])
    it = resume_iteration_for(saved, train_iters)
    if it is None:
        raise RuntimeError(f"{folder}: no checkpoint at or before iteration {train_iters // 2} to resume from "
                           f"(saved: {saved or 'none'}; layout '{rec['layout']}')")
    removed = layout.rewind(folder, it)
    return {"ok": True, "iteration": it, "saved": saved, "removed": removed, "folder": str(folder),
            "layout": rec["layout"]}


def _wait(path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise TimeoutError(f"{path}: rank 0 did not rewind the checkpoints within {timeout:g}s")


def run(ctx) -> None:
    rec = ctx.args[RESUME_KEY]
    folder = ctx.sibling_dir(str(rec["from"])) / str(rec["subdir"])
    record_path = ctx.results_dir / RECORD
    if ctx.rank == 0:
        try:
            result = rewind(folder, rec)
        except Exception as exc:  # noqa: BLE001 - every rank must learn why
            write_json_atomic(record_path, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            raise
        write_json_atomic(record_path, result)
        print(f"resume: rewound {folder} to iteration {result['iteration']} (removed {result['removed']})",
              flush=True)
    else:
        result = _wait(record_path, max(60.0, float(ctx.launch.timeout)))
        if not result.get("ok"):
            raise RuntimeError(f"resume: rank 0 could not rewind {folder}: {result.get('error')}")
    ctx.record("resume", result)
    resolve_entry(str(rec["entry"]))(ctx)


def read_record(results_dir: str | Path) -> dict[str, Any] | None:
    """The rewind record of a finished run 2 (runner side), or None."""
    try:
        return json.loads((Path(results_dir) / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
