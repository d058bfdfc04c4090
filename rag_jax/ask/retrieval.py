"""The passages of `python -m rag_jax.ask`: the retriever over the config's knowledge source.

The passages always come from a saved index, searched through `index.retriever.Retriever`:
`config.index` (built by `python -m rag_jax.index build`), or else one built from the
config's corpus on first use (with a progress bar) and cached under
`$RAG_JAX_CACHE/indexes/`. That one is the index `python -m rag_jax.index build --articles
CORPUS --backend exact --dtype float32` makes: the same passages and ids, the same vectors,
the same exact search, so both routes answer a question with the same passages.
"""

import hashlib
import json
import pathlib
import time
from typing import Any, Callable, Dict, List, Sequence

from rag_jax import assets
from rag_jax import errors
from rag_jax import files
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus
from rag_jax.index import retriever as retriever_lib
from rag_jax.index import saved

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


def _count(source: pathlib.Path) -> int:
  """The passages an index of `source` would hold (read, not embedded: fast)."""
  return sum(1 for _ in corpus.read_passages(source))


def retrieve(config, log: Log = print, progress: bool = False) -> List[Dict[str, Any]]:
  """Per question, its top-k hits {"id", "row", "score", "title", "text"} from
  `open_retriever(config)`.

  Raises:
    retriever.QuestionError: no questions, or an empty or blank one.
    ValueError: k < 1 or above the number of passages, and other bad settings; all before
      any weights load or anything is embedded.
  """
  questions = retriever_lib.check_questions(config.questions)
  found = open_retriever(config, log, progress).retrieve(questions, config.k, log=log)
  return [{"question": r["question"], "hits": r["hits"]} for r in found]


def open_retriever(config, log: Log = print, progress: bool = False
                   ) -> retriever_lib.Retriever:
  """The saved index `config.index` if one is set, else the cached index of the config's
  corpus (`corpus_source`, `saved.cached_index`; built on first use, with a tqdm bar on stderr if
  `progress`), behind its question encoder. Passage ids are the index's (`line-chunk` for
  articles).

  With `config.index`, the questions are encoded by the index's own encoder (its manifest
  names it, and its identity is checked), unless `config.query_encoder` names another, such
  as a DPR question encoder paired with the index's document encoder (only its dimension can
  be checked then). `config.encoder`, `corpus`, `max_articles` and `include_titles` are for
  the corpus.

  Raises:
    ValueError: k < 1 or above the number of passages, and other bad settings; all before
      any weights load or anything is embedded.
  """
  if config.k < 1:
    raise errors.UsageError(f"k must be positive, got {config.k}")
  if config.max_length < 2:  # TextEncoder checks it too, but only once its weights are loaded
    raise errors.UsageError(f"max_length must be at least 2, got {config.max_length}")
  if config.get("index"):
    index, encoder = _open_index(config, log)
  else:
    index, encoder = _corpus_index(config, log, progress)
  return retriever_lib.Retriever(encoder, index)


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
  index = saved.cached_index(source, encoder, directory, encoder_source=config.encoder, log=log,
                             progress=progress)
  log(f"{len(index.passages)} passages of {config.corpus}"
      f"{f' ({config.max_articles} articles)' if config.max_articles else ''}, {index.dim}-d, "
      f"from {index.directory}")
  return index, encoder
