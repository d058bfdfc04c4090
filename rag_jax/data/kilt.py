"""KILT (Petroni et al., 2021): the KILT versions of the tasks (Natural Questions, TriviaQA,
ELI5, FEVER, ...), one JSON object a line:

    {"id": "-1381557037705218166", "input": "who sings does he love me with reba",
     "output": [{"answer": "Linda Davis",
                 "provenance": [{"wikipedia_id": "...", "title": "Does He Love You", ...}]},
                {"provenance": [...]}],
     "meta": {}}

Targets are the outputs' answers, gold titles their provenance's titles, each deduplicated in
order; an output may hold only provenance. Test files have no `output` (unlabelled). FEVER in
this format is better read with the `fever` kind, which maps its labels to label words.
"""

import os
from typing import Any, Dict, List

from rag_jax.data.core import (Example, Malformed, field, line_error, read_json_lines,
                               record_id, split_file, unique)

SOURCE = "KILT's files come from github.com/facebookresearch/KILT (e.g. nq-dev-kilt.jsonl)"


def read_kilt(path: str | os.PathLike) -> List[Example]:
  """The examples of one KILT file (`.jsonl`, `.gz` or not).

  Returns:
    In file order: Example(id, source=input, targets=answers, gold_titles=provenance titles).

  Raises:
    DataError: the file is missing, or a line is malformed (bad JSON, a missing or mistyped
      field); the message names the file and line.
  """
  examples = []
  for line_no, record in read_json_lines(path, SOURCE):
    try:
      examples.append(_example(record))
    except Malformed as e:
      raise line_error(path, line_no, str(e)) from None
  return examples


def read_split(path: str | os.PathLike, split: str) -> List[Example]:
  """`read_kilt` of one split: `path` is a pattern holding `{split}`
  (`data/kilt/nq-{split}-kilt.jsonl`) or a directory holding `{split}.jsonl`."""
  return read_kilt(split_file(path, split, ".jsonl"))


def _example(record: Dict[str, Any]) -> Example:
  source = field(record, "input", str).strip()
  if not source:
    raise Malformed("empty 'input'")
  answers, titles = [], []
  for output in field(record, "output", list, default=[]):
    if not isinstance(output, dict):
      raise Malformed(f"'output' holds a {type(output).__name__}, expected an object")
    answer = field(output, "answer", str, default="").strip()
    if answer:
      answers.append(answer)
    for provenance in field(output, "provenance", list, default=[]):
      if not isinstance(provenance, dict):
        raise Malformed(f"'provenance' holds a {type(provenance).__name__}, expected an object")
      titles.append(field(provenance, "title", str))
  return Example(id=record_id(record), source=source, targets=unique(answers),
                 gold_titles=unique(titles))
