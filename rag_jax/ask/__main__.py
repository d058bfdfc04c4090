"""Ask questions over the knowledge source: `python -m rag_jax.ask [--config CONFIG]`.

RAG end to end: retrieve the top-k passages of each question, then generate an answer
marginalising over them (rag_jax.answering). With no `--config`, the embedded default
(rag_jax/configs/wiki.py): MiniLM over the embedded Wikipedia, SmolLM2-135M-Instruct
answering, RAG-Token, greedy. `--kind sequence` for RAG-Sequence, `--closed-book` for the
generator alone, `--json` for one object per question per line, `--heatmap FILE.png` for the
paper's Figure 2, `--config.generator=none` for the passages alone.

The passages always come from a saved index, searched through `Retriever`:
`--config.index=DIR` (built by `python -m rag_jax.index build`), or else one built from the
config's corpus on first use (with a progress bar) and cached under
`$RAG_JAX_CACHE/indexes/`. That one is the index `python -m rag_jax.index build --articles
CORPUS --backend exact --dtype float32` makes: the same passages and ids, the same vectors,
the same exact search, so both routes answer a question with the same passages.

Bad questions are refused in one line: none, an empty or a blank one (exit 2), k above the
number of passages (exit 1). A question longer than the encoder's max_length is truncated to
it, with a note on stderr; a prompt longer than `max_prompt_length` loses the end of its
passage (and a question that alone is longer, its start). `--dev FILE` scores retrieval and
answers on questions whose answer is known, and `--temperatures` adds the sweep that chose
the doc prior's temperature. The work is in `retrieve()` and `answering.Answerer`,
importable and tested; `main` only parses flags and prints.
"""

import hashlib
import json
import pathlib
import sys
import time
from typing import Any, Callable, Dict, List, Sequence

from absl import flags
from ml_collections import config_flags

from rag_jax.ask import answering
from rag_jax import assets
from rag_jax import cli
from rag_jax import errors
from rag_jax.index import retriever as retriever_lib
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus
from rag_jax import files
from rag_jax.index import saved

DEFAULT_CONFIG = pathlib.Path(__file__).parent / "configs" / "wiki.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: the embedded Wikipedia, "
    "rag_jax/configs/wiki.py); --config.FIELD=VALUE overrides a field.")
_QUESTION = flags.DEFINE_multi_string("question", None, "A question (repeatable); overrides "
                                      "the config's questions.")
_QUESTIONS_FILE = flags.DEFINE_string("questions-file", None, "A file of questions, one a "
                                      "line (blank lines skipped).")
_K = flags.DEFINE_integer("k", None, "Passages per question (default: the config's k).")
_KIND = flags.DEFINE_enum("kind", None, list(answering.KINDS), "RAG-Token or RAG-Sequence "
                          "(default: the config's kind).")
_CLOSED_BOOK = flags.DEFINE_bool("closed-book", False, "The generator alone, no passages.")
_JSON = flags.DEFINE_bool("json", False, "One JSON object per question per line: question, "
                          "answer, passages (id, title, score, prior, posterior, text).")
_HEATMAP = flags.DEFINE_string("heatmap", None, "Write the passages' posterior at each answer "
                               "token (the paper's Figure 2) to this PNG; with several "
                               "questions, FILE-1.png, FILE-2.png, ...")
_DEV = flags.DEFINE_string("dev", None, "Score instead of printing: a JSONL file of "
                           "{\"question\", \"title\"[, \"answer\"]} (e.g. "
                           "tests/data/wiki_dev.jsonl); prints how often the answer article "
                           "(and the answer string) is in the top 1 and the top k, and how "
                           "often the generated answer holds the gold one.")
_TEMPERATURES = flags.DEFINE_list("temperatures", None, "With --dev: the gold answers' "
                                  "likelihood under each of these doc-prior temperatures.")

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
    raise ValueError(f"k must be positive, got {config.k}")
  if config.max_length < 2:  # TextEncoder checks it too, but only once its weights are loaded
    raise ValueError(f"max_length must be at least 2, got {config.max_length}")
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


def read_questions(path) -> List[str]:
  """The questions of a file, one a line; blank lines are skipped."""
  with open(path, encoding="utf-8") as f:
    questions = [line.strip() for line in f if line.strip()]
  if not questions:
    raise ValueError(f"{path}: no questions")
  return questions


