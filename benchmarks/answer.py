"""Answering with SmolLM2-135M-Instruct: rag_jax's greedy decoding (jit) vs transformers'
`generate`, same GGUF weights (dequantised to float32), same prompts, same run; and RAG-Token
over k=5 retrieved passages, in questions/s.

The prompts are `python -m rag_jax.ask`'s: the first 16 questions of tests/data/wiki_dev.jsonl,
closed book (each question alone in the chat template, as `--closed-book` builds it) for the
comparison, and with their top 5 passages of the embedded Wikipedia (the cached MiniLM index;
built on first use) for RAG-Token. Every contestant decodes exactly 32 new tokens (EOS banned
until then), so no one stops early. Each contestant runs in its own process and times one
untimed warm-up call (for rag_jax: tracing and XLA compilation, `first_call_s`) and then the
median of --repeats calls.

  hf_greedy         transformers LlamaForCausalLM.generate, greedy, the 16 prompts left-padded
                    in one batch;
  rag_jax_greedy    RagModel.generate over the same prompts (right-padded), one document each with
                    score 0 (RAG-Token over one document is the generator's own greedy search);
  rag_jax_rag_token RagModel.generate(kind="token"), 16 questions x 5 passages, greedy.

    python benchmarks/answer.py                  # ~5 min on 2 cores
    python benchmarks/answer.py --repeats 1 --questions 4
"""

import argparse
import json
import pathlib
import time

import numpy as np

import common

NEW_TOKENS, K = 32, 5
DEV = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "wiki_dev.jsonl"
CONTESTANTS = ("hf_greedy", "rag_jax_greedy", "rag_jax_rag_token")


def _answerer(questions: int):
  """The default config's Answerer, the benchmark's questions and (for RAG-Token) their hits."""
  from rag_jax.ask import answering  # pylint: disable=import-outside-toplevel
  from rag_jax.ask import questions as ask_questions  # pylint: disable=import-outside-toplevel
  from rag_jax.ask import retrieval as ask_retrieval  # pylint: disable=import-outside-toplevel
  from rag_jax.configs import wiki  # pylint: disable=import-outside-toplevel
  config = wiki.get_config()
  config.questions = [d["question"] for d in ask_questions.read_dev(DEV)[:questions]]
  config.k = K
  retriever = ask_retrieval.open_retriever(config, log=lambda _: None)
  hits = [r["hits"] for r in retriever.retrieve(config.questions, K)]
  answerer = answering.Answerer.from_config(config, retriever.encoder, log=lambda _: None)
  return answerer, config.questions, hits


def _measure(name: str, questions: int, repeats: int) -> dict:
  answerer, qs, hits = _answerer(questions)
  model = answerer.model
  ids, mask = model.contextualize(qs, None if name != "rag_jax_rag_token" else hits)
  if name == "hf_greedy":
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    from rag_jax import assets  # pylint: disable=import-outside-toplevel
    from rag_jax.weights import gguf_file  # pylint: disable=import-outside-toplevel
    path = gguf_file.find_gguf(pathlib.Path(assets.fetch("smollm2-135m-instruct")))
    hf = transformers.LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    # Our prompts end where the answer's first token, a newline, is fed: HF gets it as the
    # last prompt token instead. Ours are right-padded; HF's generate takes them left-padded,
    # so each row is rolled to the right.
    shift = ids.shape[1] - mask.sum(axis=1)
    ids = np.stack([np.roll(row, s) for row, s in zip(ids, shift)])
    mask = np.stack([np.roll(row, s) for row, s in zip(mask, shift)])
    start = np.full((ids.shape[0], 1), model.rag.gen.start_token_id, ids.dtype)
    inputs = dict(input_ids=torch.tensor(np.concatenate([ids, start], 1), dtype=torch.long),
                  attention_mask=torch.tensor(np.concatenate([mask, np.ones_like(start)], 1),
                                              dtype=torch.long))
    def run():
      with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          do_sample=False, pad_token_id=model.rag.gen.pad_token_id)
      return out[:, -NEW_TOKENS:].numpy()
  else:
    z = 1 if name == "rag_jax_greedy" else K
    scores = (np.zeros((len(qs), 1), np.float32) if z == 1 else
              np.array([[h["score"] for h in row] for row in hits], np.float32)
              / answerer.doc_temperature)
    def run():
      out = model.generate(ids, mask, scores, kind="token", decoding="greedy",
                           max_length=NEW_TOKENS + 1, min_length=NEW_TOKENS + 1)
      return np.asarray(out)[:, 1:]
  start_time = time.perf_counter()
  tokens = run()
  first = time.perf_counter() - start_time
  seconds = common.median_seconds(run, repeats, warmup=0)
  return {"name": name, "questions": len(qs), "first_call_s": round(first, 2),
          "seconds": round(seconds, 3), "questions_per_s": round(len(qs) / seconds, 2),
          "tokens_per_s": round(len(qs) * NEW_TOKENS / seconds, 1),
          "peak_rss_gb": round(common.peak_rss_gb(), 2), "tokens": np.asarray(tokens).tolist()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3, help="timed calls (after a warm-up)")
  parser.add_argument("--questions", type=int, default=16, help="prompts per batch")
  parser.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_measure(args.child, args.questions, args.repeats)))
    return
  results = {}
  for name in CONTESTANTS:
    r = common.run_child(__file__, ["--child", name, "--repeats", str(args.repeats),
                                    "--questions", str(args.questions)])
    results[name] = r
    print(json.dumps({k: v for k, v in r.items() if k != "tokens"}), flush=True)
  hf, ours, rag = (results[n] for n in CONTESTANTS)
  same = sum(a == b for a, b in zip(hf["tokens"], ours["tokens"]))
  print(json.dumps({
      "greedy_speedup_vs_hf": round(hf["seconds"] / ours["seconds"], 2),
      "same_tokens_rows": f"{same}/{len(hf['tokens'])}",
      "rag_token_k5_questions_per_s": rag["questions_per_s"],
      "rag_token_k5_cost_vs_closed_book": round(rag["seconds"] / ours["seconds"], 2)}))


if __name__ == "__main__":
  main()
