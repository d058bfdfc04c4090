"""RAG generation: rag_jax (jit) vs HF PyTorch `generate`, same weights, same inputs, same run.

Beam search (4 beams, one returned sequence) over precomputed contexts, as HF's RAG
`generate(context_input_ids=..., context_attention_mask=..., doc_scores=...)`: 4 questions x
5 documents, contexts of up to 128 tokens (right-padded, lengths 96..128), random doc scores,
20 new tokens after the decoder start token (max_length 21; min_length 21 bans EOS until the
forced EOS at the end, so that random weights cannot stop early and every contestant does all
20 steps). bart-base / dpr-base shapes (d 768, 6+6 BART layers, vocab 50,265), random
weights, saved once by the first HF child and loaded from that directory by every other one.

Five contestants, each in its own process:

  hf_token          HF RagTokenForGeneration.generate (beam);
  hf_thorough       HF RagSequenceForGeneration.generate (thorough decoding: beam search per
                    document, then a forced-decoding pass scoring every candidate);
  rag_jax_token     RagModel.generate(kind="token", decoding="beam");
  rag_jax_thorough  RagModel.generate(kind="sequence", decoding="thorough");
  rag_jax_fast      RagModel.generate(kind="sequence", decoding="fast") (no scoring pass; HF
                    has no counterpart, so it is compared with HF's thorough).

Each times one untimed warm-up call (for rag_jax: tracing and XLA compilation, reported as
`first_call_s`), then reports the median seconds per batch of 4 questions over --repeats calls
and questions/s. The summary gives the speedups HF / rag_jax and whether rag_jax's sequences
equal HF's (token vs token, thorough vs thorough).

    python benchmarks/generate.py                 # bart-base shapes, 3 repeats (~13 min)
    python benchmarks/generate.py --repeats 1
    python benchmarks/generate.py --quick         # tiny shapes: a smoke test, seconds
"""

import argparse
import json
import tempfile
import time

import numpy as np

import common

PAD = 1  # BartConfig's default pad_token_id
QUESTIONS, DOCS, BEAMS = 4, 5, 4
CONTESTANTS = {  # name: (library, kind, decoding)
    "hf_token": ("hf", "token", "beam"),
    "hf_thorough": ("hf", "sequence", "thorough"),
    "rag_jax_token": ("jax", "token", "beam"),
    "rag_jax_thorough": ("jax", "sequence", "thorough"),
    "rag_jax_fast": ("jax", "sequence", "fast"),
}


def _shapes(quick: bool) -> dict:
  if quick:
    return dict(dpr=common.DPR_TINY, bart=common.BART_TINY, context=16, new_tokens=7)
  return dict(dpr=common.DPR_BASE, bart=common.BART_BASE, context=128, new_tokens=20)


