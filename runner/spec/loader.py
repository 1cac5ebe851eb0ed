"""From spec files to Cases: load (with positions), validate, merge defaults, expand the
matrix, apply the platform profile, validate args with the kind's schema and the kind's own
checks. Every error is a SpecError naming file:line:col and the key path."""
from __future__ import annotations

import copy
import itertools
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from runner.errors import CaseError, SpecError, UsageError, did_you_mean
from runner.records import Case, Location, Resources
from runner.platforms import profile_candidates
from runner.spec.bounded import check_name_component, read_text
from runner.spec.path_args import expand_path_arg
from runner.spec.schema import suite_schema, validate
from runner.spec.yamlpos import dotted, load_with_positions

SPEC_SUFFIXES = (".yaml", ".yml")
#: ``{axis}`` matrix placeholders; ``${NAME}`` (per-launch paths, Megatron-style) is left alone
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: a template's pieces: '{{' and '}}' are literal braces, '{name}' a placeholder
_TEMPLATE = re.compile(r"\{\{|\}\}|(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h)?\s*$")


def find_spec_files(paths: Iterable[str]) -> list[tuple[Path, str | None]]:
    """Expand PATHS (files, directories, 'file.yaml::case') into (file, case-name filter)."""
    out: list[tuple[Path, str | None]] = []
    seen: set[tuple[Path, str | None]] = set()
    for raw in paths:
        for file, name_filter in expand_path_arg(raw, suffixes=SPEC_SUFFIXES)[1]:
            if (file.resolve(), name_filter) not in seen:
                seen.add((file.resolve(), name_filter))
                out.append((file, name_filter))
    return out


def parse_duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"bad duration {value!r}")
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class _Positions:
    """Key path -> Location lookups for one case entry, falling back to the file defaults."""

    def __init__(self, positions: Mapping[tuple, Location], case_prefix: tuple) -> None:
        self.positions = positions
        self.case_prefix = case_prefix

    def at(self, key_path: tuple, profile: str | None = None) -> Location | None:
        candidates = []
        if profile:
            candidates.append(self.case_prefix + ("profiles", profile) + key_path)
            candidates.append(("defaults", "profiles", profile) + key_path)
        candidates += [self.case_prefix + key_path, ("defaults",) + key_path]
        for n in range(len(key_path), -1, -1):
            for c in candidates:
                base = c[: len(c) - len(key_path) + n]
                if base in self.positions:
                    return self.positions[base]
        return self.positions.get(self.case_prefix)

    def key_locations_cached(self, data: Mapping[str, Any], profiles: list[str]) -> Mapping[str, Location]:
        """``key_locations``, shared between the cases of one entry whose keys are the same
        (matrix combinations usually are): a case's locations depend only on its key tree."""
        shape = (_shape(data), tuple(profiles))
        cache = self.__dict__.setdefault("_cache", {})
        hit = cache.get(shape)
        if hit is None:
            hit = cache[shape] = self.key_locations(data, profiles)
        return hit

    def key_locations(self, data: Mapping[str, Any], profiles: list[str]) -> dict[str, Location]:
        out: dict[str, Location] = {}

        def walk(obj: Any, path: tuple) -> None:
            prof = next((p for p in reversed(profiles)
                         if self.case_prefix + ("profiles", p) + path in self.positions
                         or ("defaults", "profiles", p) + path in self.positions), None)
            loc = self.at(path, prof)
            if loc:
                out[dotted(path)] = loc
            if isinstance(obj, Mapping):
                for k, v in obj.items():
                    walk(v, path + (k,))

        for k, v in data.items():
            walk(v, (k,))
        return out


def _shape(obj: Any) -> Any:
    """The key tree of nested mappings (what key_locations walks), hashable."""
    if isinstance(obj, dict):   # parsed YAML: plain dicts (an ABC check costs 10x more)
        return tuple([(k, _shape(v)) for k, v in obj.items()])
    return None


def _substitute(value: Any, combo: Mapping[str, Any], where: str, file: str, loc: Location | None) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in combo:
            return copy.deepcopy(combo[whole.group(1)])   # keep the axis value's type

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name is None:
                return m.group()[0]   # '{{' -> '{', '}}' -> '}'
            if name not in combo:
                known = ", ".join(sorted(combo)) or "none (the case has no matrix)"
                raise SpecError(f"unknown placeholder '{{{name}}}'{did_you_mean(name, combo)}; matrix axes: {known} "
                                f"(write '{{{{' and '}}}}' for literal braces)",
                                file=file, line=loc.line if loc else None, col=loc.col if loc else None, key=where)
            return str(combo[name])

        return _TEMPLATE.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, combo, where, file, loc) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, combo, f"{where}.{k}" if where else k, file, loc) for k, v in value.items()}
    return value


