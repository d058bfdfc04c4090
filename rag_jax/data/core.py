"""What every task reader returns, the one-line error they raise, and their shared file helpers.

A reader turns a task's files into a list of `Example`s. Whatever is wrong with a file (missing,
not UTF-8, a bad line) is a `DataError` whose message is one line naming the file, and the line
number where there is one: `dev.jsonl:7: unknown label 'MAYBE' (...)`.
"""

import dataclasses
import gzip
import json
import os
import pathlib
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Example:
  """One task example, the same for every task.

  Attributes:
    id: the dataset's id (as a string; FEVER's official ids are integers).
    source: the question or claim: the retriever's and the generator's input.
    targets: gold outputs; the first is the training target. Empty for unlabelled test sets.
    gold_titles: titles of the articles of gold passages where the dataset names them
      (FEVER's evidence pages, KILT's provenance), deduplicated in order, for recall@k.
    label: a classification task's label (FEVER: SUPPORTS / REFUTES / NOT ENOUGH INFO).
  """
  id: str
  source: str
  targets: Tuple[str, ...]
  gold_titles: Tuple[str, ...] = ()
  label: Optional[str] = None

  def __post_init__(self):
    # Lists are easy to pass by mistake; tuples keep the example hashable and immutable.
    object.__setattr__(self, "targets", tuple(self.targets))
    object.__setattr__(self, "gold_titles", tuple(self.gold_titles))


class DataError(ValueError):
  """A task file that cannot be read; the message says which file (and line) and why, in one
  line."""


def line_error(path: str | os.PathLike, line_no: int, problem: str) -> DataError:
  """The error for line `line_no` (1-based) of `path`: `path:line_no: problem`."""
  return DataError(f"{path}:{line_no}: {problem}")


def split_file(path: str | os.PathLike, split: str, suffix: str) -> pathlib.Path:
  """The file of `split`: `path` with `{split}` filled in, or `path/{split}{suffix}`.

  Args:
    path: a pattern holding `{split}` (e.g. `data/fever/{split}.jsonl`), or a directory.
    split: e.g. "train", "dev".
    suffix: the file name's ending in a directory, e.g. ".jsonl".

  Raises:
    DataError: `path` is an existing file: one file cannot be every split, and reading the
      same file as train and dev would go unnoticed.
  """
  text = os.fspath(path)
  if "{split}" in text:
    return pathlib.Path(text.replace("{split}", split))
  if os.path.isfile(text):
    raise DataError(f"{text}: a file; give its directory or a pattern with {{split}}")
  return pathlib.Path(text) / f"{split}{suffix}"


