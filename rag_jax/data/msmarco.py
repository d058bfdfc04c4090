"""MS MARCO v2.1 (Nguyen et al., 2016) for abstractive QA, from the official JSON files.

Each file (`train_v2.1.json`, `dev_v2.1.json`, `eval_v2.1_public.json`; `.gz` or not) is one
JSON object holding columns, each a dict from the same row keys ("0", "1", ...):

    {"query": {"0": "what is a corporation?"}, "query_id": {"0": 1102432},
     "query_type": {"0": "DESCRIPTION"},
     "answers": {"0": ["A corporation is a company or group of people ..."]},
     "wellFormedAnswers": {"0": "[]"},
     "passages": {"0": [{"is_selected": 0, "passage_text": "...", "url": "..."}, ...]}}

`wellFormedAnswers` is a list of strings, or the string "[]" where there is none; the eval
file has neither it nor `answers`. RAG answers from its own retrieved Wikipedia passages, so
the supplied `passages` are not read.

Which questions and targets (`task`):
  * "nlg" (the default): MS MARCO's natural-language-generation task, the one the paper
    reports: only questions with a well-formed answer, and those answers as targets. The
    paper's train and dev sizes (153,726 and 12,468 of v2.1's 808,731 and 101,093 questions)
    point to this subset; its test size, 101,093, is that of the whole v2.1 dev file (the eval
    file's answers are hidden), and the paper does not say how it scored the questions there
    that have no well-formed answer.
  * "qna": every question with an answer: the well-formed answers where there are some, else
    the plain ones; "No Answer Present." is not an answer, and a question left with none is
    skipped.
Either way, a file with no answer columns (the eval set) gives every question, unlabelled.

An example's id is its `query_id`. The official files are one line long, so an error names
the row's key instead of a line: `dev_v2.1.json: row '17': 'query' is int, expected str`.
"""

import os
import pathlib
from typing import Any, Dict, List, Tuple

from rag_jax.data.core import (DataError, Example, Malformed, read_json, record_id, short,
                               split_file, strings, unique)

SOURCE = "MS MARCO v2.1 comes from microsoft.github.io/msmarco (train/dev/eval_v2.1.json.gz)"
NO_ANSWER = "No Answer Present."
TASKS = ("nlg", "qna")
# The official file of each split, in a directory.
FILES = {"train": "train_v2.1.json", "dev": "dev_v2.1.json", "test": "eval_v2.1_public.json"}


def read_msmarco(path: str | os.PathLike, *, task: str = "nlg") -> List[Example]:
  """The questions of one MS MARCO v2.1 file.

  Args:
    path: the file (`.gz` or not).
    task: "nlg" (well-formed answers only, the paper's) or "qna" (see the module docstring).

  Returns:
    In the file's row order: Example(id=query_id, source=query, targets=answers).

  Raises:
    ValueError: an unknown task.
    DataError: the file is missing, not JSON, not MS MARCO's columns, or a row is malformed;
      the message names the file and the row.
  """
  if task not in TASKS:
    raise ValueError(f"unknown MS MARCO task {task!r}; expected one of {TASKS}")
  path = pathlib.Path(path)
  data = read_json(path, SOURCE)
  try:
    queries, ids, answers, well_formed = _columns(data)
  except Malformed as e:
    raise DataError(f"{path}: {e}") from None
  labelled = answers is not None or well_formed is not None
  examples = []
  for key, query in queries.items():
    try:
      targets = _targets(key, answers, well_formed, task) if labelled else ()
      if labelled and not targets:
        continue
      if not isinstance(query, str) or not query.strip():
        raise Malformed(f"'query' is {short(query)}, expected a non-empty string")
      if key not in ids:
        raise Malformed("no 'query_id'")
      query_id = record_id({"query_id": ids[key]}, "query_id")
      examples.append(Example(id=query_id, source=query.strip(), targets=targets))
    except Malformed as e:
      raise DataError(f"{path}: row {key!r}: {e}") from None
  return examples


def read_split(path: str | os.PathLike, split: str, *, task: str = "nlg") -> List[Example]:
  """`read_msmarco` of one split: `path` is a pattern holding `{split}`, or a directory of the
  official files (`FILES`: train, dev, test = eval_v2.1_public; `.json` or `.json.gz`)."""
  text = os.fspath(path)
  if "{split}" not in text and os.path.isdir(text):
    name = FILES.get(split, f"{split}_v2.1.json")
    plain = pathlib.Path(text) / name
    gzipped = plain.with_name(name + ".gz")
    return read_msmarco(gzipped if gzipped.exists() and not plain.exists() else plain,
                        task=task)
  return read_msmarco(split_file(path, split, "_v2.1.json"), task=task)


def _columns(data: Any) -> Tuple[Dict[str, Any], Dict[str, Any], Any, Any]:
  if not isinstance(data, dict):
    raise Malformed(f"expected a JSON object of columns, got {type(data).__name__}")
  columns = []
  for name, required in (("query", True), ("query_id", True), ("answers", False),
                         ("wellFormedAnswers", False)):
    column = data.get(name)
    if column is None and not required:
      columns.append(None)
      continue
    if not isinstance(column, dict):
      raise Malformed(f"column {name!r} is {short(column)}, expected an object of rows")
    columns.append(column)
  return tuple(columns)


def _targets(key: str, answers: Any, well_formed: Any, task: str) -> Tuple[str, ...]:
  good = (well_formed or {}).get(key, [])
  if good == "[]":  # the files' way of saying "none"
    good = []
  good = [a.strip() for a in strings(good, "'wellFormedAnswers'") if a.strip()]
  if good or task == "nlg":
    return unique(good)
  plain = strings((answers or {}).get(key, []), "'answers'")
  return unique(a.strip() for a in plain if a.strip() and a.strip() != NO_ANSWER)
