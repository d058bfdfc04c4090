"""A faiss HNSW graph as a search backend, on the host, when the `faiss` extra is installed.

faiss is imported only when a graph is built (`import_faiss`), so that the other backends work
without it.

Shapes: N = rows, D = dim, B = queries, k = wanted.
"""

from typing import Any, Dict, Optional

import numpy as np

from rag_jax.index import backend


def import_faiss():
  """The faiss module, or a MissingDependencyError with a one-line message."""
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise backend.MissingDependencyError(
        "FaissHnswSearch needs faiss, which is not installed; install the faiss extra: "
        "pip install 'rag_jax[faiss]'") from None
  return faiss


class FaissHnswSearch:
  """A faiss HNSW graph (Malkov & Yashunin 2018) under the inner product, on the host.

  Needs the `faiss` extra (`pip install 'rag_jax[faiss]'`); without it, construction raises
  `backend.MissingDependencyError`.
  """

  name = "faiss_hnsw"

  def __init__(self, embeddings, *, m: int = 32, ef_construction: int = 200,
               ef_search: int = 128, measured_recall: Optional[float] = None):
    """
    Args:
      embeddings: [N, D] float; copied into faiss as float32.
      m: graph neighbours per node.
      ef_construction: candidate list size while building.
      ef_search: candidate list size while searching (raised to k for larger k).
      measured_recall: a recall measured earlier for this configuration, kept as a record.
    """
    faiss = import_faiss()
    self.num, self.dim = backend.check_embeddings(embeddings)
    self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
    self.measured_recall = measured_recall
    self._index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
    self._index.hnsw.efConstruction = ef_construction
    self._index.add(np.ascontiguousarray(np.asarray(embeddings, np.float32)))

  def __len__(self) -> int:
    return self.num

  def search(self, queries, k: int) -> backend.Result:
    """queries [B, D] -> scores [B, k] float32, ids [B, k] int64, best first."""
    backend.check_query(queries, k, self.num, self.dim)
    self._index.hnsw.efSearch = max(self.ef_search, int(k))
    scores, ids = self._index.search(np.ascontiguousarray(np.asarray(queries, np.float32)),
                                     int(k))
    ids = np.asarray(ids, np.int64)
    return np.where(ids < 0, -np.inf, scores).astype(np.float32), ids

  def params(self) -> Dict[str, Any]:
    return {"m": self.m, "ef_construction": self.ef_construction,
            "ef_search": self.ef_search, "measured_recall": self.measured_recall}
