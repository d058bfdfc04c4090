"""Ask questions over the knowledge source: `python -m rag_jax.ask --config CONFIG`.

Today this is the retrieval half of RAG (question -> top-k passages); generation joins it
when the generator lands. The passages always come from a saved index, searched through
`Retriever`: `--config.index=DIR` (built by `python -m rag_jax.index build`), or else one
built from the config's corpus on first use (with a progress bar) and cached under
`$RAG_JAX_CACHE/indexes/`. That one is the index `python -m rag_jax.index build --articles
CORPUS --backend exact --dtype float32` makes: the same passages and ids, the same vectors,
the same exact search, so both routes answer a question with the same passages.

Bad questions are refused in one line: none, an empty or a blank one (exit 2), k above the
number of passages (exit 1). A question longer than the encoder's max_length is truncated to
it, with a note on stderr. `--dev FILE` scores retrieval on questions whose answer article is
known. The work is in `retrieve()`, importable and tested; `main` only parses flags.
"""

import contextlib
import fcntl
import hashlib
import json
import pathlib
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import flags
from ml_collections import config_flags

from rag_jax import assets
from rag_jax import cli
from rag_jax import retriever as retriever_lib
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus
from rag_jax.index import files
from rag_jax.index import saved

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (experiments/*.py).")
_QUESTION = flags.DEFINE_multi_string("question", None, "A question (repeatable); overrides "
                                      "the config's questions.")
_DEV = flags.DEFINE_string("dev", None, "Score retrieval instead of printing passages: a JSONL "
                           "file of {\"question\", \"title\"[, \"answer\"]} (e.g. "
                           "tests/data/wiki_dev.jsonl); prints how often the answer article "
                           "(and the answer string) is in the top 1 and the top k.")

Log = Callable[[str], Any]


def corpus_source(config) -> pathlib.Path:
  """The file of the config's corpus (`corpus.resolve_source`: a path or `asset:NAME`), or,
  with `max_articles`, of a sample of its articles (`sample_articles`)."""
  source = corpus.resolve_source(config.corpus)
  if config.max_articles < 0:
    raise ValueError(f"max_articles must be >= 0 (0: all), got {config.max_articles}")
  if not config.max_articles:
    return source
  if corpus.corpus_format(source) != "jsonl":
    raise ValueError(f"max_articles samples JSONL articles; {config.corpus} holds passages")
  return sample_articles(source, config.max_articles, config.get("include_titles", ()))


def sample_articles(source: pathlib.Path, count: int, include: Sequence[str] = ()
                    ) -> pathlib.Path:
  """A JSONL file of `count` articles of `source`: those titled `include`, and the rest spread
  evenly over the file (every (n / count)-th of the others), in file order.

  Written once to `$RAG_JAX_CACHE/corpora/`, named by the source's content, `count` and
  `include`; `source` itself if it holds no more than `count` articles.
  """
  lines = [line + b"\n" for line in source.read_bytes().splitlines() if line.strip()]
  if count >= len(lines):
    return source
  titles = []
  for number, line in enumerate(lines, 1):
    try:
      titles.append(json.loads(line)["title"])
    except (ValueError, KeyError, TypeError):
      raise corpus.CorpusError(f"{source}: article {number}: no JSON object with a title") \
          from None
  where = {title: i for i, title in reversed(list(enumerate(titles)))}
  missing = [t for t in include if t not in where]
  if missing:
    raise ValueError(f"include_titles: no article titled {missing[0]!r} in {source}")
  chosen = {where[t] for t in include}
  others = [i for i in range(len(lines)) if i not in chosen]
  spare = max(count - len(chosen), 0)
  chosen.update(others[j * len(others) // spare] for j in range(spare))
  key = hashlib.sha256(json.dumps([assets.sha256_file(source), count, sorted(include)])
                       .encode()).hexdigest()[:12]
  path = assets.cache_dir() / "corpora" / f"{source.stem}.sample-{count}-{key}.jsonl"
  if not path.is_file():
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(path) as f:
      f.writelines(lines[i] for i in sorted(chosen))
  return path


def cached_index(source: pathlib.Path, encoder: TextEncoder, encoder_dir: pathlib.Path, *,
                 encoder_source: str, log: Log = print, progress: bool = False
                 ) -> saved.Index:
  """The exact float32 index of `source` under `encoder`, built on first use (`saved.
  build_index`, resumable) into `$RAG_JAX_CACHE/indexes/`, then loaded from there.

  The directory is named by what its contents depend on: the corpus file's content, its
  format and article split (`corpus.SPLIT_VERSION`), the encoder's identity and max_length.
  A lock file keeps two processes from building the same one at once.
  """
  fmt = corpus.corpus_format(source)
  key = {"corpus_sha256": assets.sha256_file(source), "format": fmt,
         "split": corpus.SPLIT_VERSION, "encoder": saved.encoder_identity(encoder_dir),
         "max_length": encoder.max_length}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  out = assets.cache_dir() / "indexes" / f"{source.stem}-{digest}"
  out.parent.mkdir(parents=True, exist_ok=True)
  with _locked(out.with_name(f".{out.name}.lock")):
    if not (out / saved.MANIFEST).is_file():
      log(f"building the index of {source} in {out} (once; later runs load it)")
      saved.build_index(source, encoder, encoder_dir, out, backend="exact", dtype="float32",
                        corpus_format=fmt, progress=progress, encoder_source=encoder_source,
                        log=log)
  return saved.load_index(out, encoder=encoder, encoder_dir=encoder_dir)


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  with open(path, "a", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _count(source: pathlib.Path) -> int:
  """The passages an index of `source` would hold (read, not embedded: fast)."""
  return sum(1 for _ in corpus.read_passages(source))


def retrieve(config, log: Log = print, progress: bool = False) -> List[Dict[str, Any]]:
  """Per question, its top-k hits {"id", "row", "score", "title", "text"}: from the saved
  index `config.index` if one is set, else from the cached index of the config's corpus
  (`corpus_source`, `cached_index`; built on first use, with a tqdm bar on stderr if
  `progress`). Passage ids are the index's (`line-chunk` for articles).

  With `config.index`, the questions are encoded by the index's own encoder (its manifest
  names it, and its identity is checked), unless `config.query_encoder` names another, such
  as a DPR question encoder paired with the index's document encoder (only its dimension can
  be checked then). `config.encoder`, `corpus`, `max_articles` and `include_titles` are for
  the corpus.

  Raises:
    retriever.QuestionError: no questions, or an empty or blank one.
    ValueError: k < 1 or above the number of passages, and other bad settings; all before
      any weights load or anything is embedded.
  """
  questions = retriever_lib.check_questions(config.questions)
  if config.k < 1:
    raise ValueError(f"k must be positive, got {config.k}")
  if config.max_length < 2:  # TextEncoder checks it too, but only once its weights are loaded
    raise ValueError(f"max_length must be at least 2, got {config.max_length}")
  if config.get("index"):
    index, encoder = _open_index(config, log)
  else:
    index, encoder = _corpus_index(config, log, progress)
  found = retriever_lib.Retriever(encoder, index).retrieve(questions, config.k, log=log)
  return [{"question": r["question"], "hits": r["hits"]} for r in found]


def _open_index(config, log: Log):
  """A saved index (`config.index`) and the encoder of its questions."""
  retriever_lib.check_k(config.k, saved.read_manifest(config.index)["count"])
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
  return index, encoder


def _corpus_index(config, log: Log, progress: bool):
  """The cached index of the config's corpus and its encoder (`config.encoder`)."""
  source = corpus_source(config)
  retriever_lib.check_k(config.k, _count(source))
  directory = weights.resolve(config.encoder)
  encoder = TextEncoder.from_pretrained(directory, max_length=config.max_length,
                                        batch_size=config.batch_size).data_parallel()
  index = cached_index(source, encoder, directory, encoder_source=config.encoder, log=log,
                       progress=progress)
  log(f"{len(index.passages)} passages of {config.corpus}"
      f"{f' ({config.max_articles} articles)' if config.max_articles else ''}, {index.dim}-d, "
      f"from {index.directory}")
  return index, encoder


def read_dev(path) -> List[Dict[str, str]]:
  """A dev set: JSONL of {"question", "title": the answer article[, "answer": a string the
  article's text holds]}; a malformed line is a ValueError naming it."""
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
        if not isinstance(item["question"], str) or not isinstance(item["title"], str):
          raise TypeError
      except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: line {number}: expected {{\"question\": str, \"title\": "
                         f"str[, \"answer\": str]}}") from None
      items.append(item)
  if not items:
    raise ValueError(f"{path}: no questions")
  return items


def dev_scores(results: Sequence[Dict[str, Any]], dev: Sequence[Dict[str, str]]
               ) -> Dict[str, float]:
  """How often retrieval found the answer: "article@1" / "article@k" (the fraction of
  questions whose answer article is the top hit / among the k hits) and, over the questions
  with an "answer", "answer@1" / "answer@k" (a hit's text holds the answer, any case)."""
  def rate(found: List[bool]) -> float:
    return sum(found) / len(found) if found else float("nan")
  def norm(text: str) -> str:  # passages are split on whitespace and joined by one space
    return " ".join(text.lower().split())
  article = [[h["title"] == d["title"] for h in r["hits"]] for r, d in zip(results, dev)]
  answer = [[norm(d["answer"]) in norm(h["text"]) for h in r["hits"]]
            for r, d in zip(results, dev) if d.get("answer")]
  return {"article@1": rate([a[0] for a in article]), "article@k": rate([any(a) for a in article]),
          "answer@1": rate([a[0] for a in answer]), "answer@k": rate([any(a) for a in answer])}


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", status=2)
  config = cli.config(_CONFIG, "experiments/wiki_retrieval.py")
  if _QUESTION.value and _DEV.value:
    cli.fail("--question and --dev do not go together", status=2)
  try:
    dev = read_dev(_DEV.value) if _DEV.value else None
  except (ValueError, OSError) as e:
    cli.fail(weights.one_line(e), status=2)
  if _QUESTION.value or dev:
    config.questions = _QUESTION.value or [d["question"] for d in dev]
  stderr = lambda message: print(message, file=sys.stderr)
  try:
    results = retrieve(config, log=stderr, progress=True)
  except retriever_lib.QuestionError as e:
    cli.fail(str(e), status=2)
  # WeightsError and IndexError_ are ValueErrors; ImportError: a backend's library is missing.
  except (ValueError, OSError, ImportError, assets.AssetError) as e:
    cli.fail(weights.one_line(e))
  except KeyboardInterrupt:
    cli.fail("interrupted (an index build resumes where it stopped when run again)", 130)
  if dev:
    scores = dev_scores(results, dev)
    print(f"{_DEV.value}: {len(dev)} questions, k={config.k}: answer article top-1 "
          f"{scores['article@1']:.3f}, top-{config.k} {scores['article@k']:.3f}; answer string "
          f"in top-1 passage {scores['answer@1']:.3f}, top-{config.k} {scores['answer@k']:.3f}")
    return
  for r in results:
    print(f"\nQ: {cli.shorten(r['question'], 200)}")
    for rank, hit in enumerate(r["hits"], 1):
      text = cli.shorten(hit["text"], 100)
      print(f"  {rank}. [{hit['score']:.3f}] {hit['title']}: {text}")


if __name__ == "__main__":
  cli.run(main)
