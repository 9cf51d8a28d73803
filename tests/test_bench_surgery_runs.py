"""bench/bench_surgery_runs.py: the target rows it keeps from a bench_surgery record, and its
summary over runs (what the docs quote as the run-to-run spread of the 5x target)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_modules import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs_module(monkeypatch):
    return load_bench(monkeypatch, "bench_surgery_runs")


def _record(paired, reference_us, fwd_us=30.0, time="2026-11-28T00:00:00Z"):
    return {"time": time,
            "rows": [{"B": 1, "D": 512, "reference_us": 700.0, "cpp_us": 180.0, "cpp_speedup": 3.9},
                     {"B": 256, "D": 768, "reference_us": reference_us, "cpp_us": reference_us / paired,
                      "cpp_speedup": paired + 0.1, "cpp_speedup_paired": paired,
                      "cpp_speedup_paired_q1": paired - 0.5, "cpp_speedup_paired_q3": paired + 0.5,
                      "cpp_speedup_pairs": 101}],
            "call_overhead": [{"backend": "reference", "fwd_us": 350.0},
                              {"backend": "cpp", "fwd_us": fwd_us}]}


def test_only_the_paired_rows_are_kept_with_their_call_overhead(runs_module):
    (row,) = runs_module.target_rows(_record(5.2, 1600.0, fwd_us=31.5))
    assert (row["backend"], row["B"], row["D"]) == ("cpp", 256, 768)
    assert row["paired"] == 5.2 and row["q1"] == pytest.approx(4.7) and row["q3"] == pytest.approx(5.7)
    assert row["rounds"] == pytest.approx(5.3) and row["reference_us"] == 1600.0
    assert row["backend_us"] == pytest.approx(1600.0 / 5.2) and row["fwd_us"] == 31.5


def test_the_committed_bench_surgery_record_has_what_the_script_reads(runs_module):
    record = json.loads((ROOT / "bench/results/amd-epyc-x2/bench_surgery.json").read_text())
    rows = runs_module.target_rows(record)
    assert [(r["backend"], r["B"], r["D"]) for r in rows] == [("cpp", 256, 768)]
    assert all(r["fwd_us"] is not None and r["paired"] > 0 for r in rows)


def test_summary_over_runs(runs_module):
    runs = [r for paired, ref in [(5.9, 1900.0), (4.8, 1550.0), (6.4, 2100.0), (5.1, 1650.0)]
            for r in runs_module.target_rows(_record(paired, ref, fwd_us=ref / 60))]
    (s,) = runs_module.summarise(runs, goal=5.0)
    assert s["runs"] == 4 and s["runs_meeting_target"] == 3  # 4.8 misses
    assert s["paired_min"] == 4.8 and s["paired_max"] == 6.4
    assert s["paired_median"] == pytest.approx((5.1 + 5.9) / 2)
    assert s["reference_us_at_min"] == 1550.0  # the run with the lowest ratio
    assert s["reference_us_median"] == pytest.approx((1650.0 + 1900.0) / 2)
    assert s["fwd_us_max"] == pytest.approx(2100.0 / 60)
    assert runs_module.goal_for("cpu") == 5.0 and runs_module.goal_for("cuda") == 10.0


def test_the_committed_runs_file_agrees_with_its_own_runs(runs_module):
    """The summary committed beside the runs is the one the script computes from them."""
    record = json.loads((ROOT / "bench/results/amd-epyc-x2/bench_surgery_runs.json").read_text())
    assert record["rows"] == runs_module.summarise(record["runs"], goal=5.0)