def read_lines(path: str | os.PathLike, source: str) -> Iterator[Tuple[int, str]]:
  """Yields (1-based line number, line without its line end) of a UTF-8 file, `.gz` or not.

  Args:
    path: the file.
    source: where the data comes from, for the message when the file is missing.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.name.endswith(".gz") else open
  try:
    f = opener(path, "rb")
  except FileNotFoundError:
    raise DataError(f"{path}: no such file ({source})") from None
  except IsADirectoryError:
    raise DataError(f"{path}: a directory, expected a file") from None
  except OSError as e:
    raise DataError(f"{path}: unreadable ({e.strerror or e})") from None
  # Binary lines decoded one at a time, so that bad UTF-8 is reported with its line number.
  with f:
    try:
      for line_no, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as e:
          raise line_error(path, line_no, f"not UTF-8 ({e.reason} at byte {e.start})") from None
        yield line_no, line.rstrip("\r\n")
    except (OSError, EOFError) as e:  # e.g. a truncated .gz
      raise DataError(f"{path}: unreadable ({e})") from None


def read_json_lines(path: str | os.PathLike, source: str) -> Iterator[Tuple[int, Any]]:
  """Yields (line number, JSON object) for each non-blank line of a JSONL file.

  Raises:
    DataError: a line that is not JSON or not an object; the file is missing.
  """
  for line_no, line in read_lines(path, source):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      # json's own message says "line 1", which is wrong here; the column is what helps.
      raise line_error(path, line_no, f"bad JSON ({e.msg}: column {e.colno})") from None
    if not isinstance(record, dict):
      raise line_error(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    yield line_no, record


_WORD = re.compile(r"[^\W_]+|\S")


def words(texts: Iterable[str]) -> List[str]:
  """The sorted distinct words of `texts`, lowercased and split as BERT's uncased basic
  tokenizer splits ASCII text: on whitespace, with each punctuation mark a word of its own.

  A WordPiece vocabulary of these words (plus the special tokens) covers `texts` with whole
  words, which is what tests over a tiny closed-vocabulary corpus need.
  """
  found = set()
  for text in texts:
    found.update(_WORD.findall(text.lower()))
  return sorted(found)


def read_json(path: str | os.PathLike, source: str) -> Any:
  """The one JSON value of a file (`.gz` or not), e.g. MS MARCO's column-oriented object.

  Raises:
    DataError: the file is missing, not UTF-8, or not JSON (with the line and column).
  """
  text = _read_text(path, source)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise line_error(path, e.lineno, f"bad JSON ({e.msg}: column {e.colno})") from None


def read_json_array(path: str | os.PathLike, source: str) -> Iterator[Tuple[int, Any]]:
  """Yields (line number where it starts, element) for each element of a file holding one
  JSON array, e.g. DPR's retriever files (`[{"question": ...}, ...]`, pretty-printed).

  Elements are decoded one at a time so that an error in one (bad JSON, or what the caller
  finds wrong with it) names the line where that element starts, not just "the file".

  Raises:
    DataError: the file is missing, not UTF-8, not a JSON array, or an element is not JSON.
  """
  text = _read_text(path, source)
  decoder = json.JSONDecoder()

  def skip(pos: int) -> int:
    return _JSON_SPACE.match(text, pos).end()

  def bad(pos: int, problem: str) -> DataError:
    return line_error(path, text.count("\n", 0, pos) + 1, problem)

  pos = skip(0)
  if not text.startswith("[", pos):
    raise bad(pos, "expected a JSON array ('[' first)")
  pos, line_no, counted = skip(pos + 1), 1, 0
  if text.startswith("]", pos):
    pos = skip(pos + 1)
  else:
    while True:
      line_no += text.count("\n", counted, pos)
      counted = pos
      try:
        element, pos = decoder.raw_decode(text, pos)
      except json.JSONDecodeError as e:
        raise line_error(path, e.lineno, f"bad JSON ({e.msg}: column {e.colno})") from None
      yield line_no, element
      pos = skip(pos)
      if text.startswith("]", pos):
        pos = skip(pos + 1)
        break
      if not text.startswith(",", pos):
        raise bad(pos, "bad JSON (expected ',' or ']' after an array element)")
      pos = skip(pos + 1)
  if pos != len(text):
    raise bad(pos, "bad JSON (extra data after the array)")


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _read_text(path: str | os.PathLike, source: str) -> str:
  # Through read_lines, for its messages (missing file, bad UTF-8 with its line number).
  return "\n".join(line for _, line in read_lines(path, source))


class Malformed(Exception):
  """What is wrong with one record; the reader adds the file and line (`line_error`)."""


_MISSING = object()


def field(record: Dict[str, Any], key: str, kind: type | Tuple[type, ...],
          default: Any = _MISSING) -> Any:
  """`record[key]`, checked to be a `kind`.

  Raises:
    Malformed: the key is missing (and there is no default) or holds another type.
  """
  value = record.get(key, default)
  if value is _MISSING:
    raise Malformed(f"missing {key!r}")
  if not isinstance(value, kind):
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise Malformed(f"{key!r} is {type(value).__name__}, expected {names}")
  return value


def record_id(record: Dict[str, Any], key: str = "id") -> str:
  """A record's id as a string: datasets use integers (FEVER) or strings (KILT).

  Raises:
    Malformed: missing, empty, or neither an integer nor a string.
  """
  if key not in record:
    raise Malformed(f"missing {key!r}")
  value = record[key]
  # bool is an int in Python, but never an id.
  if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
    raise Malformed(f"{key!r} is {short(value)}, expected an integer or a non-empty string")
  return str(value)


def strings(value: Any, what: str) -> List[str]:
  """`value` checked to be a list of strings (a list of gold answers, say).

  Raises:
    Malformed: not a list, or an item that is not a string.
  """
  if not isinstance(value, list):
    raise Malformed(f"{what} is {short(value)}, expected a list of strings")
  for item in value:
    if not isinstance(item, str):
      raise Malformed(f"{what} holds {short(item)}, expected strings")
  return value


def unique(items: Iterable[str]) -> Tuple[str, ...]:
  """`items` without repeats, in first-seen order."""
  return tuple(dict.fromkeys(items))


def short(value: Any, limit: int = 60) -> str:
  """`repr(value)`, cut to `limit` characters so that an error message stays one short line."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."
