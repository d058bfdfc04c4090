"""Task readers behind one interface: `read(kind, path, split) -> list[Example]`.

    from rag_jax import data
    train = data.read("fever", "data/fever/{split}.jsonl", "train", two_way=True)
    dev = data.read("seq2seq", "data/nq", "val")

Each reader returns `Example(id, source, targets, gold_titles, label)` and raises `DataError`
(one line naming the file and line, and for a missing file where the data comes from). A new
task (NQ, TriviaQA, MS MARCO, ...) is one module with a reader `(path, split, **options)` and
one entry in `READERS`.
"""

import os
from typing import Callable, Dict, List

from rag_jax.data import fever
from rag_jax.data import seq2seq
from rag_jax.data.core import DataError, Example, words

# kind -> reader(path, split, **options) -> list[Example]
READERS: Dict[str, Callable[..., List[Example]]] = {
    "fever": fever.read_split,        # path: a directory of {split}.jsonl or a {split} pattern
    "seq2seq": seq2seq.read_seq2seq,  # path: a directory of {split}.source / {split}.target
}

__all__ = ["DataError", "Example", "READERS", "read", "words"]


def read(kind: str, path: str | os.PathLike, split: str, **options) -> List[Example]:
  """The examples of one split of a task.

  Args:
    kind: a key of `READERS` ("fever", "seq2seq").
    path: where the task's files are, as that reader takes it (see `READERS`).
    split: e.g. "train", "dev".
    **options: the reader's own (fever: `two_way`, `label_words`).

  Raises:
    ValueError: an unknown kind.
    DataError: the reader's, for a missing or malformed file.
  """
  if kind not in READERS:
    raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(READERS)}")
  return READERS[kind](path, split, **options)
