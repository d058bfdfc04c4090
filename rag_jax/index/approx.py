"""Approximate maximum inner product search on device: `jax.lax.approx_max_k` per chunk
(TPU-KNN), in the chunked and sharded layout of `ExactSearch` (rag_jax.index.ondevice).

Shapes: B = queries, D = dim, N = rows, C = a chunk's rows, k = wanted.
"""

import functools
from typing import Any, Dict, Optional, Tuple

import jax
from jax.sharding import Mesh

from rag_jax.index import ondevice

Array = jax.Array


class ApproxSearch(ondevice.OnDeviceSearch):
  """Approximate top-k with `jax.lax.approx_max_k` (TPU-KNN, Chern et al. 2022).

  On TPU the partial reduction fuses with the matmul; on CPU and GPU it is an exact top-k.
  Chunking and sharding are as in `ExactSearch`. On TPU each chunk's scores go to
  `approx_max_k` whole (no block maxima: its partial reduction is what it is for); elsewhere
  through block maxima, as in `ExactSearch`. The per-chunk candidates are merged exactly, so
  the recall is at least about `recall_target` per chunk. `measured_recall` is for the
  caller to record what `backend.measure_recall` gave against `ExactSearch`; `params()`
  carries it.
  """

  name = "approx"

  def __init__(self, embeddings, *, recall_target: float = 0.95,
               chunk_size: Optional[int] = None, dtype="float32", mesh: Optional[Mesh] = None,
               axis_name: ondevice.AxisName = "data", measured_recall: Optional[float] = None):
    """
    Args:
      embeddings, chunk_size, dtype, mesh, axis_name: as for `ExactSearch`.
      recall_target: the expected recall of `approx_max_k`, in (0, 1].
      measured_recall: a recall measured earlier for this configuration, kept as a record.
    """
    if not 0.0 < recall_target <= 1.0:
      raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    self.recall_target, self.chunk_size = float(recall_target), chunk_size
    self.dtype = ondevice.check_dtype(dtype)
    self.axis_name = ondevice.check_axes(axis_name, mesh)
    self.measured_recall = measured_recall
    select = functools.partial(_approx_max_k, recall_target=self.recall_target)
    # Off TPUs approx_max_k is an exact top-k, and block maxima make it cheaper, as for exact.
    self._index = ondevice.ChunkedIndex(embeddings, select=select,
                                        blocked=jax.default_backend() != "tpu",
                                        chunk_size=chunk_size, dtype=self.dtype, mesh=mesh,
                                        axis_name=self.axis_name)
    self.num_shards = self._index.num_shards

  def params(self) -> Dict[str, Any]:
    return {"recall_target": self.recall_target, "chunk_size": self.chunk_size,
            "dtype": self.dtype, "axis_name": self.axis_name,
            "measured_recall": self.measured_recall}


def _approx_max_k(scores: Array, k: int, *, recall_target: float) -> Tuple[Array, Array]:
  """approx_max_k as an `ondevice.Select`: scores [B, C] -> values, columns [B, k]."""
  return jax.lax.approx_max_k(scores, k, recall_target=recall_target)
