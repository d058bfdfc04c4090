"""A live retriever whose index can be swapped between requests (new knowledge, no retraining).

    retriever = Retriever(query_encoder, saved.load_index("wiki-2020"))
    hits = retriever.retrieve(["Who is the president of France?"], k=5)
    retriever.swap(saved.load_index("wiki-2024"))   # the next request sees the new knowledge

`swap` replaces the index reference under a lock; a request takes its reference once, at the
start, so searches already running finish on the old index and no request ever mixes the two
(ids from one, passages from the other). Nothing about the models is reloaded.
"""

import threading
from typing import Any, Dict, List, Sequence

import numpy as np

from rag_jax.encoder import TextEncoder
from rag_jax.index import saved


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

  def retrieve(self, questions: Sequence[str], k: int = 5) -> List[Dict[str, Any]]:
    """questions -> per question {"question", "hits": [{"id", "score", "title", "text"}],
    "vectors": the hits' document vectors [k, D], "index": the directory that answered}."""
    index = self.index  # one index for the whole request, whatever swaps happen meanwhile
    scores, ids = index.search(self.encoder.encode(list(questions)), k)
    out = []
    for q, row_scores, row_ids in zip(questions, np.asarray(scores), np.asarray(ids)):
      hits = []
      for s, i in zip(row_scores, row_ids):
        p = index.passages[int(i)]
        hits.append({"id": p["id"], "score": float(s), "title": p["title"], "text": p["text"]})
      out.append({"question": q, "hits": hits, "index": str(index.directory),
                  "vectors": index.embeddings[np.asarray(row_ids, np.int64)]})
    return out