def expand_matrix(matrix: Mapping[str, Any]) -> list[dict[str, Any]]:
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    combos: list[dict[str, Any]] = [dict(zip(axes, values)) for values in itertools.product(*axes.values())] if axes else []
    for ex in matrix.get("exclude", []) or []:
        combos = [c for c in combos if not all(c.get(k) == v for k, v in ex.items())]
    for inc in matrix.get("include", []) or []:
        if inc not in combos:
            combos.append(dict(inc))
    return combos or ([{}] if not axes else [])


@lru_cache(maxsize=None)
@lru_cache(maxsize=None)
def _case_schema(checks: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The schema of one expanded case (one object per check registry, so its compiled
    validator is reused)."""
    return {"$ref": "#/$defs/case", "$defs": suite_schema(checks)["$defs"]}


class SpecLoader:
    def __init__(self, plugins: Any, platform: str, *, root: Path | None = None) -> None:
        self.plugins = plugins
        self.platform = platform
        self.root = (root or Path.cwd()).resolve()
        self._id_prefix: dict[Path, str] = {}

    def case_id(self, file: Path, name: str) -> str:
        prefix = self._id_prefix.get(file)
        if prefix is None:
            try:
                rel = file.resolve().relative_to(self.root)
            except ValueError:
                rel = file
            prefix = self._id_prefix[file] = rel.as_posix()
        return f"{prefix}::{name}"

    def _check_ids(self) -> tuple[str, ...] | None:
        checks = getattr(self.plugins, "checks", None)
        return tuple(sorted(checks.ids())) if checks is not None else None

    def _schema(self) -> dict[str, Any]:
        return suite_schema(self._check_ids())

    def load_paths(self, paths: Iterable[str]) -> list[Case]:
        cases: list[Case] = []
        seen: dict[str, Case] = {}
        for file, name_filter in find_spec_files(paths):
            for case in self.load_file(file):
                if name_filter and case.name != name_filter:
                    continue
                if case.id in seen:
                    first = seen[case.id]
                    raise SpecError(f"duplicate case id '{case.id}' (first defined at {first.location})",
                                    file=str(file), line=case.location.line if case.location else None,
                                    col=case.location.col if case.location else None, key="name")
                seen[case.id] = case
                cases.append(case)
            if name_filter and not any(c.name == name_filter for c in cases if c.spec_file == str(file)):
                names = [c.name for c in self.load_file(file)]
                raise UsageError(f"{file}: no case named '{name_filter}'{did_you_mean(name_filter, names)}")
        return cases

    def load_file(self, file: Path) -> list[Case]:
        fname = str(file)
        text = read_text(file, what="spec")
        data, positions = load_with_positions(text, fname)
        if data is None:
            raise SpecError("empty spec file (expected 'cases:')", file=fname, line=1, col=1)
        validate(data, self._schema(), file=fname, positions=positions, allow_placeholders=True)
        defaults = data.get("defaults", {}) or {}
        out: list[Case] = []
        for index, entry in enumerate(data["cases"]):
            out.extend(self._expand_entry(file, index, entry, defaults, positions))
        return out

    def _expand_entry(self, file: Path, index: int, entry: Mapping[str, Any], defaults: Mapping[str, Any],
                      positions: Mapping[tuple, Location]) -> list[Case]:
        fname = str(file)
        prefix = ("cases", index)
        pos = _Positions(positions, prefix)
        matrix = entry.get("matrix") or {}
        combos = expand_matrix(matrix) if matrix else [{}]
        if matrix and not combos:
            loc = positions.get(prefix + ("matrix",))
            raise SpecError("the matrix expands to no case (everything excluded)", file=fname,
                            line=loc.line if loc else None, col=loc.col if loc else None, key=f"cases[{index}].matrix")
        body = {k: v for k, v in entry.items() if k != "matrix"}
        merged_base = deep_merge(defaults, body)
        # profiles first (the same for every combination), so their values may use
        # placeholders too; substitution then builds fresh containers for each combination
        profiles = merged_base.pop("profiles", {}) or {}
        applied: list[str] = []
        for pname in profile_candidates(self.platform):
            if pname in profiles:
                merged_base = deep_merge(merged_base, profiles[pname])
                applied.append(pname)
        key_locs = {k: pos.at((k,)) for k in merged_base}
        cases = []
        for combo in combos:
            merged = {k: _substitute(v, combo, k, fname, key_locs[k]) for k, v in merged_base.items()}
            cases.append(self._build_case(file, index, merged, combo, pos, applied))
        return cases

    def _build_case(self, file: Path, index: int, d: Mapping[str, Any], combo: Mapping[str, Any],
                    pos: _Positions, profiles: list[str]) -> Case:
        fname = str(file)
        name = str(d["name"])
        case_loc = pos.at(("name",)) or pos.positions.get(pos.case_prefix)

        def err(key: str, message: str) -> SpecError:
            loc = pos.at(tuple(k for k in key.split(".")), profiles[-1] if profiles else None)
            return SpecError(f"case '{name}': {message}", file=fname, line=loc.line if loc else None,
                             col=loc.col if loc else None, key=key)

        if any(ch in name for ch in "/\0\n"):
            raise err("name", "a case name may not contain '/', newlines or NUL")
        if (why := check_name_component(name, what="a case name")) is not None:
            raise err("name", why)
        # the expanded case again, now that placeholders hold their axis values
        validate(dict(d), _case_schema(self._check_ids()), file=fname, positions=_ArgPositions(pos, profiles),
                 what=f" (case '{name}')")
        kind_id = d.get("kind")
        if not kind_id:
            raise err("name", "no 'kind' given (in the case or the file's defaults)")
        if kind_id not in self.plugins.kinds:
            try:
                self.plugins.kinds.get(kind_id)
            except UsageError as exc:
                raise err("kind", str(exc)) from None
        kind = self.plugins.kind(kind_id)
        res = d.get("resources", {}) or {}
        gpus = res.get("gpus")
        resources = Resources(nodes=int(res.get("nodes", 1)), nproc_per_node=int(res.get("nproc_per_node", 1)),
                              gpus=None if gpus in (None, "auto") else int(gpus))
        xfail = d.get("xfail")
        skip = d.get("skip")
        case = Case(
            id=self.case_id(file, name),
            name=name,
            kind=kind_id,
            args=dict(d.get("args", {}) or {}),
            resources=resources,
            spec_file=fname,
            location=case_loc,
            env={str(k): _env_str(v) for k, v in (d.get("env", {}) or {}).items()},
            timeout=parse_duration(d.get("timeout", 600)),
            retries=int(d.get("retries", 0)),
            tags=tuple(d.get("tags", []) or []),
            xfail=("expected to fail" if xfail is True else (str(xfail) if xfail else None)),
            skip=("skipped by the spec" if skip is True else (str(skip) if skip else None)),
            golden=dict(d.get("golden", {}) or {}),
            compare=dict(d.get("compare", {}) or {}),
            matrix=dict(combo),
            platform=self.platform,
            key_locations=pos.key_locations_cached(d, profiles),
        )
        validate(case.args, kind.args_schema, file=fname, positions=_ArgPositions(pos, profiles),
                 prefix=("args",), what=f" (case '{name}', kind '{kind_id}')")
        golden_name = case.golden.get("name")
        if isinstance(golden_name, str) and (why := check_name_component(golden_name, what="golden.name")):
            raise err("golden.name", why + " under the golden root")
        try:
            kind.validate(case)
        except CaseError as exc:
            raise err(exc.key, exc.bare_message) from None
        except OSError as exc:   # e.g. a path component longer than the filesystem allows
            key = _key_holding(case.args, str(exc.filename or ""), "args")
            raise err(key, f"cannot use path {_short(str(exc.filename or ''))}: {exc.strerror or exc}") from None
        return case


class _ArgPositions(Mapping):
    """Positions for the args schema check: the key's location in case, profile or defaults."""

    def __init__(self, pos: _Positions, profiles: list[str]) -> None:
        self.pos, self.profiles = pos, profiles

    def get(self, key, default=None):
        return self.pos.at(tuple(key), self.profiles[-1] if self.profiles else None) or default

    def __getitem__(self, key):
        loc = self.get(key)
        if loc is None:
            raise KeyError(key)
        return loc

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def _key_holding(obj: Any, needle: str, path: str) -> str:
    """The dotted key of the first string in ``obj`` that ``needle`` (a file name) ends with."""

    def find(o: Any, p: str) -> str | None:
        if isinstance(o, str):
            return p if o and needle.endswith(o.rstrip("/")) else None
        items = o.items() if isinstance(o, Mapping) else enumerate(o) if isinstance(o, list) else ()
        for k, v in items:
            hit = find(v, f"{p}[{k}]" if isinstance(k, int) else f"{p}.{k}")
            if hit:
                return hit
        return None

    return find(obj, path) or path


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _env_str(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)
