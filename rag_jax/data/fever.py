"""FEVER fact verification (Thorne et al., 2018), from the official files or KILT's.

Two formats, told apart line by line (a file may even mix them):

  * official (fever.ai): `{"id": 75397, "claim": "...", "label": "SUPPORTS", "evidence":
    [[[annotation_id, evidence_id, "Nikolaj_Coster-Waldau", 7], ...], ...]}`: a list of
    evidence sets, each a list of sentences `[annotation_id, evidence_id, page, sentence]`;
    NOT ENOUGH INFO claims have `[[[annotation_id, null, null, null]]]`. Test sets have only
    `id` and `claim`. Page titles are Wikipedia's with `_` for spaces and `-LRB-`-style escapes
    for brackets and colons; `normalize_title` undoes both.
  * KILT: `{"id": "75397", "input": "...", "output": [{"answer": "SUPPORTS", "provenance":
    [{"wikipedia_id": "...", "title": "Nikolaj Coster-Waldau", ...}]}]}`; titles are plain.
    KILT drops NOT ENOUGH INFO; its test set has no `output`.

The paper (Lewis et al., 2020, "Fact Verification") maps each label to a single output token
and trains RAG to generate it from the claim. `DEFAULT_LABEL_WORDS` are the words used here;
the trainer checks that each is one token of the generator's vocabulary, since a word split
into pieces would make label accuracy depend on more than one decoding step.
"""

import os
from typing import Any, Dict, List, Mapping, Optional

from rag_jax.data.core import (Example, Malformed, field, line_error, read_json_lines, record_id,
                               short, split_file, unique)

SUPPORTS, REFUTES, NOT_ENOUGH_INFO = "SUPPORTS", "REFUTES", "NOT ENOUGH INFO"
LABELS = (SUPPORTS, REFUTES, NOT_ENOUGH_INFO)
# Lowercase common words: one token in BERT's uncased WordPiece and, with a leading space, in
# BART's and Llama's BPE vocabularies.
DEFAULT_LABEL_WORDS = {SUPPORTS: "true", REFUTES: "false", NOT_ENOUGH_INFO: "unknown"}
SOURCE = "FEVER comes from fever.ai or KILT; see experiments/fever.py"

# The escapes of FEVER's Wikipedia dump (inherited from the Stanford tokenizer's PTB style).
_TITLE_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{",
                  "-RCB-": "}", "-COLON-": ":"}


def normalize_title(title: str) -> str:
  """A FEVER page title as Wikipedia shows it: `Savages_-LRB-2012_film-RRB-` -> `Savages (2012
  film)`. Plain titles (KILT's) come back unchanged unless they hold `_` or an escape."""
  for escape, char in _TITLE_ESCAPES.items():
    title = title.replace(escape, char)
  return title.replace("_", " ")


def page_name(title: str) -> str:
  """A title as FEVER's pages spell it, the inverse of `normalize_title`: `Savages (2012
  film)` -> `Savages_-LRB-2012_film-RRB-`, so that files written in FEVER's format (rag_jax.
  data.wiki) read back to their titles. A title's own `_` would come back as a space:
  FEVER's spelling cannot tell the two apart."""
  for escape, char in _TITLE_ESCAPES.items():
    title = title.replace(char, escape)
  return title.replace(" ", "_")


def read_fever(path: str | os.PathLike, *, two_way: bool = False,
               label_words: Optional[Mapping[str, str]] = None) -> List[Example]:
  """The claims of one FEVER file, official or KILT format (`.gz` or not).

  Args:
    path: a JSONL file.
    two_way: drop NOT ENOUGH INFO claims (the paper's 2-way task). Unlabelled claims stay.
    label_words: label -> output word (default `DEFAULT_LABEL_WORDS`); must cover every label
      read (SUPPORTS and REFUTES only when `two_way`), one distinct word each.

  Returns:
    In file order: Example(id, source=claim, targets=(label word,) or () when unlabelled,
    gold_titles=the evidence pages as plain titles, label).

  Raises:
    DataError: the file is missing, or a line is malformed (bad JSON, a missing or mistyped
      field, an unknown label); the message names the file and line.
    ValueError: `label_words` is not one distinct word for each label.
  """
  words = _label_words(label_words, two_way)
  examples = []
  for line_no, record in read_json_lines(path, SOURCE):
    try:
      if "claim" in record:
        example = _official(record)
      elif "input" in record:
        example = _kilt(record)
      else:
        raise Malformed("missing 'claim' (official FEVER) or 'input' (KILT)")
    except Malformed as e:
      raise line_error(path, line_no, str(e)) from None
    if two_way and example.label == NOT_ENOUGH_INFO:
      continue
    if example.label is not None:
      example = Example(example.id, example.source, (words[example.label],),
                        example.gold_titles, example.label)
    examples.append(example)
  return examples


