"""The on-device layout that `ExactSearch` and `ApproxSearch` share: chunked, sharded top-k.

The embeddings [N, D] are held on device as a tuple of chunks (per device, when they are
sharded by rows over mesh axes), and one jitted program scores the chunks in turn, merging
each chunk's top k into a running best: memory beyond the embeddings is O(B * chunk) scores.
`ChunkedIndex` holds the chunks and the jitted search; `OnDeviceSearch` is what the two
backends built on it answer besides `search` (the device arrays, and the same search as a
pure function to call inside another jit).

Shapes: B = queries, D = dim, N = rows, C_i = rows of chunk i (per shard), k = wanted.
"""

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rag_jax import sharding
from rag_jax.index import backend

Array = jax.Array
# The mesh axis, or axes, the passages are split over (`sharding.index_axes(mesh)`: all).
AxisName = Union[str, Tuple[str, ...]]

DTYPES = ("float32", "bfloat16")

try:  # jax >= 0.6 exports shard_map at the top level; older versions keep it experimental.
  _shard_map = jax.shard_map
except AttributeError:
  from jax.experimental.shard_map import shard_map as _shard_map


# ------------------------------------------------------------------------------------------
# Argument checks of the on-device backends.


def check_dtype(dtype) -> str:
  """The dtype's name, one of DTYPES (jnp dtypes accepted), or a ValueError."""
  name = jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {name}")
  return name


def check_axes(axis_name: Union[str, Sequence[str]], mesh: Optional[Mesh]) -> AxisName:
  """axis_name as a str or a tuple of mesh axes (a JSON list from `params()` too), checked
  against the mesh."""
  axes = axis_name if isinstance(axis_name, str) else tuple(axis_name)
  names = (axes,) if isinstance(axes, str) else axes
  if not names or not all(isinstance(a, str) for a in names):
    raise ValueError(f"axis_name must be a mesh axis or a tuple of them, got {axis_name!r}")
  if mesh is not None and any(a not in mesh.axis_names for a in names):
    raise ValueError(f"axis_name {axes!r} is not an axis (or axes) of the mesh "
                     f"{tuple(mesh.axis_names)}")
  return axes


# ------------------------------------------------------------------------------------------
# The chunked top-k.

# select(scores [B, C], k) -> (values [B, k], column indices [B, k]), best first.
Select = Callable[[Array, int], Tuple[Array, Array]]


def _merge(vals: Array, ids: Array, k: int) -> Tuple[Array, Array]:
  """The best k of candidate columns: vals, ids [B, M] -> [B, k] each, best first."""
  top, cols = jax.lax.top_k(vals, k)
  return top, jnp.take_along_axis(ids, cols, axis=1)


# How the on-device search is laid out, and why (what was measured, on which machines:
# benchmarks/RESULTS.md, "Figures moved out of code comments"). The embeddings are held as a
# tuple of chunks, one device buffer each (per device when sharded), and one jitted program
# scores them in turn, the loop unrolled; `ExactSearch` selects each chunk's top k through
# block maxima. The reasons:
# - a matmul over a slice of one big buffer is slower than over a buffer of its own: XLA:CPU
#   copies the slice out first (at a static offset or a traced one), and on GPUs a slice at a
#   traced offset (a scan) is copied before its matmul, multiplying the bytes a search moves;
# - a top-k can cost more than the matmul that makes its scores: on the CPU for skinny
#   vectors, and on GPUs, where XLA's top-k gives each row of its input one thread block, so
#   that a wide score row is one block's work; block maxima shrink what the top-k reads;
# - on GPUs, fewer and larger chunks were faster (GPU_CHUNKS).
SELECT_BLOCK = 128      # columns per block in `_blocked_select`
MAX_CHUNKS = 64         # more chunks than this: larger ones (each adds compile time per (B, k))
GPU_CHUNKS = 16         # chunk_size=None on a GPU: this many chunks per device
CPU_CHUNK = 65536       # chunk_size=None elsewhere: rows per chunk
# Whether chunk_size=None means GPU_CHUNKS chunks. None: on GPUs. (Tests force it.)
GPU_LAYOUT: Optional[bool] = None


def _gpu_layout() -> bool:
  return jax.default_backend() == "gpu" if GPU_LAYOUT is None else GPU_LAYOUT


