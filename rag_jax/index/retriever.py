"""A live retriever whose index can be swapped between requests (new knowledge, no retraining).

    retriever = Retriever(query_encoder, saved.load_index("wiki-2020"))
    hits = retriever.retrieve(["Who is the president of France?"], k=5)
    retriever.swap(saved.load_index("wiki-2024"))   # the next request sees the new knowledge

`swap` replaces the index reference under a lock; a request takes its reference once, at the
start, so searches already running finish on the old index and no request ever mixes the two
(ids from one, passages from the other). Nothing about the models is reloaded.

What a request may ask is checked the same way for every caller (`rag_jax.ask`, `python -m
rag_jax.index search`): an empty or blank question is a `QuestionError`, k above the index's
passage count is refused (`check_k`), and a question longer than the encoder's max_length is
truncated to it, with a note through `log`.
"""

import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from rag_jax import errors
from rag_jax.encoder import TextEncoder
from rag_jax.index import saved


class QuestionError(ValueError):
  """A question that cannot be searched with (none, empty or blank); one line says which."""


def check_questions(questions: Sequence[str]) -> List[str]:
  """The questions as a list; none at all, or an empty or blank one, is a QuestionError (an
  encoder would still find passages for it, unrelated to anything)."""
  questions = list(questions)
  if not questions:
    raise QuestionError("no questions")
  for number, question in enumerate(questions, 1):
    if not isinstance(question, str):
      raise QuestionError(f"question {number} is a {type(question).__name__}, not text")
    if not question.strip():
      raise QuestionError(f"question {number} is {'blank' if question else 'empty'}")
  return questions


def check_k(k: int, count: int) -> None:
  """k passages can be retrieved from an index of `count`: k above it is refused rather than
  quietly cut to the whole index (ValueError, one line)."""
  if k < 1:
    raise errors.UsageError(f"k must be positive, got {k}")
  if k > count:
    raise errors.UsageError(f"k={k} exceeds the index's {count} passages")


def truncation_notes(encoder: TextEncoder, questions: Sequence[str]) -> List[str]:
  """A note for each question longer than `encoder.max_length` tokens, which the encoder
  reads only the start of."""
  lengths = [len(ids) for ids in encoder.tokenizer(list(questions), verbose=False)["input_ids"]]
  return [f"note: question {number} is {n} tokens long; truncated to the encoder's "
          f"max_length, {encoder.max_length}"
          for number, n in enumerate(lengths, 1) if n > encoder.max_length]


class Retriever:
  """Question encoder + a swappable saved index."""

  def __init__(self, encoder: TextEncoder, index: saved.Index):
    saved.check_encoder(index.manifest, encoder)
    self.encoder = encoder
    self._index = index
    self._lock = threading.Lock()

  @property
  def index(self) -> saved.Index:
    with self._lock:
      return self._index

  def swap(self, index: saved.Index) -> saved.Index:
    """Makes `index` the one new requests use; returns the previous one."""
    saved.check_encoder(index.manifest, self.encoder)
    with self._lock:
      old, self._index = self._index, index
    return old

  def retrieve(self, questions: Sequence[str], k: int = 5,
               log: Optional[Callable[[str], Any]] = None) -> List[Dict[str, Any]]:
    """questions -> per question {"question", "hits": [{"id", "row", "score", "title",
    "text"}], "vectors": the hits' document vectors [k, D], "index": the directory that
    answered}.

    Raises QuestionError for no, empty or blank questions, ValueError for k < 1 or above the
    index's passage count. A question the encoder truncates is logged (`truncation_notes`)
    through `log`, if given.
    """
    questions = check_questions(questions)
    index = self.index  # one index for the whole request, whatever swaps happen meanwhile
    check_k(k, len(index.passages))
    if log is not None:
      for note in truncation_notes(self.encoder, questions):
        log(note)
    scores, ids = index.search(self.encoder.encode(questions), k)
    out = []
    for q, row_scores, row_ids in zip(questions, np.asarray(scores), np.asarray(ids)):
      hits = []
      for s, i in zip(row_scores, row_ids):
        p = index.passages[int(i)]
        hits.append({"id": p["id"], "row": int(i), "score": float(s), "title": p["title"],
                     "text": p["text"]})
      out.append({"question": q, "hits": hits, "index": str(index.directory),
                  "vectors": index.embeddings[np.asarray(row_ids, np.int64)]})
    return out