def read_split(path: str | os.PathLike, split: str, **options) -> List[Example]:
  """`read_fever` of one split: `path` is a pattern with `{split}` (`data/fever/{split}.jsonl`)
  or a directory holding `{split}.jsonl`. `options` go to `read_fever`."""
  return read_fever(split_file(path, split, ".jsonl"), **options)


def _label_words(label_words: Optional[Mapping[str, str]], two_way: bool) -> Dict[str, str]:
  words = dict(DEFAULT_LABEL_WORDS if label_words is None else label_words)
  unknown = sorted(set(words) - set(LABELS))
  if unknown:
    raise ValueError(f"label_words: unknown labels {unknown}; expected keys from {LABELS}")
  needed = LABELS[:2] if two_way else LABELS
  missing = [label for label in needed if label not in words]
  if missing:
    raise ValueError(f"label_words: no word for {missing}")
  for label, word in words.items():
    if not isinstance(word, str) or not word or word.split() != [word]:
      raise ValueError(f"label_words: {label} -> {word!r}; expected one word")
  if len({words[label] for label in needed}) < len(needed):
    raise ValueError(f"label_words: two labels share a word in {words}")
  return words


def _official(record: Dict[str, Any]) -> Example:
  label = record.get("label")
  if label is not None:
    _check_label(label)
    if "evidence" not in record:
      raise Malformed("missing 'evidence'")
  titles = []
  evidence = field(record, "evidence", list, default=[])
  for group in evidence:
    if not isinstance(group, list):
      raise Malformed(f"'evidence' holds a {type(group).__name__}, expected a list of "
                      f"[annotation_id, evidence_id, page, sentence]")
    for sentence in group:
      if not isinstance(sentence, list) or len(sentence) != 4:
        raise Malformed(f"evidence {short(sentence)}: expected [annotation_id, evidence_id, "
                        f"page, sentence]")
      page = sentence[2]
      if page is None:  # NOT ENOUGH INFO: an annotation with no sentence.
        continue
      if not isinstance(page, str):
        raise Malformed(f"evidence page {short(page)}: expected a string or null")
      titles.append(normalize_title(page))
  return Example(id=record_id(record), source=field(record, "claim", str), targets=(),
                 gold_titles=unique(titles), label=label)


def _kilt(record: Dict[str, Any]) -> Example:
  answers, titles = [], []
  for output in field(record, "output", list, default=[]):
    if not isinstance(output, dict):
      raise Malformed(f"'output' holds a {type(output).__name__}, expected an object")
    if "answer" in output:
      _check_label(output["answer"])
      answers.append(output["answer"])
    for provenance in field(output, "provenance", list, default=[]):
      if not isinstance(provenance, dict):
        raise Malformed(f"'provenance' holds a {type(provenance).__name__}, expected an object")
      titles.append(field(provenance, "title", str))
  if len(set(answers)) > 1:
    raise Malformed(f"conflicting answers {unique(answers)}")
  return Example(id=record_id(record), source=field(record, "input", str), targets=(),
                 gold_titles=unique(titles), label=answers[0] if answers else None)


def _check_label(label: Any) -> None:
  if label not in LABELS:
    raise Malformed(f"unknown label {short(label)} (expected SUPPORTS, REFUTES or "
                    f"NOT ENOUGH INFO)")
