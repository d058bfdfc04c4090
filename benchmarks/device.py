"""Accelerator checks in one run: training MFU (RAG core) and exact-search bandwidth (index).

    python benchmarks/device.py [--out DIR]     # on a GPU (or TPU): the full sizes below
    python benchmarks/device.py --quick         # tiny sizes on any backend: a smoke run

Prepared for a lent H100/H200, to be run once per lease (README's "Device" section); on the
CPU only `--quick` makes sense. Three parts, each printing one JSON line as it ends:

1. ceilings, measured on the card: a 8192^3 bf16 matmul (TFLOP/s) and a 4 GiB device-to-
   device copy (TB/s, bytes read + written), each dispatched back to back, next to the card's
   nominal figures (CARDS).
2. train: the RAG-Token training step of `benchmarks/rag_loss.py` (question encoder ->
   doc scores -> RAG-Token loss -> grad -> AdamW on every weight, dropout on) at bart-large /
   dpr-base shapes in bfloat16 computation (float32 params and moments), 5 docs, contexts of
   128 tokens, targets of 32, random weights; for each --batches value (16, 64) in turn until
   one does not fit: seconds per step (median of --steps), generator tokens/s
   (B * Z * (128 + 32) / s) and MFU = model FLOPs per step / seconds / the card's bf16 dense
   peak. Model FLOPs are counted by hand (`train_flops`: 3x the forward matmuls, no
   rematerialisation); XLA's own count of the compiled step is printed beside them as a check.
3. search: `ExactSearch` over N = 10M x 768 bfloat16 random vectors made on the device, for
   query batches 1, 32 and 128 and chunk sizes 2^16 (raised to 64 chunks, the most there
   are), the default (None: 16 chunks on a GPU), 2^22 and 2^24 (one chunk); each row gives
   the rows per chunk used ("chunk_rows"). Measured: milliseconds per search on the
   device (20 searches dispatched back to back) and end to end (`search`: queries from and
   top 10 back to the host), and the bandwidth N * D * 2 bytes / device time, as a fraction
   of the measured copy and of the nominal bandwidth. Checked first: its top 10 for 8
   queries equal `lax.top_k` over the full [8, N] score matrix. Beside them, "unchunked":
   that one matmul and one `lax.top_k`, timed, for comparison. The optimised program for
   2^22 rows and 128 queries goes to --out as search_hlo.txt.

Goals (from the issues): MFU >= 50% and bandwidth >= 80% of the card's.
"""

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

import common

# device_kind substring: (bf16 dense TFLOP/s, memory TB/s), nominal (datasheet, SXM).
CARDS = {"H200": (989.4, 4.8), "H100": (989.4, 3.35), "A100": (312.0, 2.0)}
BART_LARGE = dict(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
                  encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                  decoder_ffn_dim=4096, max_position_embeddings=1024)
FULL = dict(dpr=common.DPR_BASE, bart=BART_LARGE, docs=5, context=128, target=32, question=32,
            batches=(16, 64), rows=10_000_000, dim=768, query_batches=(1, 32, 128),
            chunks=(1 << 16, None, 1 << 22, 1 << 24), matmul=8192, copy_gib=4)
QUICK = dict(dpr=common.DPR_TINY, bart=common.BART_TINY, docs=3, context=16, target=8, question=8,
             batches=(2, 4), rows=20_000, dim=64, query_batches=(1, 8),
             chunks=(1 << 12, None, 1 << 14), matmul=256, copy_gib=1 / 64)


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _card(jax) -> dict:
  kind = jax.devices()[0].device_kind
  peak, bandwidth = next((v for k, v in CARDS.items() if k in kind), (None, None))
  return {"device": kind, "backend": jax.default_backend(), "nominal_tflops": peak,
          "nominal_tb_s": bandwidth}


def _time(fn, repeats: int) -> float:
  """Median seconds of fn() (which must block until its work is done), after one warm-up."""
  return common.median_seconds(fn, repeats, warmup=1)


