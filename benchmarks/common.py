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


def rag_token_inputs(batch: int, docs: int, *, question: int, context: int, target: int,
                     question_vocab: int, vocab: int, dim: int):
  """Random inputs of `rag_token_train_step`, as numpy (int32 ids, float32 vectors): ids from
  3 up (clear of BART's specials), labels framed by eos (2), document vectors N(0, 0.01)."""
  rng = np.random.default_rng(0)
  q_ids = rng.integers(3, question_vocab, size=(batch, question)).astype(np.int32)
  ctx = rng.integers(3, vocab, size=(batch * docs, context)).astype(np.int32)
  labels = rng.integers(3, vocab, size=(batch, target)).astype(np.int32)
  labels[:, 0], labels[:, -1] = 2, 2
  doc_embeds = rng.standard_normal((batch, docs, dim)).astype(np.float32) * 0.1
  return q_ids, np.ones_like(q_ids), ctx, np.ones_like(ctx), labels, doc_embeds


def rag_token_train_step(model, tx):
  """The RAG-Token training step that the benchmarks time, jitted, params and optimizer
  state donated: step(params, opt_state, key, inputs) -> (params, opt_state, loss).

  inputs = (question ids [B, Lq], their mask, contexts [B * Z, Lc], their mask,
  labels [B, Lt], document vectors [B, Z, D]). Question encoder -> doc scores against the
  frozen document vectors -> RAG-Token loss (summed over the batch) -> gradient -> `tx`
  (AdamW in the benchmarks) over every parameter, dropout on.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  def loss_fn(params, key, inputs):
    q_ids, q_mask, ctx, ctx_mask, labels, doc_embeds = inputs
    kq, kg = jax.random.split(key)
    scores = model.doc_scores_fn(params, q_ids, q_mask, doc_embeds, deterministic=False,
                                 rngs={"dropout": kq})
    return model.loss_fn(params, ctx, ctx_mask, scores, labels, kind="token",
                         deterministic=False, rngs={"dropout": kg}).sum()

  def step(params, opt_state, key, inputs):
    loss, grads = jax.value_and_grad(loss_fn)(params, key, inputs)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))
