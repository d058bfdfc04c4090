"""Ask questions over the knowledge source: `python -m rag_jax.ask --config CONFIG`.

Today this is the retrieval half of RAG (question -> top-k passages); generation joins it
when the generator lands. The passages are the config's corpus, embedded at every run, or
a saved index (`--config.index=DIR`, built by `python -m rag_jax.index build`), searched by
its own backend. The work is in `retrieve()`, importable and tested; `main` only parses
flags.
"""

import functools
import time
from typing import Any, Dict, List

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from rag_jax import assets
from rag_jax import cli
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.index import saved
from rag_jax.retriever import Retriever

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (experiments/*.py).")
_QUESTION = flags.DEFINE_multi_string("question", None, "A question (repeatable); overrides "
                                      "the config's questions.")


def load_corpus(spec: str, limit: int = 0) -> List[Dict[str, str]]:
  """The passages [{"title", "text"}] of a corpus spec (today: the wiki summaries asset)."""
  if spec != "asset:wiki-summaries-en":
    raise ValueError(f"unsupported corpus {spec!r} (supported: asset:wiki-summaries-en)")
  if limit < 0:
    raise ValueError(f"max_passages must be >= 0 (0: all), got {limit}")
  articles = assets.wiki_summaries(assets.resolve_spec(spec))
  return articles[:limit] if limit else articles


@functools.partial(jax.jit, static_argnames="k")
def exact_search(queries: jax.Array, passages: jax.Array, k: int):
  """Exact maximum inner product search: queries [B, D], passages [N, D] -> top-k scores and
  ids, each [B, k]."""
  scores = jnp.matmul(queries, passages.T, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(scores, k)


def retrieve(config, log=print) -> List[Dict[str, Any]]:
  """Per question, its top-k hits {"id", "score", "title", "text"}: from the saved index
  `config.index` if one is set (ids are its passage ids), else from the config's corpus,
  embedded here (ids are row numbers).

  With an index, the questions are encoded by the index's own encoder (its manifest names
  it, and its identity is checked), unless `config.query_encoder` names another, such as a
  DPR question encoder paired with the index's document encoder (only its dimension can be
  checked then). `config.encoder`, `corpus` and `max_passages` are for the embedded corpus.
  """
  if config.k < 1:
    raise ValueError(f"k must be positive, got {config.k}")
  if not config.questions:
    raise ValueError("no questions (the config's `questions`, or --question)")
  if config.max_length < 2:  # TextEncoder checks it too, but only once its weights are loaded
    raise ValueError(f"max_length must be at least 2, got {config.max_length}")
  questions = list(config.questions)
  if config.get("index"):
    return _retrieve_from_index(config, questions, log)
  corpus = load_corpus(config.corpus, config.max_passages)
  if not corpus:
    raise ValueError("the corpus is empty")
  encoder = TextEncoder.from_pretrained(config.encoder,
                                        max_length=config.max_length,
                                        batch_size=config.batch_size).data_parallel()
  k = min(config.k, len(corpus))
  start = time.perf_counter()
  vectors = encoder.encode([f"{p['title']}. {p['text']}" for p in corpus])
  seconds = time.perf_counter() - start
  log(f"embedded {len(corpus)} passages in {seconds:.1f} s ({len(corpus) / seconds:.1f} "
      f"passages/s, {encoder.dim}-d, {jax.default_backend()})")
  scores, ids = exact_search(jnp.asarray(encoder.encode(questions)), jnp.asarray(vectors), k=k)
  results = []
  for q, row_scores, row_ids in zip(questions, np.asarray(scores), np.asarray(ids)):
    hits = [{"id": int(i), "score": float(s), "title": corpus[i]["title"],
             "text": corpus[i]["text"]} for s, i in zip(row_scores, row_ids)]
    results.append({"question": q, "hits": hits})
  return results


def _retrieve_from_index(config, questions: List[str], log) -> List[Dict[str, Any]]:
  start = time.perf_counter()
  index = saved.load_index(config.index)  # validated: manifest, files, checksums
  log(f"loaded {config.index}: {len(index.passages)} passages, {index.dim}-d "
      f"{index.manifest['dtype']}, backend {index.manifest['backend']['name']} "
      f"({time.perf_counter() - start:.1f} s)")
  spec = config.get("query_encoder") or index.manifest["encoder"].get("source")
  if not spec:
    raise ValueError(f"{config.index}: the manifest names no encoder; set "
                     f"--config.query_encoder")
  directory = weights.resolve(spec)
  encoder = TextEncoder.from_pretrained(directory, max_length=config.max_length,
                                        batch_size=config.batch_size).data_parallel()
  if not config.get("query_encoder"):
    saved.check_encoder(index.manifest, encoder, directory)
  log(f"questions encoded by {spec}")
  found = Retriever(encoder, index).retrieve(questions, min(config.k, len(index.passages)))
  return [{"question": r["question"], "hits": r["hits"]} for r in found]


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", status=2)
  config = cli.config(_CONFIG, "experiments/wiki_retrieval.py")
  if _QUESTION.value:
    config.questions = _QUESTION.value
  try:
    results = retrieve(config)
  # WeightsError and IndexError_ are ValueErrors; ImportError: a backend's library is missing.
  except (ValueError, OSError, ImportError, assets.AssetError) as e:
    cli.fail(weights.one_line(e))
  for r in results:
    print(f"\nQ: {r['question']}")
    for rank, hit in enumerate(r["hits"], 1):
      text = hit["text"] if len(hit["text"]) < 100 else hit["text"][:97] + "..."
      print(f"  {rank}. [{hit['score']:.3f}] {hit['title']}: {text}")


if __name__ == "__main__":
  cli.run(main)