def _chunk_rows(rows: int, chunk_size: Optional[int], gpu: bool) -> int:
  """Rows per chunk for `rows` rows on a device: chunk_size (None: CPU_CHUNK rows, or on the
  GPU layout GPU_CHUNKS chunks if that makes them larger), raised where needed to keep at
  most MAX_CHUNKS chunks (21M rows: chunks of 328k, 168 MB of scores for 128 queries). A
  chunk size we choose is a multiple of SELECT_BLOCK, so that no score block needs padding."""
  if chunk_size is None:
    chunk_size = max(CPU_CHUNK, -(-rows // GPU_CHUNKS)) if gpu else CPU_CHUNK
  raised = -(-rows // MAX_CHUNKS)
  if raised > chunk_size or gpu:
    chunk_size = -(-max(chunk_size, raised) // SELECT_BLOCK) * SELECT_BLOCK
  return max(1, min(chunk_size, rows))


def _blocked_select(scores: Array, k: int, select: Select) -> Tuple[Array, Array]:
  """select(scores, k) through block maxima, for rows much wider than k.

  The best k entries lie in the k blocks (of SELECT_BLOCK columns) with the highest maxima:
  an entry x in a block outside them has k blocks' maxima at or above it, each of which
  outranks x (a tie goes to the lower column, and such a block comes first). So: the max of
  each block, the top k blocks, then the top k of their k * SELECT_BLOCK entries, taken in
  column order. With `lax.top_k` as select this is select(scores, k) exactly, ties to the
  lower column included (tests/test_search.py); with an approximate select, ties may go
  either way, as they may in select itself.
  """
  batch, cols = scores.shape
  block = SELECT_BLOCK
  blocks = -(-cols // block)
  padded = jnp.pad(scores, ((0, 0), (0, blocks * block - cols)),
                   constant_values=-jnp.inf).reshape(batch, blocks, block)
  _, best_blocks = select(padded.max(axis=2), k)                                 # [B, k]
  best_blocks = jnp.sort(best_blocks, axis=1)
  entries = jnp.take_along_axis(padded, best_blocks[:, :, None], axis=1)         # [B, k, m]
  columns = best_blocks[:, :, None] * block + jnp.arange(block, dtype=jnp.int32)
  top, pick = select(entries.reshape(batch, k * block), k)
  return top, jnp.take_along_axis(columns.reshape(batch, k * block), pick, axis=1)


def _after(queries: Array, best: Optional[Tuple[Array, Array]]) -> Array:
  """queries, unchanged, but computed after `best`: a data dependence that orders the chunks.

  Without it XLA may run every chunk's matmul before any top-k and hold all [B, C_i] score
  blocks at once: XLA:CPU did, O(B * N) temporaries instead of O(B * max C_i) (the figures:
  benchmarks/RESULTS.md). `lax.optimization_barrier` did not order them: XLA:CPU forwards
  parameters through it. The term added is 0.0: row ids here are never negative.
  """
  if best is None:
    return queries
  return queries + (best[1][0, 0] < 0).astype(queries.dtype)


def _chunked_top_k(queries: Array, chunks: Tuple[Array, ...], k: int, *, select: Select,
                   precision, blocked: bool, row_offset=0, num_valid: Optional[int] = None
                   ) -> Tuple[Array, Array]:
  """Top-k of queries . emb^T, where emb is the chunks [C_i, D] one after another.

  Args:
    queries: [B, D] in the embeddings' dtype.
    chunks: the rows (all of them, or one device's shard), scored one chunk at a time:
      each chunk's matmul waits for the previous chunk's merge, so memory beyond the chunks
      is O(B * max C_i).
    k: wanted candidates; min(k, R) come back, R the rows in all chunks.
    select: the per-chunk top-k (exact or approximate); chunks are merged exactly.
    precision: matmul precision.
    blocked: select through block maxima (`_blocked_select`) where a chunk has at least
      8k blocks, i.e. where the maxima cut the top-k's work by 8 or more.
    row_offset: global row number of the first chunk's row 0 (a shard's offset; may be
      traced).
    num_valid: rows with a global number >= this are padding and score -inf.
  Returns:
    scores [B, min(k, R)] float32 and global row ids [B, min(k, R)] int32, best first.
  """
  k = min(k, sum(c.shape[0] for c in chunks))
  best, start = None, 0
  for chunk in chunks:
    s = jnp.einsum("bd,cd->bc", _after(queries, best), chunk, precision=precision,
                   preferred_element_type=jnp.float32)                           # [B, C]
    ids = row_offset + start + jnp.arange(chunk.shape[0], dtype=jnp.int32)       # [C]
    if num_valid is not None:
      s = jnp.where(ids[None, :] < num_valid, s, -jnp.inf)
    kc = min(k, chunk.shape[0])
    use_blocks = blocked and chunk.shape[0] >= 8 * SELECT_BLOCK * kc
    vals, cols = _blocked_select(s, kc, select) if use_blocks else select(s, kc)
    found = vals, ids[cols]
    # Running best first: on equal scores top_k keeps the lower row, as a stable sort does.
    best = found if best is None else _merge(
        *(jnp.concatenate(pair, axis=1) for pair in zip(best, found)),
        min(k, best[0].shape[1] + found[0].shape[1]))
    start += chunk.shape[0]
  return best


def _to_host(scores: Array, ids: Array) -> backend.Result:
  return np.asarray(scores, np.float32), np.asarray(ids).astype(np.int64)


class ChunkedIndex:
  """Embeddings on device (one device, or row-sharded over mesh axes) and a jitted top-k.

  Not a backend: `ExactSearch` and `ApproxSearch` each hold one and differ only in `select`
  and in whether it goes through block maxima (`blocked`).

  Layout: shard s (the devices' linear index over `axis_name`, row-major in its order, as
  `lax.axis_index` counts) holds global rows [s * rows_per_shard, (s + 1) * rows_per_shard),
  the last shards padded with zero rows that never win. `embeddings` is a tuple of chunks;
  chunk i is [num_shards * C_i, D], its rows sharded over `axis_name`, shard s's block being
  rows [a_i, a_i + C_i) of that shard's rows.
  """

  def __init__(self, embeddings, *, select: Select, blocked: bool, chunk_size: Optional[int],
               dtype: str, mesh: Optional[Mesh], axis_name: AxisName):
    self.num, self.dim = backend.check_embeddings(embeddings)
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
      raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    self.dtype = jnp.dtype(dtype)
    self.num_shards = 1 if mesh is None else sharding.axes_size(mesh, axis_name)
    self.rows_per_shard = per_shard = -(-self.num // self.num_shards)
    self.chunk_rows = _chunk_rows(per_shard, chunk_size, _gpu_layout())
    bounds = [(i, min(i + self.chunk_rows, per_shard))
              for i in range(0, per_shard, self.chunk_rows)]
    # HIGHEST keeps float32 scores float32 on TPU/GPU, where the default rounds to bfloat16
    # passes; bfloat16 embeddings were rounded on purpose and accumulate in float32 anyway.
    precision = (jax.lax.Precision.HIGHEST if self.dtype == jnp.float32
                 else jax.lax.Precision.DEFAULT)
    top_k = functools.partial(_chunked_top_k, select=select, precision=precision,
                              blocked=blocked)
    if mesh is None:
      if isinstance(embeddings, jax.Array):
        self.embeddings = tuple(embeddings[a:b].astype(self.dtype) for a, b in bounds)
      else:
        self.embeddings = tuple(jax.device_put(np.asarray(embeddings[a:b], self.dtype))
                                for a, b in bounds)
      fn = top_k
    else:
      self.embeddings = tuple(_place_sharded(embeddings, self.dtype, mesh, axis_name,
                                             per_shard, a, b) for a, b in bounds)
      fn = functools.partial(_sharded_top_k, top_k=top_k, num_valid=self.num,
                             per_shard=per_shard, mesh=mesh, axis_name=axis_name)
    self.top_k_fn = fn  # (queries, chunks, k) -> (scores, ids): pure, for any jit
    self._fn = jax.jit(fn, static_argnames="k")

  def search(self, queries, k: int) -> backend.Result:
    backend.check_query(queries, k, self.num, self.dim)
    queries = jnp.asarray(queries).astype(self.dtype)
    return _to_host(*self._fn(queries, self.embeddings, k=int(k)))


def _place_sharded(embeddings, dtype, mesh: Mesh, axis_name: AxisName, per_shard: int,
                   first: int, stop: int) -> Array:
  """Rows [first, stop) of every device's shard, as one [shards * (stop - first), D] array
  sharded by rows over `axis_name` (one axis or several, see `ChunkedIndex`).

  Shard d's rows are [d * per_shard, (d + 1) * per_shard) of embeddings [N, D]; rows
  past N are zeros, masked at search time. Each device's block is read and padded on its
  own, so the host never holds a padded copy of the whole matrix (which may be a memory map).
  Abstract embeddings (a jax.ShapeDtypeStruct) give the abstract array: an index of shapes
  alone, for compiling a step that searches it ahead of time (rag_jax.compile).
  """
  num, dim = embeddings.shape
  shards, rows = sharding.axes_size(mesh, axis_name), stop - first
  if isinstance(embeddings, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((shards * rows, dim), dtype,
                                sharding=NamedSharding(mesh, P(axis_name, None)))

  def block(index):
    start, _, _ = index[0].indices(shards * rows)
    lo = start // rows * per_shard + first
    out = np.zeros((rows, dim), dtype)
    real = np.asarray(embeddings[min(lo, num):min(lo + rows, num)], dtype)
    out[:len(real)] = real
    return out

  return jax.make_array_from_callback((shards * rows, dim),
                                      NamedSharding(mesh, P(axis_name, None)), block)


def _sharded_top_k(queries: Array, chunks: Tuple[Array, ...], k: int, *, top_k,
                   num_valid: int, per_shard: int, mesh: Mesh, axis_name: AxisName
                   ) -> Tuple[Array, Array]:
  """Each shard's top-k with global row ids, then the best k of all shards' candidates."""

  def local(queries, chunks):
    # Over several axes, axis_index is the row-major linear index, as the rows are placed.
    offset = jax.lax.axis_index(axis_name) * per_shard
    return top_k(queries, chunks, k, row_offset=offset, num_valid=num_valid)

  # The candidates come out laid side by side, [B, shards * k'] sharded over columns; the
  # merge below all-gathers them. (An all_gather inside shard_map would be "varying" to its
  # replication check, and all_gather_invariant is not in every jax version.)
  vals, ids = _shard_map(local, mesh=mesh, in_specs=(P(), P(axis_name, None)),
                         out_specs=(P(None, axis_name), P(None, axis_name)))(queries, chunks)
  vals, ids = _merge(vals, ids, k)
  # Padding rows score -inf and lose to any of the >= k real ones; kept as -1 all the same.
  return vals, jnp.where(ids < num_valid, ids, -1)


# ------------------------------------------------------------------------------------------
# What the on-device backends share.


class OnDeviceSearch:
  """What the two on-device backends share: they search through a `ChunkedIndex`.

  Besides `search`, `top_k(queries, device_arrays, k)` is the same search as a pure function
  to call inside the caller's own jit, the embeddings passed as an argument (not closed over,
  which would make them constants of the caller's program):

      arrays = index.device_arrays
      step = jax.jit(lambda params, arrays, batch: ... index.top_k(q, arrays, k) ...)
      step(params, arrays, batch)

  Global row g lives on shard g // rows_per_shard (see `ChunkedIndex` for the layout).
  """
  _index: ChunkedIndex

  def __len__(self) -> int:
    return self._index.num

  def search(self, queries, k: int) -> backend.Result:
    """queries [B, D] -> scores [B, k] float32, ids [B, k] int64, best first."""
    return self._index.search(queries, k)

  @property
  def device_arrays(self) -> Tuple[Array, ...]:
    """The embeddings as held on device: a tuple of chunks [num_shards * C_i, D] in the
    search dtype, each sharded by rows over the mesh's `axis_name` (when there is a mesh)."""
    return self._index.embeddings

  @property
  def rows_per_shard(self) -> int:
    """Rows of the [N, D] embeddings each shard holds: row g is on shard g // this."""
    return self._index.rows_per_shard

  def top_k(self, queries: Array, arrays: Tuple[Array, ...], k: int) -> Tuple[Array, Array]:
    """`search` as a traceable function, for use inside another jit.

    Args:
      queries: [B, D] (cast to the search dtype).
      arrays: `device_arrays` (or arrays of the same shapes and shardings).
      k: a Python int, 1 <= k <= len(self).
    Returns:
      scores [B, k] float32 and row ids [B, k] int32, best first; what `search` returns.
    """
    backend.check_query(queries, k, self._index.num, self._index.dim)
    return self._index.top_k_fn(jnp.asarray(queries).astype(self._index.dtype), arrays,
                                k=int(k))
