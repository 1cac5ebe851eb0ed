"""PATH arguments (``runner run PATH...``): a file, ``file::case``, or a directory."""
from __future__ import annotations

from pathlib import Path

from runner.errors import UsageError


def expand_path_arg(raw: str, *, suffixes: tuple[str, ...] | None = None) -> tuple[bool, list[tuple[Path, str | None]]]:
    """(whether it named a directory, its (file, case-name filter) pairs). A directory gives
    every file below it (with one of ``suffixes``, when given), hidden folders left out, in
    sorted order; ``file::name`` gives the file with the filter ``name``."""
    path_part, sep, name = raw.partition("::")
    p = Path(path_part)
    if not p.exists():
        raise UsageError(f"{path_part}: no such file or directory")
    if not p.is_dir():
        return False, [(p, name if sep else None)]
    return True, [(f, None) for f in _files_below(p, suffixes)]


def _files_below(folder: Path, suffixes: tuple[str, ...] | None) -> list[Path]:
    def wanted(f: Path) -> bool:
        return (suffixes is None or f.suffix in suffixes) and f.is_file() and \
            not any(part.startswith(".") for part in f.relative_to(folder).parts)

    return sorted(f for f in folder.rglob("*") if wanted(f))
