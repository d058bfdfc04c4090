"""NQ-open, TriviaQA and WebQuestions through `tfds.data_source`: random access to prepared
array_record files, with no TensorFlow.

    data.read("nq_open", "~/tensorflow_datasets", "validation")
    data.read("trivia_qa", None, "validation")  # None: tfds's default data_dir

| kind            | tfds name                        | fields read                             |
| --------------- | -------------------------------- | --------------------------------------- |
| `nq_open`       | `natural_questions_open`         | question, answer[]                      |
| `trivia_qa`     | `trivia_qa/unfiltered.nocontext` | question, question_id, answer.value,    |
|                 |                                  | answer.aliases[]                        |
| `web_questions` | `web_questions`                  | question, answers[]                     |

Splits are tfds's (`train`, `validation`, `test`; slices such as `train[:90%]` work too). The
paper's test sets (from DPR) are NQ-open's `validation` and TriviaQA's `validation` (the
unfiltered test set's answers are hidden; tfds gives it with empty answers, read here as
unlabelled), and WebQuestions' `test`. TriviaQA's targets are its answer's value, then its
aliases (deduplicated); NQ-open's and WebQuestions' have no ids, so an example's id is
`{split}:{index}`, the record's key in the data source (TriviaQA's is its `question_id`).

The datasets must be prepared in the array_record format once (`tfds build NAME
--file_format=array_record`, on a machine that can download them; tfds's writer may need
TensorFlow there); reading them needs neither network nor TensorFlow. tfds hands strings back
as bytes, decoded here as UTF-8.

`web_questions` is one of tfds's "legacy" builders, registered only when its module is
imported; tfds imports them all at the first lookup of an unknown name, but stops at the first
that fails to import (here `nearest_neighbors`, for want of h5py), which leaves WebQuestions
unknown. The reader imports its module itself.

Tested with `tfds.testing.mock_data`, which works without TensorFlow for `data_source`: with
random records in each dataset's real feature layout, and with hand-written records through
its `as_data_source_fn`.
"""

import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from rag_jax.data.core import DataError, Example, Malformed, unique

DATASETS = {
    "nq_open": "natural_questions_open",
    "trivia_qa": "trivia_qa/unfiltered.nocontext",
    "web_questions": "web_questions",
}


def read_tfds(kind: str, data_dir: Optional[str | os.PathLike], split: str) -> List[Example]:
  """The examples of one split of a tfds QA dataset.

  Args:
    kind: a key of `DATASETS` ("nq_open", "trivia_qa", "web_questions").
    data_dir: tfds's data directory holding the prepared dataset; None for tfds's default
      (`TFDS_DATA_DIR` or ~/tensorflow_datasets).
    split: a tfds split, e.g. "validation", "train[:1000]".

  Returns:
    In the data source's order: Example(id, source=question, targets=answers).

  Raises:
    ValueError: an unknown kind.
    DataError: the dataset or split cannot be opened (not prepared, not in array_record), or a
      record is malformed: `natural_questions_open validation[7]: ...`.
  """
  if kind not in DATASETS:
    raise ValueError(f"unknown tfds QA dataset {kind!r}; expected one of {sorted(DATASETS)}")
  name, convert = DATASETS[kind], _CONVERTERS[kind]
  source = _data_source(name, data_dir, split)
  examples = []
  for index in range(len(source)):
    try:
      record = source[index]
      if not isinstance(record, Mapping):
        raise Malformed(f"expected a dict of features, got {type(record).__name__}")
      examples.append(convert(record, f"{split}:{index}"))
    except Malformed as e:
      raise DataError(f"{name} {split}[{index}]: {e}") from None
  return examples


def read_nq_open(data_dir: Optional[str | os.PathLike], split: str) -> List[Example]:
  """`read_tfds("nq_open", ...)`: NQ-open (Lee et al., 2019), questions with short answers."""
  return read_tfds("nq_open", data_dir, split)


def read_trivia_qa(data_dir: Optional[str | os.PathLike], split: str) -> List[Example]:
  """`read_tfds("trivia_qa", ...)`: TriviaQA's unfiltered questions, without evidence."""
  return read_tfds("trivia_qa", data_dir, split)


def read_web_questions(data_dir: Optional[str | os.PathLike], split: str) -> List[Example]:
  """`read_tfds("web_questions", ...)`: WebQuestions (Berant et al., 2013)."""
  return read_tfds("web_questions", data_dir, split)


def _data_source(name: str, data_dir: Optional[str | os.PathLike], split: str):
  # Imported here: tfds takes half a second to import, and only these readers need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Registers the legacy WebQuestions builder (see the module docstring).
  import tensorflow_datasets.question_answering.web_questions  # noqa: F401  pylint: disable=all
  where = os.fspath(data_dir) if data_dir is not None else None
  try:
    return tfds.data_source(name, split=split, data_dir=where, download=False)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many kinds)
    # tfds's messages run over several lines; the first says what went wrong.
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    reason = re.sub(r"\s*Possible root causes:?$", "", reason)
    raise DataError(f"{where or 'the default tfds data_dir'}: cannot open {name} split "
                    f"{split!r} ({reason}); prepare it once with `tfds build {name} "
                    f"--file_format=array_record`") from None


def _nq_open(record: Mapping[str, Any], example_id: str) -> Example:
  return Example(id=example_id, source=_text(_get(record, "question"), "question"),
                 targets=unique(_texts(_get(record, "answer"), "answer")))


def _trivia_qa(record: Mapping[str, Any], example_id: str) -> Example:
  answer = _get(record, "answer")
  if not isinstance(answer, Mapping):
    raise Malformed(f"'answer' is {type(answer).__name__}, expected a dict")
  value = _text(_get(answer, "value"), "answer.value")
  aliases = _texts(_get(answer, "aliases"), "answer.aliases")
  return Example(id=_text(_get(record, "question_id"), "question_id") or example_id,
                 source=_text(_get(record, "question"), "question"),
                 targets=unique(a for a in [value, *aliases] if a))


def _web_questions(record: Mapping[str, Any], example_id: str) -> Example:
  return Example(id=example_id, source=_text(_get(record, "question"), "question"),
                 targets=unique(_texts(_get(record, "answers"), "answers")))


_CONVERTERS: Dict[str, Callable[[Mapping[str, Any], str], Example]] = {
    "nq_open": _nq_open, "trivia_qa": _trivia_qa, "web_questions": _web_questions}


def _get(record: Mapping[str, Any], key: str) -> Any:
  if key not in record:
    raise Malformed(f"missing {key!r}")
  return record[key]


def _text(value: Any, what: str) -> str:
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise Malformed(f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from None
  if not isinstance(value, str):
    raise Malformed(f"{what} is {type(value).__name__}, expected text")
  return value.strip()


def _texts(value: Any, what: str) -> List[str]:
  if isinstance(value, np.ndarray) and value.ndim == 1:
    value = value.tolist()
  if not isinstance(value, (list, tuple)):
    raise Malformed(f"{what} is {type(value).__name__}, expected a sequence of texts")
  return [_text(item, what) for item in value]
