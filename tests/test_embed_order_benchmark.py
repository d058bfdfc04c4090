"""benchmarks/embed_order.py end to end on a few hand-made articles of mixed lengths."""

import json
import pathlib
import subprocess
import sys
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "embed_order.py"


@pytest.mark.slow
def test_embed_order_benchmark(tmp_path):
  words = "river mountain king queen war peace music science ".split()
  articles = tmp_path / "a.jsonl"
  articles.write_text("".join(
      json.dumps({"title": f"T{i}", "text": " ".join(words[(i + j) % 8] for j in range(n))})
      + "\n" for i, n in enumerate([3, 90, 7, 60, 12, 100, 5, 30] * 3)))
  proc = subprocess.run([sys.executable, SCRIPT, "--articles", articles,
                         "--passages", "20", "--rounds", "2", "--batch-size", "4"],
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["passages"] == 20 and result["batch"] == 4
  assert result["store_order_passages_per_s"] > 0 and result["by_length_passages_per_s"] > 0
  ratio = result["by_length_passages_per_s"] / result["store_order_passages_per_s"]
  assert abs(result["speedup"] / ratio - 1) < 0.05  # the rates are rounded to 0.1
  assert result["max_abs_diff"] < 1e-5  # the same vectors, whatever the batching