def _inputs(shapes: dict):
  """Contexts [QUESTIONS * DOCS, context] right-padded to lengths in 3/4..1 of the context
  (one row full), their mask, and doc scores [QUESTIONS, DOCS]; the same in every child."""
  rng = np.random.default_rng(0)
  n, length = QUESTIONS * DOCS, shapes["context"]
  lengths = rng.integers(length * 3 // 4, length + 1, size=n)
  lengths[0] = length
  ids = rng.integers(3, min(50000, shapes["bart"]["vocab_size"]), size=(n, length))
  mask = (np.arange(length) < lengths[:, None]).astype(np.int32)
  ids = np.where(mask == 1, ids, PAD).astype(np.int32)
  doc_scores = (rng.standard_normal((QUESTIONS, DOCS)) * 2).astype(np.float32)
  return ids, mask, doc_scores


def _hf_generate_fn(kind: str, shapes: dict, path: str, build: bool):
  """HF model (built with seed 0 and saved to `path` if `build`, else loaded from it) and
  a function running its generate on the benchmark's inputs."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  cls = (transformers.RagTokenForGeneration if kind == "token"
         else transformers.RagSequenceForGeneration)
  if build:
    torch.manual_seed(0)
    config = transformers.RagConfig.from_question_encoder_generator_configs(
        transformers.DPRConfig(**shapes["dpr"]), transformers.BartConfig(**shapes["bart"]),
        n_docs=DOCS)
    model = cls(config)
    model.save_pretrained(path)
  else:
    # Both classes keep their weights under rag.*: one checkpoint serves both.
    model = cls.from_pretrained(path)
  model.eval()
  ids, mask, doc_scores = _inputs(shapes)
  ids, mask, doc_scores = (torch.tensor(ids, dtype=torch.long), torch.tensor(mask),
                           torch.tensor(doc_scores))
  max_length = 1 + shapes["new_tokens"]

  def run():
    with torch.inference_mode():
      return model.generate(context_input_ids=ids, context_attention_mask=mask,
                            doc_scores=doc_scores, n_docs=DOCS, num_beams=BEAMS,
                            num_return_sequences=1, max_length=max_length,
                            min_length=max_length).numpy()
  return run, {"threads": torch.get_num_threads(), "version": torch.__version__}


def _jax_generate_fn(kind: str, decoding: str, shapes: dict, path: str):
  import jax  # pylint: disable=import-outside-toplevel
  from rag_jax.model import RagModel  # pylint: disable=import-outside-toplevel
  model = RagModel.from_pretrained(path)
  ids, mask, doc_scores = _inputs(shapes)
  max_length = 1 + shapes["new_tokens"]

  def run():
    return model.generate(ids, mask, doc_scores, kind=kind, decoding=decoding,
                          num_beams=BEAMS, num_return_sequences=1, max_length=max_length,
                          min_length=max_length)
  return run, {"backend": jax.default_backend(), "version": jax.__version__}


def _measure(name: str, shapes: dict, path: str, repeats: int, build: bool) -> dict:
  """Runs in a child process: the first call's time, the median of `repeats` more, and the
  sequences (the first call's: decoding is deterministic)."""
  library, kind, decoding = CONTESTANTS[name]
  if library == "hf":
    run, info = _hf_generate_fn(kind, shapes, path, build)
  else:
    run, info = _jax_generate_fn(kind, decoding, shapes, path)
  start = time.perf_counter()
  sequences = np.asarray(run())
  first = time.perf_counter() - start
  seconds = common.median_seconds(run, repeats, warmup=0)
  return {"contestant": name, "seconds": seconds, "first_call_s": first,
          "peak_rss_gb": common.peak_rss_gb(), "sequences": sequences.tolist(), **info}


def _same(a: dict, b: dict) -> bool:
  return np.array_equal(np.asarray(a["sequences"]), np.asarray(b["sequences"]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3, help="timed calls (after a warm-up)")
  parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
  parser.add_argument("--child", choices=tuple(CONTESTANTS), help=argparse.SUPPRESS)
  parser.add_argument("--path", help=argparse.SUPPRESS)
  parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  shapes = _shapes(args.quick)
  if args.child:
    print(json.dumps(_measure(args.child, shapes, args.path, args.repeats, args.build)))
    return

  results = {}
  with tempfile.TemporaryDirectory() as path:
    for i, name in enumerate(CONTESTANTS):
      child = ["--child", name, "--path", path, "--repeats", str(args.repeats)]
      child += ["--quick"] * args.quick + ["--build"] * (i == 0)  # hf_token writes the weights
      r = common.run_child(__file__, child)
      results[name] = r
      seqs = np.asarray(r["sequences"])
      print(json.dumps({
          "contestant": name, "s_per_batch": round(r["seconds"], 3),
          "questions_per_s": round(QUESTIONS / r["seconds"], 3),
          "first_call_s": round(r["first_call_s"], 2), "peak_rss_gb": round(r["peak_rss_gb"], 2),
          "output_shape": list(seqs.shape),
          "all_new_tokens": seqs.shape[1] == 1 + shapes["new_tokens"],
          **{k: r[k] for k in ("threads", "backend", "version") if k in r}}), flush=True)

  hf_tok, hf_seq = results["hf_token"]["seconds"], results["hf_thorough"]["seconds"]
  summary = {
      "speedup_token": round(hf_tok / results["rag_jax_token"]["seconds"], 2),
      "speedup_thorough": round(hf_seq / results["rag_jax_thorough"]["seconds"], 2),
      "speedup_fast_vs_hf_thorough": round(hf_seq / results["rag_jax_fast"]["seconds"], 2),
      "token_equals_hf": _same(results["rag_jax_token"], results["hf_token"]),
      "thorough_equals_hf": _same(results["rag_jax_thorough"], results["hf_thorough"]),
      "fast_equals_thorough": _same(results["rag_jax_fast"], results["rag_jax_thorough"]),
  }
  print(json.dumps(summary), flush=True)

  print(f"\n{QUESTIONS} questions x {DOCS} docs, contexts <= {shapes['context']} tokens, "
        f"beam {BEAMS}, {shapes['new_tokens']} new tokens, median of {args.repeats}"
        f"{' (--quick shapes)' if args.quick else ''}")
  print(f"{'contestant':<18}{'s/batch':>10}{'questions/s':>13}{'first call s':>14}")
  for name, r in results.items():
    print(f"{name:<18}{r['seconds']:>10.3f}{QUESTIONS / r['seconds']:>13.3f}"
          f"{r['first_call_s']:>14.2f}")
  print(f"RAG-Token speedup (HF / rag_jax): {summary['speedup_token']}x "
        f"(same sequences: {summary['token_equals_hf']})")
  print(f"RAG-Sequence thorough speedup:    {summary['speedup_thorough']}x "
        f"(same sequences: {summary['thorough_equals_hf']})")
  print(f"RAG-Sequence fast vs HF thorough: {summary['speedup_fast_vs_hf_thorough']}x "
        f"(same sequences as thorough: {summary['fast_equals_thorough']})")


if __name__ == "__main__":
  main()
