"""Open-domain QA from DPR's files (Karpukhin et al., 2020): the splits RAG uses for Natural
Questions, TriviaQA, WebQuestions and CuratedTrec.

Two formats, told apart by the file's name:

  * QA files (`nq-test.qa.csv`, `trivia-dev.qa.csv`, `webquestions-test.qa.csv`,
    `curatedtrec-test.qa.csv`; `.gz` or not): one question a line, tab, then the answers as
    a Python list literal: `who got the first nobel prize in physics\t['Wilhelm Conrad
    Röntgen']`. Read as DPR reads them (`csv.reader` with a tab delimiter, so a field may be
    quoted CSV-style), with `ast.literal_eval` where DPR uses `eval`.
  * retriever files (`biencoder-nq-dev.json`, `.json.gz`): one JSON array of `{"question",
    "answers": [...], "positive_ctxs": [{"title", "text", ...}], "negative_ctxs": [...],
    "hard_negative_ctxs": [...]}`; the titles of the positive passages are the gold titles.

Neither has ids: an example's id is `{split}:{n}` (`{file name}:{n}` when read by path), with n
the line of a QA file or the 1-based position in a retriever file's array. The paper's test
sets are DPR's: NQ's and TriviaQA's `test` are the official dev sets, and DPR's `dev` is held
out of the official train set.

CuratedTrec's answers are regular expressions (`Ronald (Wilson )?Reagan`); `read_curatedtrec`
checks that each compiles, and `rag_jax.evaluate.metrics.regex_match` scores against them. The paper
trains on one plain answer per question, chosen by matching the patterns against the top
retrieved passages; that needs the retriever, so it is not the reader's job: the targets
here are the patterns as given, and `regex_target` picks the training text from passages the
trainer retrieves (rag_jax.train.setup).
"""

import ast
import collections
import csv
import os
import pathlib
import re
from typing import Any, List, Optional, Sequence, Tuple

try:  # the regular-expression parser: re._parser from Python 3.11, sre_parse before
  from re import _parser as _sre_parse
except ImportError:  # pragma: no cover
  import sre_parse as _sre_parse  # pylint: disable=deprecated-module

from rag_jax.data.core import (Example, Malformed, field, line_error, read_json_array,
                               read_lines, short, split_file, strings, unique)

SOURCE = ("DPR's QA files come from github.com/facebookresearch/DPR "
          "(python dpr/data/download_data.py --resource data.retriever.qas)")


def read_dpr(path: str | os.PathLike, *, regex: bool = False,
             id_prefix: Optional[str] = None) -> List[Example]:
  """The questions of one DPR file: a QA file (`*.csv`, `*.tsv`) or a retriever file
  (`*.json`), `.gz` or not.

  Args:
    path: the file.
    regex: the answers are regular expressions (CuratedTrec): each must compile.
    id_prefix: ids are `{id_prefix}:{n}`; default the file's name.

  Returns:
    In file order: Example(id, source=question, targets=answers, gold_titles=the positive
    passages' titles (retriever files; none in QA files)).

  Raises:
    DataError: the file is missing, or a line or element is malformed (a missing or
      mistyped field, answers that are not a list of strings, no answers, a pattern that does
      not compile); the message names the file and line.
  """
  path = pathlib.Path(path)
  prefix = path.name if id_prefix is None else id_prefix
  name = path.name[:-3] if path.name.endswith(".gz") else path.name
  if name.endswith(".json"):
    rows = ((line_no, n, record)
            for n, (line_no, record) in enumerate(read_json_array(path, SOURCE), 1))
    parse = _parse_retriever
  else:
    rows = ((line_no, line_no, line) for line_no, line in read_lines(path, SOURCE)
            if line.strip())
    parse = _parse_qa
  examples = []
  for line_no, n, raw in rows:
    try:
      question, answers, titles = parse(raw)
      if not answers:
        raise Malformed("no answers")
      if regex:
        for pattern in answers:
          _check_pattern(pattern)
    except Malformed as e:
      raise line_error(path, line_no, str(e)) from None
    examples.append(Example(id=f"{prefix}:{n}", source=question, targets=answers,
                            gold_titles=unique(titles)))
  return examples


