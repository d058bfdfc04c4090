"""Ask questions over the knowledge source: `python -m rag_jax.ask [--config CONFIG]`.

RAG end to end: retrieve the top-k passages of each question, then generate an answer
marginalising over them (rag_jax.ask.answering). With no `--config`, the embedded default
(rag_jax/configs/wiki.py): MiniLM over the embedded Wikipedia, SmolLM2-135M-Instruct
answering, RAG-Token, greedy. `--kind sequence` for RAG-Sequence, `--closed-book` for the
generator alone, `--json` for one object per question per line, `--heatmap FILE.png` for the
paper's Figure 2, `--config.generator=none` for the passages alone.

The passages come from a saved index, `--config.index=DIR` (built by `python -m
rag_jax.index build`), or one built from the config's corpus on first use and cached
(rag_jax.ask.retrieval).

Bad questions are refused in one line, exit 2: none, an empty or a blank one, k above the
number of passages. A question longer than the encoder's max_length is truncated to
it, with a note on stderr; a prompt longer than `max_prompt_length` loses the end of its
passage (and a question that alone is longer, its end; the chat prompt around it stays).
`--dev FILE` scores retrieval and answers on questions whose answer is known, and
`--temperatures` adds the sweep that chose the doc prior's temperature. The work is in
`retrieval`, `questions` and `answering` beside this module, importable and tested; `main`
only parses flags and prints.
"""

import json
import pathlib
import sys
from typing import Any, Callable, Dict, Iterator, List

from absl import flags
from ml_collections import config_flags

from rag_jax import assets
from rag_jax import cli
from rag_jax import errors
from rag_jax import weights
from rag_jax.ask import answering
from rag_jax.ask import questions as questions_lib
from rag_jax.ask import retrieval
from rag_jax.encoder import TextEncoder
from rag_jax.index import retriever as retriever_lib

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "wiki.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: the embedded Wikipedia, "
    "rag_jax/configs/wiki.py); --config.FIELD=VALUE overrides a field.")
_QUESTION = flags.DEFINE_multi_string("question", None, "A question (repeatable); overrides "
                                      "the config's questions.")
_QUESTIONS_FILE = flags.DEFINE_string("questions-file", None, "A file of questions, one a "
                                      "line (blank lines skipped); - reads standard input.")
_INTERACTIVE = flags.DEFINE_bool("interactive", False, "Answer each line of standard input as "
                                 "it is typed (or piped), loading and compiling once; an "
                                 "empty input (Ctrl-D) ends.")
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


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}", status=2)
  config = cli.config(_CONFIG, str(DEFAULT_CONFIG))
  if sum(map(bool, (_QUESTION.value, _QUESTIONS_FILE.value, _DEV.value,
                    _INTERACTIVE.value))) > 1:
    cli.fail("--question, --questions-file, --dev and --interactive do not go together",
             status=2)
  if _INTERACTIVE.value and _HEATMAP.value:
    cli.fail("--heatmap needs the questions up front, not --interactive", status=2)
  if _TEMPERATURES.value and not _DEV.value:
    cli.fail("--temperatures needs --dev", status=2)
  generate = str(config.get("generator", "none")).lower() != "none"
  if not generate and (_CLOSED_BOOK.value or _HEATMAP.value or _TEMPERATURES.value):
    cli.fail("--closed-book, --heatmap and --temperatures need a generator "
             "(--config.generator is none)", status=2)
  try:
    temperatures = [float(t) for t in _TEMPERATURES.value or ()]
    dev = questions_lib.read_dev(_DEV.value) if _DEV.value else None
    if _QUESTIONS_FILE.value:
      config.questions = questions_lib.read_questions(_QUESTIONS_FILE.value)
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
    questions = [] if _INTERACTIVE.value else retriever_lib.check_questions(config.questions)
    if generate:  # the decoding settings, checked before anything loads
      answering.check_config(config)
    if _CLOSED_BOOK.value:
      encoder, retriever = TextEncoder.from_pretrained(weights.resolve(config.encoder)), None
    else:
      retriever = retrieval.open_retriever(config, log=stderr, progress=True)
      encoder = retriever.encoder
    answerer = answering.Answerer.from_config(config, encoder, log=stderr) if generate else None

    def answer(batch):
      """(hits, results) of some questions."""
      hits = None if retriever is None else [
          r["hits"] for r in retriever.retrieve(batch, config.k, log=stderr)]
      if answerer is not None:
        return hits, answerer.answer(batch, hits)
      return hits, [{"question": q, "answer": None, "passages": h} for q, h in zip(batch, hits)]

    if dev or _HEATMAP.value:  # scored or drawn together, at the end
      hits, results = answer(questions)
      sweep = (answerer.temperature_sweep(questions, hits, [d.get("answer") or d["title"]
                                                            for d in dev], temperatures)
               if temperatures else None)
    else:  # each batch printed as it is answered
      batches = (_typed_questions(stderr) if _INTERACTIVE.value else
                 (questions[i:i + config.questions_per_batch]
                  for i in range(0, len(questions), config.questions_per_batch)))
      for batch in batches:
        for r in answer(batch)[1]:
          _print(r)
      return
  except (retriever_lib.QuestionError, errors.UsageError) as e:
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
  else:
    for r in results:
      _print(r)


def _typed_questions(log: Log) -> Iterator[List[str]]:
  """Each non-blank line of standard input, as a batch of one, as it comes; a prompt on
  stderr when it is a terminal."""
  while True:
    if sys.stdin.isatty():
      print("question> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
      return
    if line.strip():
      yield [line.strip()]
    else:
      log("(a blank line: type a question, or Ctrl-D to end)")


def _print(r: Dict[str, Any]) -> None:
  if _JSON.value:
    print(json.dumps({"question": r["question"], "answer": r["answer"],
                      "passages": r["passages"] or []}, ensure_ascii=False), flush=True)
  else:
    _print_result(r)


def _print_result(r: Dict[str, Any]) -> None:
  print(f"\nQ: {cli.shorten(r['question'], 200)}")
  if r["answer"] is not None:
    print(f"A: {r['answer']}")
  for rank, hit in enumerate(r["passages"] or [], 1):
    weight = f" p={hit['prior']:.2f} post={hit['posterior']:.2f}" if "prior" in hit else ""
    print(f"  {rank}. [{hit['score']:.3f}{weight}] {hit['title']}: "
          f"{cli.shorten(hit['text'], 100)}")
  sys.stdout.flush()


def _print_dev(config, dev, hits, results, sweep) -> None:
  name, k = _DEV.value, config.k
  if hits is not None:
    scores = questions_lib.dev_scores([{"hits": h} for h in hits], dev)
    print(f"{name}: {len(dev)} questions, k={k}: answer article top-1 "
          f"{scores['article@1']:.3f}, top-{k} {scores['article@k']:.3f}; answer string "
          f"in top-1 passage {scores['answer@1']:.3f}, top-{k} {scores['answer@k']:.3f}")
  if results is not None:
    graded = [(r, d) for r, d in zip(results, dev) if d.get("answer")]
    right = sum(questions_lib.contains_answer(r["answer"], d["answer"]) for r, d in graded)
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