def _throughput(jax, fn, calls: int = 20) -> float:
  """Seconds per call of a jitted fn() that returns device arrays, `calls` dispatched back to
  back and waited for once (no host round trip between calls); median of 5 such runs."""
  def run():
    outs = [fn() for _ in range(calls)]
    jax.block_until_ready(outs)
  return common.median_seconds(run, 5, warmup=1) / calls


def ceilings(jax, jnp, s: dict) -> dict:
  n = s["matmul"]
  ka, kb = jax.random.split(jax.random.PRNGKey(1))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16)
  matmul = jax.jit(lambda a, b: a @ b)
  seconds = _throughput(jax, lambda: matmul(a, b))
  words = int(s["copy_gib"] * 2**30) // 4
  x = jax.random.uniform(ka, (words,), jnp.float32)
  copy = jax.jit(lambda x: x + 1.0)  # reads and writes every word once
  copy_s = _throughput(jax, lambda: copy(x), calls=10)
  # Three significant figures: a CPU's figures (the --quick sizes in the tests) would round
  # to 0 at a fixed number of decimals.
  return {"part": "ceilings", "matmul_tflops": float(f"{2 * n**3 / seconds / 1e12:.3g}"),
          "copy_tb_s": float(f"{2 * 4 * words / copy_s / 1e12:.3g}")}


def train_flops(dpr: dict, bart: dict, batch: int, docs: int, question: int, context: int,
                target: int) -> float:
  """Model FLOPs of one training step: 3x (forward + backward) the forward's matmuls.

  Counted: every projection and FFN matmul, attention scores and mixing, the cross-attention
  key/value projections, the LM head. Not counted: embeddings, norms, softmax, AdamW.
  """
  def encoder(tokens, length, d, ffn, layers):
    return tokens * layers * (2 * (4 * d * d + 2 * d * ffn) + 4 * length * d)

  d, ffn = bart["d_model"], bart["decoder_ffn_dim"]
  q = encoder(batch * question, question, dpr["hidden_size"], dpr["intermediate_size"],
              dpr["num_hidden_layers"])
  ctx_tokens, tgt_tokens = batch * docs * context, batch * docs * target
  enc = encoder(ctx_tokens, context, d, bart["encoder_ffn_dim"], bart["encoder_layers"])
  layers = bart["decoder_layers"]
  dec = tgt_tokens * layers * (2 * (4 * d * d + 2 * d * d + 2 * d * ffn)  # self, cross q/o, FFN
                               + 4 * target * d + 4 * context * d)       # self and cross attention
  dec += ctx_tokens * layers * 2 * (2 * d * d)                           # cross keys and values
  head = tgt_tokens * 2 * d * bart["vocab_size"]
  return 3.0 * (q + enc + dec + head)


def _rag_model(jax, jnp, s: dict):
  """A bfloat16 Rag (modules, no params) at the shapes of `s`, and init() -> random params
  (the same on every call)."""
  from rag_jax import rag  # pylint: disable=import-outside-toplevel
  from rag_jax.models import bart as bart_lib  # pylint: disable=import-outside-toplevel
  from rag_jax.models import bert as bert_lib  # pylint: disable=import-outside-toplevel
  q_module = bert_lib.BertEncoder(bert_lib.BertConfig.from_hf(s["dpr"]), dtype=jnp.bfloat16)
  g_module = bart_lib.Bart(bart_lib.BartConfig.from_hf(s["bart"]), dtype=jnp.bfloat16)
  kq, kg = jax.random.split(jax.random.PRNGKey(0))
  ids = jnp.ones((1, 8), jnp.int32)
  init_q, init_g = jax.jit(q_module.init), jax.jit(g_module.init)

  def init():
    return {"question_encoder": init_q(kq, ids, ids)["params"],
            "generator": init_g(kg, ids, ids, ids)["params"]}
  # Params stay out of the model: each training step takes (and donates) a fresh set.
  return rag.Rag(q_module, g_module, rag.RagConfig(n_docs=s["docs"])), init


