"""The passage index on the training mesh: the exact search the `device` training step runs.

The frozen passage vectors and their pre-tokenized passages are split by rows over every mesh
axis; the step searches them with the current query encoder and gathers the winners' rows,
with no host round trip (rag_jax.train.step).

Shapes: N = passages, N' = N padded to a whole number of rows per shard, D = retrieval dim,
P = a passage's generator tokens, B = queries, Z = docs retrieved (k).
"""

from typing import Any, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rag_jax import sharding
from rag_jax.index import exact as exact_lib

Array = jax.Array


@flax.struct.dataclass
class DeviceIndex:
  """Frozen passage vectors and tokens on the mesh, rows split over every mesh axis.

  The vectors are an `ExactSearch` over the whole mesh holding them as one chunk per shard, so
  that row r of each array is passage r (padding rows past N never win); shard s holds rows
  [s * rows_per_shard, (s + 1) * rows_per_shard). The search is the backend's own, run
  inside the step; the tokens are placed the same way, for `gather`.
  """
  embeddings: Array        # [N', D] in the index dtype
  tokens: Array            # [N', P] int32
  lengths: Array           # [N'] int32
  exact: exact_lib.ExactSearch = flax.struct.field(pytree_node=False)
  axes: Tuple[str, ...] = flax.struct.field(pytree_node=False)
  mesh: Any = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, mesh, embeddings: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
             dtype="float32") -> "DeviceIndex":
    """Places [N, D] vectors, [N, P] tokens and [N] lengths on `mesh`, each device reading
    only its own rows from the host arrays (which may be memory maps)."""
    axes = sharding.index_axes(mesh)
    shards = sharding.axes_size(mesh, axes)
    rows = -(-len(embeddings) // shards)
    exact = exact_lib.ExactSearch(embeddings, chunk_size=rows, dtype=dtype, mesh=mesh,
                                  axis_name=axes)
    (vectors,) = exact.device_arrays  # one chunk per shard: row r is passage r

    def place(host):
      shape = (rows * shards,) + host.shape[1:]

      def block(index):
        start, stop, _ = index[0].indices(shape[0])
        out = np.zeros((stop - start,) + host.shape[1:], np.int32)
        real = np.asarray(host[min(start, len(host)):min(stop, len(host))], np.int32)
        out[:len(real)] = real
        return out
      return jax.make_array_from_callback(
          shape, NamedSharding(mesh, P(axes, *([None] * (host.ndim - 1)))), block)
    return cls(vectors, place(tokens), place(lengths), exact, axes, mesh)

  @classmethod
  def abstract(cls, mesh, num: int, dim: int, passage_length: int,
               dtype="float32") -> "DeviceIndex":
    """A DeviceIndex of `num` passages with nothing behind it: its three arrays are
    `jax.ShapeDtypeStruct`s with the shapes and shardings `create` gives them, for lowering
    and compiling the step ahead of time from shapes alone (rag_jax.compile), on any mesh,
    a topology's unattached devices included. Its search is `create`'s: an ExactSearch over
    abstract embeddings, which holds abstract chunks of the same shapes and shardings."""
    axes = sharding.index_axes(mesh)
    shards = sharding.axes_size(mesh, axes)
    rows = -(-num // shards)

    def spec(shape, dt):
      return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(
          mesh, P(axes, *([None] * (len(shape) - 1)))))

    exact = exact_lib.ExactSearch(jax.ShapeDtypeStruct((num, dim), jnp.float32),
                                  chunk_size=rows, dtype=dtype, mesh=mesh, axis_name=axes)
    (vectors,) = exact.device_arrays
    return cls(vectors, spec((rows * shards, passage_length), jnp.int32),
               spec((rows * shards,), jnp.int32), exact, axes, mesh)

  @property
  def rows_per_shard(self) -> int:
    return self.exact.rows_per_shard

  def search(self, queries: Array, k: int) -> Tuple[Array, Array]:
    """Exact top-k by inner product: [B, D] -> scores [B, k] float32, ids [B, k] int32."""
    return self.exact.top_k(queries, (self.embeddings,), k)

  def gather(self, ids: Array) -> Tuple[Array, Array, Array]:
    """Rows of the winners: ids [B, Z] -> vectors [B, Z, D] float32, tokens [B, Z, P],
    lengths [B, Z]. Each shard fills in the rows it holds, zeros elsewhere; a psum adds the
    shards' parts (exactly: one of them is non-zero)."""
    mesh, axes, rows = self.mesh, self.axes, self.rows_per_shard

    def local(ids, emb, tok, lens):
      mine = ids - _shard_index(axes) * rows
      inside = (mine >= 0) & (mine < emb.shape[0])
      mine = jnp.clip(mine, 0, emb.shape[0] - 1)
      pick = lambda table: jnp.where(
          inside.reshape(inside.shape + (1,) * (table.ndim - 1)), table[mine], 0)
      # Rows first, then the cast: casting the shard first copies all of it (on TPU).
      return tuple(jax.lax.psum(pick(t), axes) for t in (emb, tok, lens))
    embeds, tokens, lengths = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(axes, None), P(axes, None), P(axes)),
        out_specs=(P(), P(), P()))(ids, self.embeddings, self.tokens, self.lengths)
    return embeds.astype(jnp.float32), tokens, lengths


def _shard_index(axes: Tuple[str, ...]) -> Array:
  """This shard's number along the flattened `axes` (row-major, as PartitionSpec splits)."""
  return jax.lax.axis_index(axes)
