"""benchmarks/scann_frontier.py on a small random dataset, and its leaf bisection."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import ann  # pylint: disable=g-import-not-at-top,wrong-import-position
import scann_frontier  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("target", [0.0, 0.31, 0.5, 0.95, 0.97, 0.98])
def test_fewest_leaves_is_the_first_count_that_reaches_the_target(target):
  recalls = np.linspace(0.3, 0.97, 40)  # recall with 1..40 leaves searched, growing
  calls = []

  def recall_at(leaves):
    calls.append(leaves)
    return recalls[leaves - 1]

  reaching = [n for n in range(1, 41) if recalls[n - 1] >= target]
  want = (reaching[0], recalls[reaching[0] - 1]) if reaching else None
  assert scann_frontier.fewest_leaves(recall_at, 40, target) == want
  assert len(calls) <= 7  # 1 + ceil(log2(40)): a bisection, not a scan


def test_fewest_leaves_with_one_leaf_and_with_a_dip():
  assert scann_frontier.fewest_leaves(lambda leaves: 0.96, 1, 0.95) == (1, 0.96)
  assert scann_frontier.fewest_leaves(lambda leaves: 0.9, 1, 0.95) is None
  # Recall that dips below the target after first reaching it: the count found (5; 2 would
  # also do, unseen by the bisection) still reaches the target.
  recalls = {1: 0.5, 2: 0.96, 3: 0.93, 4: 0.94, 5: 0.96, 6: 0.97}
  assert scann_frontier.fewest_leaves(recalls.get, 6, 0.95) == (5, 0.96)


def _run(monkeypatch, capsys, *flags):
  vectors = np.random.default_rng(0).standard_normal((6_200, 16)).astype(np.float32)
  monkeypatch.setitem(ann.DATASETS, "tiny", lambda quick: vectors)
  monkeypatch.setattr(scann_frontier, "LEAVES_PER_SQRT_N", (0.8, 1.6))
  monkeypatch.setattr(scann_frontier, "DIMS_PER_BLOCK", (2,))
  monkeypatch.setattr(scann_frontier, "REORDER", (50, 100))
  monkeypatch.setattr(sys, "argv", ["scann_frontier.py", "--datasets", "tiny", "--queries",
                                    "100", "--repeats", "2", *flags])
  scann_frontier.main()
  return capsys.readouterr().out


@pytest.mark.slow
def test_scann_frontier_json(monkeypatch, capsys):
  lines = [json.loads(line)
           for line in _run(monkeypatch, capsys, "--target", "0.9", "--json").splitlines()]
  rows = [r for r in lines if "kind" in r]
  summary = next(r for r in lines if "summary" in r)
  kinds = [r["kind"] for r in rows]
  assert kinds.count("faiss_hnsw") == 1 and kinds.count("rag_jax default") == 1
  assert kinds.count("floor") == 2 * 1 * 2  # leaves x dims/block x rescoring dtypes
  grid = [r for r in rows if r["kind"] == "grid"]
  assert grid and all(r["recall_at_10"] >= 0.9 for r in grid)
  assert all(r["num"] == 6_100 and r["build_s"] > 0 for r in rows)
  assert all(0 < r["qps_min"] <= r["qps"] <= r["qps_max"] for r in rows)
  # One leaf and k rescored candidates find fewer neighbours than the grid's settings.
  floors = [r for r in rows if r["kind"] == "floor"]
  assert all(r["setting"].endswith(": 1 leaf, reorder 10") for r in floors)
  assert max(r["recall_at_10"] for r in floors) < min(r["recall_at_10"] for r in grid)
  faiss = summary["faiss_hnsw"]
  assert faiss["recall_at_10"] >= 0.9
  for kind in ("grid", "floor"):
    best = max((r for r in rows if r["kind"] == kind), key=lambda r: r["qps"])
    assert summary[kind]["setting"] == best["setting"]
    assert summary[kind]["qps_ratio"] == round(best["qps"] / faiss["qps"], 2)
    assert summary[kind]["build_ratio"] == round(faiss["build_s"] / best["build_s"], 2)


def test_scann_frontier_table_when_nothing_reaches_the_target(monkeypatch, capsys):
  monkeypatch.setattr(ann, "HNSW_EF_SEARCH", (10,))
  out = _run(monkeypatch, capsys, "--target", "1.0")
  assert "tiny: against FAISS HNSW's fastest setting with recall@10 >= 1.0" in out
  assert "  faiss_hnsw: none reaches the target" in out
  assert "(below the target), build" in out  # the default, with no ratio to FAISS
  assert "  fastest floor: leaves" in out


@pytest.mark.parametrize("flags", [["--datasets", "nope"], ["--datasets", ","],
                                   ["--target", "1.5"], ["--repeats", "0"]])
def test_scann_frontier_rejects_bad_flags(monkeypatch, capsys, flags):
  monkeypatch.setattr(sys, "argv", ["scann_frontier.py", *flags])
  with pytest.raises(SystemExit) as exit_:
    scann_frontier.main()
  assert exit_.value.code == 2
  assert "error:" in capsys.readouterr().err
