"""Helpers shared by the benchmarks: timing, peak memory, one process per contestant."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
  """Median wall time of fn() over `repeats` calls, after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_rss_gb() -> float:
  """This process's peak resident set size so far, in GB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_child(script: str, args: List[str], extra_env: Optional[Dict[str, str]] = None) -> dict:
  """Runs `python script args` and returns the JSON object on its last stdout line."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(extra_env or {}))
  proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                        env=env, check=False)
  if proc.returncode:
    tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
    sys.exit(f"error: {os.path.basename(script)} {' '.join(args)} failed: {tail[0]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# dpr-base and bart-base shapes (HF config kwargs) for the RAG benchmarks' random-weight models.
DPR_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, projection_dim=0)
BART_BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                 encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                 decoder_ffn_dim=3072, max_position_embeddings=1024)
