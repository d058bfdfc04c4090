"""Task readers behind one interface: `read(kind, path, split) -> list[Example]`.

    from rag_jax import data
    train = data.read("fever", "data/fever/{split}.jsonl", "train", two_way=True)
    dev = data.read("seq2seq", "data/nq", "val")

Each reader returns `Example(id, source, targets, gold_titles, label)` and raises `DataError`
(one line naming the file and line, and for a missing file where the data comes from). A new
task is one module with a reader `(path, split, **options)` and one entry in `READERS`.
"""

import os
from typing import Callable, Dict, List, Optional

from rag_jax.data import dpr
from rag_jax.data import fever
from rag_jax.data import kilt
from rag_jax.data import msmarco
from rag_jax.data import seq2seq
from rag_jax.data import tfds_qa
from rag_jax.data.core import DataError, Example, words

# kind -> reader(path, split, **options) -> list[Example]
# "a {split} pattern": a path holding `{split}`, e.g. `data/nq-{split}.qa.csv`.
READERS: Dict[str, Callable[..., List[Example]]] = {
    "fever": fever.read_split,        # path: a directory of {split}.jsonl or a {split} pattern
    "seq2seq": seq2seq.read_seq2seq,  # path: a directory of {split}.source / {split}.target
    # Open-domain QA through tfds.data_source; path: tfds's data_dir (None: its default).
    "nq_open": tfds_qa.read_nq_open,
    "trivia_qa": tfds_qa.read_trivia_qa,
    "web_questions": tfds_qa.read_web_questions,
    # DPR's QA .csv or retriever .json files; path: a {split} pattern or a dir of {split}.qa.csv
    "dpr_qa": dpr.read_split,
    "curatedtrec": dpr.read_curatedtrec,  # the same files; answers are regular expressions
    # path: a directory of the official {train,dev}_v2.1.json, eval_v2.1_public.json (.gz)
    "msmarco": msmarco.read_split,
    # SearchQA's Jeopardy questions as answer -> question, in the seq2seq layout.
    "jeopardy": seq2seq.read_seq2seq,
    "kilt": kilt.read_split,          # path: a directory of {split}.jsonl or a {split} pattern
}

__all__ = ["DataError", "Example", "READERS", "read", "words"]


def read(kind: str, path: Optional[str | os.PathLike], split: str, **options) -> List[Example]:
  """The examples of one split of a task.

  Args:
    kind: a key of `READERS` ("fever", "nq_open", "msmarco", ...).
    path: where the task's files are, as that reader takes it (see `READERS`); the tfds kinds
      take tfds's data_dir, or None for its default.
    split: e.g. "train", "dev".
    **options: the reader's own (fever: `two_way`, `label_words`; msmarco: `task`).

  Raises:
    ValueError: an unknown kind.
    DataError: the reader's, for a missing or malformed file.
  """
  if kind not in READERS:
    raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(READERS)}")
  return READERS[kind](path, split, **options)
