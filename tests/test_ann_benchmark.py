"""benchmarks/ann.py end to end on a small random dataset: every backend, the summary ratios
and the extra query splits, in the table and in JSON."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import ann  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(monkeypatch, capsys, *flags):
  vectors = np.random.default_rng(0).standard_normal((6_200, 16)).astype(np.float32)
  monkeypatch.setitem(ann.DATASETS, "tiny", lambda quick: vectors)
  monkeypatch.setattr(sys, "argv", ["ann.py", "--datasets", "tiny", "--queries", "100",
                                    "--repeats", "1", "--splits", "2", *flags])
  ann.main()
  return capsys.readouterr().out


@pytest.mark.slow
def test_ann_benchmark_json(monkeypatch, capsys):
  lines = [json.loads(line) for line in _run(monkeypatch, capsys, "--json").splitlines()]
  rows = [r for r in lines if "backend" in r and "qps" in r]
  assert {r["backend"] for r in rows} == {"exact", "approx", "scann", "faiss_hnsw"}
  assert all(r["num"] == 6_100 and r["qps"] > 0 for r in rows)
  exact = [r for r in rows if r["backend"] == "exact"]
  assert exact[0]["recall_at_10"] == 1.0
  summary = next(r for r in lines if "summary" in r)
  assert summary["scann"]["recall_at_10"] >= ann.GOAL_RECALL
  assert summary["qps_ratio"] == round(summary["scann"]["qps"] / summary["faiss_hnsw"]["qps"], 2)
  splits = next(r for r in lines if "splits" in r)
  assert [s["seed"] for s in splits["per_split"]] == [1, 2]
  recalls = [s["recall_at_10"] for s in splits["per_split"]]
  assert splits["min"] == min(recalls) and splits["max"] == max(recalls)
  assert all(0.5 < r <= 1.0 for r in recalls)
  assert all(s["leaves_to_search"] >= 1 for s in splits["per_split"])


@pytest.mark.slow
def test_ann_benchmark_table(monkeypatch, capsys):
  out = _run(monkeypatch, capsys)
  assert "tiny: fastest setting with recall@10 >= 0.95" in out
  assert "tiny: scann default (recall_target 0.95) over 2 more splits" in out
