"""``requires: {"<distribution>": "<PEP 440 specifier>"}`` of the ``equivalence`` kind.

Checked at collection from the installed distributions' metadata (``importlib.metadata``;
nothing is imported): a requirement that is not installed or whose version does not match
makes the case SKIPPED with the reason and the install hint.
"""
from __future__ import annotations

import importlib.metadata
from typing import Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version


def check_specifiers(requires: Mapping[str, str]) -> str | None:
    """The first malformed specifier as a message, or None."""
    for dist, spec in requires.items():
        try:
            SpecifierSet(str(spec))
        except InvalidSpecifier:
            return f"'{spec}' (for {dist}) is not a PEP 440 version specifier, e.g. '>=0.16,<0.17'"
    return None


def unmet(requires: Mapping[str, str]) -> str | None:
    """Why the requirements are not met (one line), or None when they all are."""
    for dist, spec in requires.items():
        wanted = f"{dist}{spec}" if spec else dist
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"needs {wanted}, which is not installed"
        if not spec:
            continue
        try:
            ok = SpecifierSet(str(spec)).contains(Version(installed), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            return f"needs {wanted}, but {dist} {installed} is installed"
    return None


def skip_reason(requires: Mapping[str, str], hint: str | None) -> str | None:
    reason = unmet(requires)
    if reason is None:
        return None
    if not hint:
        hint = "pip install " + " ".join(f"'{d}{s}'" for d, s in requires.items())
    return f"{reason} (install: {hint})"