def _train_inputs(jnp, s: dict, batch: int):
  arrays = common.rag_token_inputs(batch, s["docs"], question=s["question"], context=s["context"],
                                   target=s["target"], question_vocab=s["dpr"]["vocab_size"],
                                   vocab=s["bart"]["vocab_size"], dim=s["dpr"]["hidden_size"])
  return {k: jnp.asarray(a) for k, a in arrays.items()}


def train(jax, jnp, s: dict, card: dict, steps: int):
  import optax  # pylint: disable=import-outside-toplevel
  from rag_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  rag, init = _rag_model(jax, jnp, s)
  tx = optax.adamw(1e-5, weight_decay=0.01)
  for batch in s["batches"]:
    step = step_lib.jit_train_step(rag, tx, common.step_config(s["docs"], s["context"]))
    inputs = _train_inputs(jnp, s, batch)
    try:
      state = {"state": step_lib.create_state(init(), tx, seed=0)}
      compiled = step.lower(state["state"], inputs, None).compile()

      def run():
        state["state"], metrics = compiled(state["state"], inputs, None)
        metrics["loss"].block_until_ready()
        state["loss"] = float(metrics["loss"])
      seconds = _time(run, steps)
    except Exception as e:  # pylint: disable=broad-except  (out of memory ends the sweep)
      if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
        raise
      yield {"part": "train", "batch": batch, "error": str(e).splitlines()[0][:200]}
      return
    flops = train_flops(s["dpr"], s["bart"], batch, s["docs"], s["question"], s["context"],
                        s["target"])
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    xla_flops = float((analysis or {}).get("flops", float("nan")))
    peak = card["nominal_tflops"]
    yield {"part": "train", "batch": batch, "docs": s["docs"], "s_per_step": round(seconds, 4),
           "tokens_per_s": round(batch * s["docs"] * (s["context"] + s["target"]) / seconds),
           "model_gflop_per_step": round(flops / 1e9, 1),
           "xla_gflop_per_step": round(xla_flops / 1e9, 1),
           "achieved_tflops": round(flops / seconds / 1e12, 2),
           "mfu": round(flops / seconds / (peak * 1e12), 3) if peak else None,
           "loss": round(state["loss"], 3)}
    state.clear()  # the next batch's params and moments get the memory


