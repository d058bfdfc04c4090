"""Index build embedding: passages batched in store order against batched by length.

    python benchmarks/embed_order.py [--passages 2048] [--rounds 3] [--encoder SPEC]
                                     [--articles FILE.jsonl]

`embed.embed_store` sorts each shard's passages by token length before batching them, so
that each batch pads to its own length bucket (16, 32, ..., max_length). In store order
nearly every batch of 64 holds one long passage and pads all its rows to it: of the wiki
articles' 100-word passages, 83% fit 128 MiniLM tokens, yet nearly every batch of 64 in
store order holds a longer one. This times both on the same passages and encoder (one XLA
CPU device per core, as `python -m rag_jax.index build` runs), after a pass of each that
compiles every bucket, in `--rounds` rounds that alternate which goes first, and checks
that they give the same vectors. The sorted path's time includes writing its shard (fsync)
and reading it back, as a build does.

Default data: the first `--passages` 100-word passages of the embedded Wikipedia articles
(`assets.wiki_summaries()`), MiniLM (`asset:all-MiniLM-L6-v2`), batches of 64.
"""
# pylint: disable=protected-access

import argparse
import itertools
import json
import pathlib
import tempfile
import time

import numpy as np

from rag_jax import assets
from rag_jax import cli
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus
from rag_jax.index import embed


def store_order(store: corpus.PassageStore, encoder: TextEncoder) -> np.ndarray:
  """The reference: batches of consecutive passages, as embed_store ran before sorting."""
  out = np.empty((len(store), encoder.dim), np.float32)
  for b in range(0, len(store), encoder.batch_size):
    rows = store.get_many(range(b, min(len(store), b + encoder.batch_size)))
    tokens = embed._tokenize_pairs(encoder, rows)
    out[b:b + len(tokens)] = encoder.encode_tokens(*encoder.pad(tokens))
  return out


def by_length(store: corpus.PassageStore, encoder: TextEncoder, directory) -> np.ndarray:
  """`embed.embed_store`, one shard, read back."""
  embed.embed_store(store, encoder, directory, shard_size=len(store), dtype="float32",
                    progress=False)
  return embed.load_embeddings(directory, len(store), encoder.dim, "float32", len(store))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--passages", type=int, default=2048)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--encoder", default="asset:all-MiniLM-L6-v2")
  parser.add_argument("--articles", help="JSONL articles (default: the embedded Wikipedia)")
  args = parser.parse_args()
  if args.passages < 1 or args.rounds < 1 or args.batch_size < 1:
    parser.error("--passages, --rounds and --batch-size must be positive")
  cli.use_cpu_cores()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    articles = args.articles
    if articles is None:
      articles = tmp / "wiki.jsonl"
      articles.write_text("".join(json.dumps({"title": a["title"], "text": a["text"]}) + "\n"
                                  for a in assets.wiki_summaries()))
    count = corpus.write_passages(itertools.islice(corpus.read_jsonl(articles), args.passages),
                                  tmp / "passages")
    store = corpus.PassageStore(tmp / "passages")
    encoder = TextEncoder.from_pretrained(args.encoder, batch_size=args.batch_size)
    encoder = encoder.data_parallel()
    store_order(store, encoder)
    by_length(store, encoder, tmp / "warm")
    times = {"store_order": [], "by_length": []}
    diffs = []
    for r in range(args.rounds):
      runs = {"store_order": lambda: store_order(store, encoder),
              "by_length": lambda r=r: by_length(store, encoder, tmp / f"round{r}")}
      vectors = {}
      for name in sorted(runs, reverse=r % 2 == 1):
        start = time.perf_counter()
        vectors[name] = runs[name]()
        times[name].append(time.perf_counter() - start)
      diffs.append(float(np.abs(vectors["store_order"] - vectors["by_length"]).max()))
    store.close()
  old, new = (float(np.median(times[name])) for name in ("store_order", "by_length"))
  print(json.dumps({"passages": count, "batch": args.batch_size,
                    "store_order_passages_per_s": round(count / old, 1),
                    "by_length_passages_per_s": round(count / new, 1),
                    "speedup": round(old / new, 2), "max_abs_diff": max(diffs)}))


if __name__ == "__main__":
  main()