def contains_answer(generated: str, gold: str) -> bool:
  """The generated answer holds the gold one (case and spacing aside)."""
  return " ".join(gold.lower().split()) in " ".join(generated.lower().split())


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", status=2)
  config = cli.config(_CONFIG, str(DEFAULT_CONFIG))
  if sum(map(bool, (_QUESTION.value, _QUESTIONS_FILE.value, _DEV.value))) > 1:
    cli.fail("--question, --questions-file and --dev do not go together", status=2)
  if _TEMPERATURES.value and not _DEV.value:
    cli.fail("--temperatures needs --dev", status=2)
  generate = str(config.get("generator", "none")).lower() != "none"
  if not generate and (_CLOSED_BOOK.value or _HEATMAP.value or _TEMPERATURES.value):
    cli.fail("--closed-book, --heatmap and --temperatures need a generator "
             "(--config.generator is none)", status=2)
  try:
    temperatures = [float(t) for t in _TEMPERATURES.value or ()]
    dev = read_dev(_DEV.value) if _DEV.value else None
    if _QUESTIONS_FILE.value:
      config.questions = read_questions(_QUESTIONS_FILE.value)
  except (ValueError, OSError) as e:
    cli.fail(errors.first_line(e), status=2)
  if _QUESTION.value or dev:
    config.questions = _QUESTION.value or [d["question"] for d in dev]
  if _KIND.value:
    config.kind = _KIND.value
  if _K.value is not None:
    config.k = _K.value
  stderr = lambda message: print(message, file=sys.stderr)
  try:
    questions = retriever_lib.check_questions(config.questions)
    if generate:  # the decoding settings, checked before anything loads
      answering.check_config(config)
    if _CLOSED_BOOK.value:
      encoder = TextEncoder.from_pretrained(weights.resolve(config.encoder))
      hits = None
    else:
      retriever = open_retriever(config, log=stderr, progress=True)
      encoder = retriever.encoder
      hits = [r["hits"] for r in retriever.retrieve(questions, config.k, log=stderr)]
    if generate:
      answerer = answering.Answerer.from_config(config, encoder, log=stderr)
      results = answerer.answer(questions, hits)
      sweep = (answerer.temperature_sweep(questions, hits, [d.get("answer") or d["title"]
                                                            for d in dev], temperatures)
               if temperatures else None)
    else:
      results = [{"question": q, "answer": None, "passages": h} for q, h in zip(questions, hits)]
  except retriever_lib.QuestionError as e:
    cli.fail(str(e), status=2)
  # WeightsError and IndexError_ are ValueErrors; ImportError: a backend's library is missing.
  except (ValueError, OSError, ImportError, assets.AssetError) as e:
    cli.fail(errors.first_line(e))
  except KeyboardInterrupt:
    cli.fail("interrupted (an index build resumes where it stopped when run again)", 130)
  if _HEATMAP.value:
    for path in answering.write_heatmaps(results, _HEATMAP.value):
      stderr(f"wrote {path}")
  if dev:
    _print_dev(config, dev, hits, results if generate else None, sweep if generate else None)
  elif _JSON.value:
    for r in results:
      print(json.dumps({"question": r["question"], "answer": r["answer"],
                        "passages": r["passages"] or []}, ensure_ascii=False))
  else:
    for r in results:
      _print_result(r)


def _print_result(r: Dict[str, Any]) -> None:
  print(f"\nQ: {cli.shorten(r['question'], 200)}")
  if r["answer"] is not None:
    print(f"A: {r['answer']}")
  for rank, hit in enumerate(r["passages"] or [], 1):
    weight = f" p={hit['prior']:.2f} post={hit['posterior']:.2f}" if "prior" in hit else ""
    print(f"  {rank}. [{hit['score']:.3f}{weight}] {hit['title']}: "
          f"{cli.shorten(hit['text'], 100)}")


def _print_dev(config, dev, hits, results, sweep) -> None:
  name, k = _DEV.value, config.k
  if hits is not None:
    scores = dev_scores([{"hits": h} for h in hits], dev)
    print(f"{name}: {len(dev)} questions, k={k}: answer article top-1 "
          f"{scores['article@1']:.3f}, top-{k} {scores['article@k']:.3f}; answer string "
          f"in top-1 passage {scores['answer@1']:.3f}, top-{k} {scores['answer@k']:.3f}")
  if results is not None:
    graded = [(r, d) for r, d in zip(results, dev) if d.get("answer")]
    right = sum(contains_answer(r["answer"], d["answer"]) for r, d in graded)
    how = "closed book" if hits is None else f"RAG-{config.kind.capitalize()}, k={k}, " \
        f"doc_temperature {config.doc_temperature:g}"
    print(f"{name}: generated answer holds the gold answer: {right}/{len(graded)} "
          f"= {right / len(graded):.3f} ({how})")
  if sweep:
    print("doc_temperature  NLL/token RAG-Token  RAG-Sequence")
    for t, nll in sweep.items():
      print(f"{t:>15g}  {nll['token']:>19.4f}  {nll['sequence']:>12.4f}")
    best = min(sweep, key=lambda t: sweep[t]["token"])
    print(f"lowest RAG-Token NLL at doc_temperature {best:g}")


if __name__ == "__main__":
  cli.run(main, default_config=str(DEFAULT_CONFIG))
