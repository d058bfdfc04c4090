"""Exact maximum inner product search on device: the reference the other backends are measured
against (`backend.measure_recall`).

Shapes: B = queries, D = dim, N = rows, k = wanted.
"""

from typing import Any, Dict, Optional

import jax
from jax.sharding import Mesh

from rag_jax.index import ondevice


class ExactSearch(ondevice.OnDeviceSearch):
  """Exact maximum inner product search on device; the reference for the other backends.

  The rows are scored a chunk at a time, and each chunk's top k is found through block
  maxima (`ondevice._blocked_select`). Memory beyond the embeddings is O(B * chunk_size)
  scores. With a mesh, the embeddings are sharded by rows over `axis_name` (padded to a
  multiple of its size with rows that never win), each device finds its local top-k under
  `shard_map`, and the shards' candidates are merged; the answer is the one-device answer.
  Every search is jitted, once per (B, k). `top_k` runs the same inside a caller's jit (see
  `ondevice.OnDeviceSearch`).
  """

  name = "exact"

  def __init__(self, embeddings, *, chunk_size: Optional[int] = None, dtype="float32",
               mesh: Optional[Mesh] = None, axis_name: ondevice.AxisName = "data"):
    """
    Args:
      embeddings: [N, D] float (numpy, memory map or jax array); N must stay below 2**31.
        Copied to the device chunk by chunk; a jax array is copied too (unless it is one
        chunk), so drop it afterwards if device memory is tight.
      chunk_size: passages scored at once (per device when sharded); None picks it from the
        size and the device (`ondevice._chunk_rows`, which also raises it to keep at most
        MAX_CHUNKS chunks). Memory beyond the embeddings is O(B * chunk).
      dtype: "float32" or "bfloat16" (jnp dtypes accepted): how the embeddings are stored
        and multiplied; scores accumulate in float32 either way.
      mesh: shard the embeddings over this mesh's `axis_name` axes; None for one device.
      axis_name: the mesh axis the passages are split over, or a tuple of axes (e.g.
        `sharding.index_axes(mesh)`: every device of a (data, fsdp, model) mesh holds
        1/size of the rows).
    """
    self.chunk_size, self.dtype = chunk_size, ondevice.check_dtype(dtype)
    self.axis_name = ondevice.check_axes(axis_name, mesh)
    self._index = ondevice.ChunkedIndex(embeddings, select=jax.lax.top_k, blocked=True,
                                        chunk_size=chunk_size, dtype=self.dtype, mesh=mesh,
                                        axis_name=self.axis_name)
    self.num_shards = self._index.num_shards

  def params(self) -> Dict[str, Any]:
    """The keyword arguments that rebuild this search. The mesh is placement, not a
    parameter: it does not change the results, and `num_shards` says what it was."""
    return {"chunk_size": self.chunk_size, "dtype": self.dtype, "axis_name": self.axis_name}
