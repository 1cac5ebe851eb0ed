"""Golden values in Megatron-LM's format and the checks that compare a run with them.

- ``files``: find, load and write golden files; the fingerprint sidecar;
- ``rules``: Megatron's thresholds, case overrides, ``compare.select``;
- ``series``: the whole-series arithmetic (numpy);
- ``evaluate``: which metrics and checks run (the checks themselves: ``runner.compare.checks``).

See docs/golden.md for every rule and where it comes from.
"""
from __future__ import annotations

from runner.compare.golden.evaluate import check_metrics, series_agreement
from runner.compare.golden.files import (GoldenFile, GoldenSeries, find_golden, golden_filename, golden_path_for,
                                         load_golden, sidecar_path, write_golden)
from runner.compare.golden.rules import CompareOptions, Rule

__all__ = ["CompareOptions", "GoldenFile", "GoldenSeries", "Rule", "check_metrics", "find_golden",
           "golden_filename", "golden_path_for", "load_golden", "series_agreement", "sidecar_path", "write_golden"]
