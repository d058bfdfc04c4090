"""The search backends of the retrieval index by name: maximum inner product search over
passage embeddings.

Every backend keeps the contract of rag_jax.index.backend:

  search(queries [B, D], k) -> (scores [B, k] float32, ids [B, k] int64)   numpy, best first
  params() -> dict                                                          JSON-able settings

  * `exact` (index/exact.py): on-device matmul and an exact top-k, chunked over passages so
    that only a [B, chunk] score block exists at a time; optionally sharded over the devices
    of a mesh (the layout: index/ondevice.py). It is the reference the others are measured
    against (`backend.measure_recall`).
  * `approx` (index/approx.py): the same with `jax.lax.approx_max_k` per chunk (TPU-KNN;
    exact on CPU).
  * `scann` (index/scann_search.py): ScaNN on the host (tree partitioning, anisotropic
    hashing, exact rescoring), parameters chosen from the data size unless given; saved to
    and loaded from a directory.
  * `faiss_hnsw` (index/faiss_hnsw.py): a faiss HNSW graph, when the `faiss` extra is
    installed.

`BACKENDS` maps a name to its class and `build(name, embeddings, **params)` makes one;
`build(name, embeddings, **backend.params())` rebuilds the same configuration.
"""

from rag_jax.index import approx
from rag_jax.index import exact
from rag_jax.index import faiss_hnsw
from rag_jax.index import scann_search

BACKENDS = {cls.name: cls for cls in (exact.ExactSearch, approx.ApproxSearch,
                                      scann_search.ScannSearch, faiss_hnsw.FaissHnswSearch)}


# The library each host backend needs (imported by `require`); the on-device ones need jax only.
_IMPORTS = {"scann": scann_search.import_scann, "faiss_hnsw": faiss_hnsw.import_faiss}


def require(name: str) -> None:
  """Checks, before any work, that backend `name` exists and its library is installed:
  ValueError or MissingDependencyError (an ImportError), each with a one-line message."""
  if name not in BACKENDS:
    raise ValueError(f"unknown search backend {name!r} (expected one of {sorted(BACKENDS)})")
  if name in _IMPORTS:
    _IMPORTS[name]()


def build(name: str, embeddings, **params):
  """The backend `name` (a key of `BACKENDS`) over embeddings [N, D], with its parameters."""
  require(name)
  return BACKENDS[name](embeddings, **params)
