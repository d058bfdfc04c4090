"""BM25 over an index's passages, for the paper's ablation of the dense retriever (Lewis et al.,
2020, Table 6: "BM25" in place of RAG's learned retriever, its scores as p(z|x)'s logits).

    retriever = BM25Search(index.passages)
    scores, ids = retriever.search(["where does the alpha river end?"], k=5)

The scoring is bm25s's (Lucene's BM25, k1 = 1.5, b = 0.75), over `title text` of each passage
(as DPR's BM25 baseline indexes them), with bm25s's tokenizer: lowercased words of two or more
letters, English stop words dropped, no stemming. Unlike the dense backends of
`rag_jax.index.search` it takes question texts, not vectors, so it is a retrieval mode of its
own rather than one of them.
"""

import logging
from typing import Sequence, Tuple

import numpy as np


def passage_text(passage) -> str:
  """What BM25 indexes of a passage: its title, then its text."""
  return f"{passage['title']} {passage['text']}"


class BM25Search:
  """A bm25s index of `passages` (a sequence of {"title", "text"}, e.g. a PassageStore)."""

  def __init__(self, passages):
    import bm25s  # pylint: disable=import-outside-toplevel  (only this mode needs it)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each index at DEBUG
    self._bm25s = bm25s
    self.count = len(passages)
    self._retriever = bm25s.BM25()
    self._retriever.index(self._tokenize([passage_text(passages[i]) for i in range(self.count)]),
                          show_progress=False)

  def _tokenize(self, texts: Sequence[str]):
    return self._bm25s.tokenize(list(texts), stopwords="en", show_progress=False)

  def search(self, questions: Sequence[str], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The top k passages of each question: scores [B, k] float32 and ids [B, k] int64, best
    first (a question that shares no word with any passage scores 0 everywhere)."""
    if not 1 <= k <= self.count:
      raise ValueError(f"k={k}: expected 1 to the index's {self.count} passages")
    ids, scores = self._retriever.retrieve(self._tokenize(questions), k=k, show_progress=False,
                                           n_threads=1)
    return np.asarray(scores, np.float32), np.asarray(ids, np.int64)
