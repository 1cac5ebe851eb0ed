"""Platform detection without importing torch: 'cpu', or a name derived from the GPU model.

Names follow Megatron's golden-file suffixes where one exists: an H100 is ``dgx_h100``, an A100
``dgx_a100``, a GB200 ``dgx_gb200``, an H200 ``dgx_h200``; any other GPU is ``gpu_<model>``.
Profiles in specs are matched by exact name first, then by ``gpu`` for any GPU platform.
"""
from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import subprocess
from functools import lru_cache
from typing import Any

KNOWN = (("gb200", "dgx_gb200"), ("h200", "dgx_h200"), ("h100", "dgx_h100"), ("a100", "dgx_a100"),
         ("b200", "dgx_b200"), ("l40", "gpu_l40"))


def platform_from_gpu_name(name: str) -> str:
    low = name.lower()
    for needle, plat in KNOWN:
        if needle in low:
            return plat
    slug = re.sub(r"[^a-z0-9]+", "_", low.replace("nvidia", "")).strip("_")
    return f"gpu_{slug}" if slug else "gpu"


@lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """GPU model names from nvidia-smi (no torch import); empty when there is no GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return ()
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def detect_platform() -> str:
    forced = os.environ.get("RUNNER_PLATFORM")
    if forced:
        return forced
    names = gpu_names()
    return platform_from_gpu_name(names[0]) if names else "cpu"


def gpu_count() -> int:
    return len(gpu_names())


def profile_candidates(platform: str) -> list[str]:
    """Profile names that apply to a platform, most specific last (later overrides earlier)."""
    return ["gpu", platform] if platform != "cpu" else ["cpu"]


def fingerprint(platform: str) -> dict[str, Any]:
    """What a golden file records about where it was made."""
    info: dict[str, Any] = {
        "platform": platform,
        "python": _platform.python_version(),
        "machine": _platform.machine(),
        "cpu": _cpu_model(),
        "gpus": list(gpu_names()),
    }
    try:
        from importlib.metadata import version

        info["torch"] = version("torch")
    except Exception:  # noqa: BLE001
        info["torch"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()