def read_split(path: str | os.PathLike, split: str, *, regex: bool = False) -> List[Example]:
  """`read_dpr` of one split: `path` is a pattern holding `{split}`
  (`downloads/data/retriever/qas/nq-{split}.qa.csv`, `.../biencoder-nq-{split}.json.gz`) or a
  directory holding `{split}.qa.csv`."""
  return read_dpr(split_file(path, split, ".qa.csv"), regex=regex, id_prefix=split)


def read_curatedtrec(path: str | os.PathLike, split: str) -> List[Example]:
  """`read_split` with `regex=True`: CuratedTrec, whose answers are regular expressions."""
  return read_split(path, split, regex=True)


def _parse_qa(line: str) -> Tuple[str, Tuple[str, ...], Tuple[str, ...]]:
  try:
    row = next(csv.reader([line], delimiter="\t"))
  except csv.Error as e:
    raise Malformed(f"not a tab-separated line ({e})") from None
  if len(row) != 2:
    raise Malformed(f"{len(row)} tab-separated fields, expected 2: question, answers")
  question, answers = row
  try:
    value = ast.literal_eval(answers.strip())
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    raise Malformed(f"answers {short(answers)} are not a Python list literal") from None
  return _question(question), tuple(strings(value, "answers")), ()


def _parse_retriever(record: Any) -> Tuple[str, Tuple[str, ...], List[str]]:
  if not isinstance(record, dict):
    raise Malformed(f"expected a JSON object, got {type(record).__name__}")
  question = _question(field(record, "question", str))
  answers = tuple(strings(field(record, "answers", list), "'answers'"))
  titles = []
  for ctx in field(record, "positive_ctxs", list, default=[]):
    if not isinstance(ctx, dict):
      raise Malformed(f"'positive_ctxs' holds a {type(ctx).__name__}, expected an object")
    titles.append(field(ctx, "title", str))
  return question, answers, titles


def _question(text: str) -> str:
  text = text.strip()
  if not text:
    raise Malformed("empty question")
  return text


def _check_pattern(pattern: Any) -> None:
  try:
    re.compile(pattern)
  except re.error as e:
    raise Malformed(f"answer pattern {pattern!r} does not compile ({e})") from None


def regex_target(patterns: Sequence[str], passages: Sequence[str]) -> str:
  """A CuratedTrec question's training target, as the paper (appendix B) chooses it: the text
  its patterns match most often in the passages retrieved for it (case-insensitively, white
  space folded, ties to the first found); with no match anywhere, `expand_pattern` of the
  first pattern."""
  counts = collections.Counter()
  for pattern in patterns:
    compiled = re.compile(pattern, re.IGNORECASE)
    found = (" ".join(m.group(0).split()) for text in passages for m in compiled.finditer(text))
    counts.update(match for match in found if match)
  if counts:
    return counts.most_common(1)[0][0]
  return expand_pattern(patterns[0])


def expand_pattern(pattern: str) -> str:
  """One text a pattern matches, with what it leaves open filled in the simplest way: the
  first branch of an alternation, a repeat its fewest times (optional parts dropped), a
  character class its first member (a space for \\s, a negated class or `.`). The paper's
  fallback "replaces non-deterministic symbols with a whitespace"; taking the first member of
  `[Cc]` keeps the word whole. `(Richard\\s+)?Nixon` -> "Nixon", `5,?280` -> "5280"."""
  return " ".join(_expand(_sre_parse.parse(pattern)).split())


def _expand(items) -> str:
  out = []
  for op, value in items:
    name = str(op)
    if name == "LITERAL":
      out.append(chr(value))
    elif name == "IN":
      out.append(_class_member(value))
    elif name in ("ANY", "NOT_LITERAL"):
      out.append(" ")
    elif name == "BRANCH":
      out.append(_expand(value[1][0]))
    elif name == "SUBPATTERN":
      out.append(_expand(value[-1]))
    elif name.endswith("_REPEAT"):
      low, _, sub = value
      out.append(_expand(sub) * low)
    # Anchors, lookarounds and back-references add nothing.
  return "".join(out)


def _class_member(items) -> str:
  op, value = items[0]
  name = str(op)
  if name == "LITERAL":
    return chr(value)
  if name == "RANGE":
    return chr(value[0])
  if name == "CATEGORY" and str(value) == "CATEGORY_DIGIT":
    return "0"
  return " "  # a space class, a negated class, a word class