def _make_rows(jax, jnp, rows: int, dim: int):
  """[rows, dim] bfloat16 N(0, 1) made on the device, 1M rows at a time (drawn in float32,
  then rounded: bfloat16 draws repeat values often)."""
  block = 1 << 20
  keys = jax.random.split(jax.random.PRNGKey(2), -(-rows // block))
  make = jax.jit(lambda k, n: jax.random.normal(k, (n, dim)).astype(jnp.bfloat16),
                 static_argnums=1)
  parts = [make(k, min(block, rows - i * block)) for i, k in enumerate(keys)]
  return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def search(jax, jnp, s: dict, card: dict, copy_tb_s: float, hlo_dir=None):
  from rag_jax.index.exact import ExactSearch  # pylint: disable=import-outside-toplevel
  rows, dim, k = s["rows"], s["dim"], 10
  emb = _make_rows(jax, jnp, rows, dim)
  queries = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (max(s["query_batches"]), dim),
                                         jnp.bfloat16), np.float32)
  # The check: chunked top-k against one top_k over the full score matrix.
  q8 = jnp.asarray(queries[:8], jnp.bfloat16)
  want = jax.jit(lambda q, e: jax.lax.top_k(
      jnp.einsum("bd,nd->bn", q, e, preferred_element_type=jnp.float32), k))(q8, emb)
  want_ids = np.asarray(want[1])
  bytes_read = rows * dim * 2
  nominal = card["nominal_tb_s"]

  def bandwidth(seconds):
    tb_s = bytes_read / seconds / 1e12
    return {"ms": round(seconds * 1e3, 3), "tb_s": round(tb_s, 3),
            "of_copy": round(tb_s / copy_tb_s, 3),
            "of_nominal": round(tb_s / nominal, 3) if nominal else None}

  # For comparison, no chunking: one [B, N] score matrix, then one top_k over it.
  full = jax.jit(lambda q, e: jax.lax.top_k(
      jnp.einsum("bd,nd->bn", q, e, preferred_element_type=jnp.float32), k))
  for b in s["query_batches"]:
    q = jnp.asarray(queries[:b], jnp.bfloat16)
    yield {"part": "search", "rows": rows, "dim": dim, "chunk": "unchunked", "queries": b,
           **bandwidth(_throughput(jax, lambda q=q: full(q, emb)))}
  for chunk in s["chunks"]:
    index = ExactSearch(emb, chunk_size=chunk, dtype="bfloat16")
    got_scores, got_ids = index.search(queries[:8], k)
    same = bool(np.all(np.sort(got_ids, axis=1) == np.sort(want_ids, axis=1)))
    close = float(np.abs(got_scores - np.asarray(want[0])).max())
    for b in s["query_batches"]:
      # End to end (queries from and results to the host, as `search` serves them), and the
      # device work alone: the index's jitted top-k on device-resident queries, back to back.
      host_s = _time(functools.partial(index.search, queries[:b], k), 10)
      q = jnp.asarray(queries[:b], jnp.bfloat16)
      inner = index._index  # pylint: disable=protected-access
      fn, emb_on_device = inner._fn, inner.embeddings  # pylint: disable=protected-access
      seconds = _throughput(jax, functools.partial(fn, q, emb_on_device, k=k))
      if hlo_dir and b == max(s["query_batches"]) and chunk == s["chunks"][-2]:
        # The optimised program, to read offline whether each chunk is copied before its dot.
        with open(os.path.join(hlo_dir, "search_hlo.txt"), "w") as f:
          f.write(fn.lower(q, emb_on_device, k=k).compile().as_text())
      yield {"part": "search", "rows": rows, "dim": dim, "chunk": chunk or "default",
             "chunk_rows": inner.chunk_rows,
             "queries": b,
             **bandwidth(seconds), "ms_end_to_end": round(host_s * 1e3, 3),
             "same_ids_as_full_top_k": same, "max_score_diff": round(close, 4)}
    del index, fn, emb_on_device  # this index's chunk copies, before the next one's


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (any backend)")
  parser.add_argument("--steps", type=int, default=5, help="timed training steps per batch")
  parser.add_argument("--parts", default="ceilings,train,search")
  parser.add_argument("--batches", help="training batch sizes, comma-separated (default: "
                      f"{','.join(map(str, FULL['batches']))}; --quick: "
                      f"{','.join(map(str, QUICK['batches']))})")
  parser.add_argument("--prng", choices=("threefry2x32", "rbg", "unsafe_rbg"),
                      help="jax_default_prng_impl for the dropout masks (default: JAX's, "
                      "threefry2x32). Threefry's bits are arithmetic on GPUs; MaxText trains "
                      "with unsafe_rbg")
  parser.add_argument("--out", help="directory for results.jsonl (e.g. $OUT)")
  args = parser.parse_args()
  # bart-large at batch 64 needs more than JAX's default 75% of the GPU's memory.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if args.prng:
    jax.config.update("jax_default_prng_impl", args.prng)
  s = QUICK if args.quick else FULL
  if args.batches:
    s = dict(s, batches=tuple(int(b) for b in args.batches.split(",")))
  card = _card(jax)
  parts = args.parts.split(",")
  out = open(os.path.join(args.out, "results.jsonl"), "w") if args.out else None

  def emit(row):
    line = json.dumps(row)
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()
  emit({"part": "card", **card, "jax": jax.__version__, "quick": args.quick,
        "prng": jax.config.jax_default_prng_impl})
  start = time.perf_counter()
  copy_tb_s = None
  if "ceilings" in parts:
    row = ceilings(jax, jnp, s)
    copy_tb_s = row["copy_tb_s"]
    emit(row)
  if "train" in parts:
    for row in train(jax, jnp, s, card, args.steps):
      emit(row)
  if "search" in parts:
    for row in search(jax, jnp, s, card, copy_tb_s or card["nominal_tb_s"] or float("nan"),
                      hlo_dir=args.out):
      emit(row)
  _log(f"done in {time.perf_counter() - start:.0f} s")
  if out:
    out.close()


if __name__ == "__main__":
  main()
