"""The benchmark harness's bookkeeping: statistics, alternation, tables, the docs section (no timing)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_harness", Path(__file__).resolve().parents[2] / "benchmarks" / "harness.py"
)
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness  # dataclasses look their module up
_spec.loader.exec_module(harness)


def test_summary_median_and_range():
    s = harness.Summary.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        harness.Summary.of([])


def test_ratio_of_medians():
    assert harness.ratio([2.0, 4.0, 100.0], [1.0, 2.0, 3.0]) == 2.0
    assert harness.ratio([1.0], [0.0]) == math.inf
    assert math.isnan(harness.ratio([0.0], [0.0]))


def test_alternating_order_runs_each_contender_once_per_repetition():
    assert harness.alternating_order(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]


def test_comparison_rows_skip_missing_metrics():
    a = [{"x": 2.0, "y": None}, {"x": 4.0, "y": None}]
    b = [{"x": 1.0, "y": 1.0}, {"x": 1.0, "y": 1.0}]
    rows, data = harness.comparison_rows([("x", "X", 3), ("y", "Y", 3)], a, b)
    assert [r[0] for r in rows] == ["X"]
    assert data["x"]["ratio"] == 3.0
    assert rows[0][1] == "3 (2–4)"


def test_markdown_table_and_cells():
    table = harness.markdown_table(["k", "v"], [["a", "1"]])
    assert table.splitlines() == ["| k | v |", "| --- | ---: |", "| a | 1 |"]
    assert harness.fmt(12345.6) == "12,346"
    assert harness.fmt(0.01234) == "0.0123"


def test_replace_section_keeps_hand_written_text():
    text = "# Perf\n\nhand written\n"
    once = harness.replace_section(text, "table v1")
    assert once.startswith(text.rstrip()) and "table v1" in once
    twice = harness.replace_section(once + "\n## After\n", "table v2")
    assert "table v1" not in twice and "table v2" in twice
    assert "hand written" in twice and "## After" in twice
    assert twice.count(harness.BEGIN_MARK) == 1


def test_a_partial_run_has_its_own_section_and_leaves_the_full_run_s():
    full = harness.replace_section("# Perf\n", "full tables")
    both = harness.replace_section(full, "real v1", name="real")
    again = harness.replace_section(both, "real v2", name="real")
    assert "full tables" in again and "real v2" in again and "real v1" not in again
    assert again.count(harness.marks("real")[0]) == 1 and again.count(harness.BEGIN_MARK) == 1
