"""Helpers shared by the benchmarks: timing, peak memory, one process per contestant."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np


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
# The test suite's tiny shapes, for --quick smoke runs; BART's special tokens (pad 1, bos 0,
# eos 2).
DPR_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, projection_dim=0)
BART_TINY = dict(vocab_size=101, d_model=32, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                 decoder_ffn_dim=41, max_position_embeddings=64)


# The generator's special tokens in the benchmarks' random batches (BART's <s>, </s>, <pad>).
START, END, PAD = 0, 2, 1


def rag_token_inputs(batch: int, docs: int, *, question: int, context: int, target: int,
                     question_vocab: int, vocab: int, dim: int) -> dict:
  """A random retrieved batch of `rag_jax.train.step.train_step`, as numpy: ids from 3 up
  (clear of BART's specials), labels framed by eos (2), document vectors N(0, 0.01); each
  context is `context` tokens, the question's 8 tokens after its passage's.

  Keys: question_ids, question_mask [B, Lq]; question_tokens [B, P], question_length [B];
  passage_tokens [B, Z, P], passage_length [B, Z]; doc_ids [B, Z]; doc_embeds [B, Z, D];
  labels [B, T] (P = context - 2).
  """
  rng = np.random.default_rng(0)
  p = context - 2
  q_ids = rng.integers(3, question_vocab, size=(batch, question)).astype(np.int32)
  labels = rng.integers(3, vocab, size=(batch, target)).astype(np.int32)
  labels[:, 0], labels[:, -1] = 2, 2
  return {"question_ids": q_ids, "question_mask": np.ones_like(q_ids),
          "question_tokens": rng.integers(3, vocab, size=(batch, p)).astype(np.int32),
          "question_length": np.full(batch, 8, np.int32),
          "passage_tokens": rng.integers(3, vocab, size=(batch, docs, p)).astype(np.int32),
          "passage_length": np.full((batch, docs), p - 8, np.int32),
          "doc_ids": np.tile(np.arange(docs, dtype=np.int32), (batch, 1)),
          "doc_embeds": rng.standard_normal((batch, docs, dim)).astype(np.float32) * 0.1,
          "labels": labels}


def step_config(docs: int, context: int):
  """The RAG-Token StepConfig of the benchmarks' batches."""
  from rag_jax import contexts as contexts_lib  # pylint: disable=import-outside-toplevel
  from rag_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  return step_lib.StepConfig(kind="token", k=docs, context=contexts_lib.ContextFormat(
      length=context, prefix=(START,), suffix=(END,), pad_id=PAD))


def contexts(inputs: dict, docs: int, context: int):
  """The generator contexts [B * Z, context] (ids, mask) the step joins from `inputs`."""
  from rag_jax import contexts as contexts_lib  # pylint: disable=import-outside-toplevel
  ids, mask = contexts_lib.join_contexts(inputs["passage_tokens"], inputs["passage_length"],
                                         inputs["question_tokens"], inputs["question_length"],
                                         step_config(docs, context).context)
  return np.asarray(ids), np.asarray(mask)
