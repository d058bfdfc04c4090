"""Search backends of the retrieval index: maximum inner product search over passage embeddings.

Every backend answers the same calls (duck typing, no base class):

  search(queries [B, D], k) -> (scores [B, k] float32, ids [B, k] int64)   numpy, best first
  params() -> dict                                                          JSON-able settings

`ids` are row numbers into the embedding matrix [N, D] the backend was built from, `scores`
the inner products q . e (exact for every backend here except ScaNN without rescoring). A k
larger than N is a ValueError. An approximate backend that finds fewer than k rows for a query
fills the rest with id -1 and score -inf: -1 is what `PassageStore` refuses as a row, and -inf
is what `marginalize` reads as a missing document.

  * `ExactSearch`: on-device matmul and an exact top-k, chunked over passages so that only a
    [B, chunk] score block exists at a time; optionally sharded over the devices of a mesh. It
    is the reference the others are measured against (`measure_recall`).
  * `ApproxSearch`: the same with `jax.lax.approx_max_k` per chunk (TPU-KNN; exact on CPU).
  * `ScannSearch`: ScaNN on the host (tree partitioning, anisotropic hashing, exact rescoring),
    parameters chosen from the data size unless given; saved to and loaded from a directory.
  * `FaissHnswSearch`: a faiss HNSW graph, when the `faiss` extra is installed.

`BACKENDS` maps a name to its class and `build(name, embeddings, **params)` makes one;
`build(name, embeddings, **backend.params())` rebuilds the same configuration.
"""

import functools
import hashlib
import json
import logging
import math
import os
import pathlib
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rag_jax import sharding
from rag_jax import files

Array = jax.Array
Result = Tuple[np.ndarray, np.ndarray]  # scores [B, k] float32, ids [B, k] int64
# The mesh axis, or axes, the passages are split over (`sharding.index_axes(mesh)`: all).
AxisName = Union[str, Tuple[str, ...]]

DTYPES = ("float32", "bfloat16")

try:  # jax >= 0.6 exports shard_map at the top level; older versions keep it experimental.
  _shard_map = jax.shard_map
except AttributeError:
  from jax.experimental.shard_map import shard_map as _shard_map


class MissingDependencyError(ImportError):
  """A backend whose library is not installed; the message says which extra to install."""


# ------------------------------------------------------------------------------------------
# Argument checks shared by the backends.


def _check_embeddings(embeddings) -> Tuple[int, int]:
  shape = tuple(getattr(embeddings, "shape", ()))
  if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
    raise ValueError(f"embeddings must be a non-empty [N, D] matrix, got shape {list(shape)}")
  return shape


def _check_query(queries, k, num: int, dim: int) -> None:
  shape = tuple(getattr(queries, "shape", ()))
  if len(shape) != 2 or shape[1] != dim:
    raise ValueError(f"queries must be [B, {dim}], got shape {list(shape)}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  if k > num:
    raise ValueError(f"k={k} exceeds the {num} indexed embeddings")


def _check_dtype(dtype) -> str:
  name = jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {name}")
  return name


def _to_host(scores: Array, ids: Array) -> Result:
  return np.asarray(scores, np.float32), np.asarray(ids).astype(np.int64)


def _check_axes(axis_name: Union[str, Sequence[str]], mesh: Optional[Mesh]) -> AxisName:
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
# On-device top-k, shared by ExactSearch and ApproxSearch.

# select(scores [B, C], k) -> (values [B, k], column indices [B, k]), best first.
Select = Callable[[Array, int], Tuple[Array, Array]]


def _merge(vals: Array, ids: Array, k: int) -> Tuple[Array, Array]:
  """The best k of candidate columns: vals, ids [B, M] -> [B, k] each, best first."""
  top, cols = jax.lax.top_k(vals, k)
  return top, jnp.take_along_axis(ids, cols, axis=1)


# How the on-device search is laid out. The embeddings are held as a tuple of chunks, one
# device buffer each (per device when sharded), and one jitted program scores them in turn,
# the loop unrolled; `ExactSearch` selects each chunk's top k through block maxima. Measured,
# with the reasons:
# - CPU (this repository's 2-core machine, float32, chunks of 65,536):
#   - a matmul over a slice of one big buffer (static or traced) is several times slower than
#     over a buffer of its own, since XLA:CPU first copies the slice out; over 500k x 384 a
#     query took 114 ms as a scan over slices and 27 ms over separate buffers (32 queries:
#     190 -> 101 ms);
#   - top_k costs more than the matmul for skinny vectors: 1,000 queries over 400k x 50 took
#     838 ms with one top_k per chunk and 327 ms through block maxima (500k x 384, 128
#     queries: 328 -> 245 ms).
# - GPU (an H200, JAX 0.11, 10M x 768 bfloat16; benchmarks/RESULTS.md):
#   - a slice at a traced offset (a scan) is copied before its matmul, tripling the bytes each
#     search moves;
#   - XLA's GPU top-k gives each row of its input one thread block, so a top-k over a
#     [1, 10M] score row takes ~15 ms where the matmul making it takes ~4 ms;
#   - fewer, larger chunks were faster (GPU_CHUNKS).
SELECT_BLOCK = 128      # columns per block in `_blocked_select`
MAX_CHUNKS = 64         # more chunks than this: larger ones (64 compile in ~1 s per (B, k))
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
  blocks at once (XLA:CPU did: 134 MB of temporaries for 64 chunks of 4096 rows and 128
  queries, against 2 MB with it). `lax.optimization_barrier` did not order them: XLA:CPU
  forwards parameters through it. The term added is 0.0: row ids here are never negative.
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


class _DeviceIndex:
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
    self.num, self.dim = _check_embeddings(embeddings)
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

  def search(self, queries, k: int) -> Result:
    _check_query(queries, k, self.num, self.dim)
    queries = jnp.asarray(queries).astype(self.dtype)
    return _to_host(*self._fn(queries, self.embeddings, k=int(k)))


def _place_sharded(embeddings, dtype, mesh: Mesh, axis_name: AxisName, per_shard: int,
                   first: int, stop: int) -> Array:
  """Rows [first, stop) of every device's shard, as one [shards * (stop - first), D] array
  sharded by rows over `axis_name` (one axis or several, see `_DeviceIndex`).

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
# Backends.


class _OnDevice:
  """What the two on-device backends share: they search through a `_DeviceIndex`.

  Besides `search`, `top_k(queries, device_arrays, k)` is the same search as a pure function
  to call inside the caller's own jit, the embeddings passed as an argument (not closed over,
  which would make them constants of the caller's program):

      arrays = index.device_arrays
      step = jax.jit(lambda params, arrays, batch: ... index.top_k(q, arrays, k) ...)
      step(params, arrays, batch)

  Global row g lives on shard g // rows_per_shard (see `_DeviceIndex` for the layout).
  """
  _index: _DeviceIndex

  def __len__(self) -> int:
    return self._index.num

  def search(self, queries, k: int) -> Result:
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
    _check_query(queries, k, self._index.num, self._index.dim)
    return self._index.top_k_fn(jnp.asarray(queries).astype(self._index.dtype), arrays,
                                k=int(k))


class ExactSearch(_OnDevice):
  """Exact maximum inner product search on device; the reference for the other backends.

  The rows are scored a chunk at a time, and each chunk's top k is found through block
  maxima (`_blocked_select`). Memory beyond the embeddings is O(B * chunk_size) scores.
  With a mesh, the embeddings are sharded by rows over `axis_name` (padded to a multiple of
  its size with rows that never win), each device finds its local top-k under `shard_map`,
  and the shards' candidates are merged; the answer is the one-device answer. Every search
  is jitted, once per (B, k). `top_k` runs the same inside a caller's jit (see `_OnDevice`).
  """

  name = "exact"

  def __init__(self, embeddings, *, chunk_size: Optional[int] = None, dtype="float32",
               mesh: Optional[Mesh] = None, axis_name: AxisName = "data"):
    """
    Args:
      embeddings: [N, D] float (numpy, memory map or jax array); N must stay below 2**31.
        Copied to the device chunk by chunk; a jax array is copied too (unless it is one
        chunk), so drop it afterwards if device memory is tight.
      chunk_size: passages scored at once (per device when sharded); None picks it from the
        size and the device (`_chunk_rows`, which also raises it to keep at most MAX_CHUNKS
        chunks). Memory beyond the embeddings is O(B * chunk).
      dtype: "float32" or "bfloat16" (jnp dtypes accepted): how the embeddings are stored
        and multiplied; scores accumulate in float32 either way.
      mesh: shard the embeddings over this mesh's `axis_name` axes; None for one device.
      axis_name: the mesh axis the passages are split over, or a tuple of axes (e.g.
        `sharding.index_axes(mesh)`: every device of a (data, fsdp, model) mesh holds
        1/size of the rows).
    """
    self.chunk_size, self.dtype = chunk_size, _check_dtype(dtype)
    self.axis_name = _check_axes(axis_name, mesh)
    self._index = _DeviceIndex(embeddings, select=jax.lax.top_k, blocked=True,
                               chunk_size=chunk_size, dtype=self.dtype, mesh=mesh,
                               axis_name=self.axis_name)
    self.num_shards = self._index.num_shards

  def params(self) -> Dict[str, Any]:
    """The keyword arguments that rebuild this search. The mesh is placement, not a
    parameter: it does not change the results, and `num_shards` says what it was."""
    return {"chunk_size": self.chunk_size, "dtype": self.dtype, "axis_name": self.axis_name}


class ApproxSearch(_OnDevice):
  """Approximate top-k with `jax.lax.approx_max_k` (TPU-KNN, Chern et al. 2022).

  On TPU the partial reduction fuses with the matmul; on CPU and GPU it is an exact top-k.
  Chunking and sharding are as in `ExactSearch`. On TPU each chunk's scores go to
  `approx_max_k` whole (no block maxima: its partial reduction is what it is for); elsewhere
  through block maxima, as in `ExactSearch`. The per-chunk candidates are merged exactly, so
  the recall is at least about `recall_target` per chunk. `measured_recall` is for the
  caller to record what `measure_recall` gave against `ExactSearch`; `params()` carries it.
  """

  name = "approx"

  def __init__(self, embeddings, *, recall_target: float = 0.95,
               chunk_size: Optional[int] = None, dtype="float32", mesh: Optional[Mesh] = None,
               axis_name: AxisName = "data", measured_recall: Optional[float] = None):
    """
    Args:
      embeddings, chunk_size, dtype, mesh, axis_name: as for `ExactSearch`.
      recall_target: the expected recall of `approx_max_k`, in (0, 1].
      measured_recall: a recall measured earlier for this configuration, kept as a record.
    """
    if not 0.0 < recall_target <= 1.0:
      raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    self.recall_target, self.chunk_size = float(recall_target), chunk_size
    self.dtype, self.axis_name = _check_dtype(dtype), _check_axes(axis_name, mesh)
    self.measured_recall = measured_recall
    select = functools.partial(_approx_max_k, recall_target=self.recall_target)
    # Off TPUs approx_max_k is an exact top-k, and block maxima make it cheaper, as for exact.
    self._index = _DeviceIndex(embeddings, select=select,
                               blocked=jax.default_backend() != "tpu",
                               chunk_size=chunk_size, dtype=self.dtype, mesh=mesh,
                               axis_name=self.axis_name)
    self.num_shards = self._index.num_shards

  def params(self) -> Dict[str, Any]:
    return {"recall_target": self.recall_target, "chunk_size": self.chunk_size,
            "dtype": self.dtype, "axis_name": self.axis_name,
            "measured_recall": self.measured_recall}


def _approx_max_k(scores: Array, k: int, *, recall_target: float) -> Tuple[Array, Array]:
  return jax.lax.approx_max_k(scores, k, recall_target=recall_target)


def measure_recall(backend, reference, queries, k: int) -> float:
  """recall@k of `backend` against `reference` (usually `ExactSearch`), averaged over queries.

  The fraction of the reference's k ids that the backend also returns; order is ignored and
  a -1 (no result) never counts.
  """
  return _recall(reference.search(queries, k)[1], backend.search(queries, k)[1])


def _recall(want: np.ndarray, got: np.ndarray) -> float:
  """Ids [B, k] each: the fraction of `want` found anywhere in the same row of `got`."""
  return float(_recall_rows(want, got).mean())


def _recall_rows(want: np.ndarray, got: np.ndarray) -> np.ndarray:
  """Ids [B, k] each -> [B]: each row's fraction of `want` found in the same row of `got`."""
  return (want[:, :, None] == got[:, None, :]).any(axis=-1).mean(axis=-1)


# ------------------------------------------------------------------------------------------
# ScaNN.

SCANN_META = "rag_jax_scann.json"
SCANN_FORMAT = "rag_jax.scann.v2"  # v2: spherical, training_iterations, tuning
# ScaNN's rules of thumb (scann/docs/algorithms.md) are brute force below 20k points,
# hashing with rescoring below 100k and a tree of about sqrt(N) leaves above. Since the
# leaves searched are tuned to a recall target here, the tree already pays from a few
# thousand rows (9k MiniLM vectors: 3x the QPS of brute force); below, brute force is exact.
SCANN_TREE_FROM = 5_000
# Leaves per sqrt(N). On GloVe-400k, 1.6 sqrt(N) leaves reached recall@10 0.95 at the highest
# QPS of the 1-3 sqrt(N) tried (benchmarks/ann.py); with the threshold below, 1.3, 1.6 and
# 2 sqrt(N) came out alike (39-42k QPS at 0.95). More leaves also cost build time.
SCANN_LEAVES_PER_SQRT_N = 1.6
# The anisotropic threshold T, as a fraction of the row norm, is
#   max(SCANN_MIN_THRESHOLD, SCANN_THRESHOLD_PER_COSINE * c),
# c the median cosine between a tuning row and its k-th neighbour: the hashing then weighs
# the error along a row (which moves its inner products) by the inner products that decide
# the top k. ScaNN's fixed 0.2 for unit-norm data is the floor. On GloVe-400k (c = 0.71):
# relative thresholds of 0.3-0.5 reached held-out recall@10 0.95 with 52-55 leaves searched,
# against 56-62 for 0.2 and 66 for 0.7; tuned, this rule searched 54-61 leaves where 0.2
# searched 63-74, for 6-9% more QPS at the same held-out recall. On the 9k MiniLM vectors
# (c = 0.45), where the tree and not the hashing limits recall, 0.2-0.5 made no difference.
SCANN_MIN_THRESHOLD = 0.2
SCANN_THRESHOLD_PER_COSINE = 0.55
# Rows used as queries when `num_leaves_to_search` is tuned to a recall target.
SCANN_TUNING_QUERIES = 1000
# Tuning asks the one-sided 95% lower confidence bound of the tuning queries' mean recall to
# reach the target, not the mean itself: the mean of 1,000 queries is off by ~0.002-0.003
# from the mean over all rows. (Queries that are not index rows can still come out lower: on
# GloVe the bound's choice gave 0.951-0.953 on the benchmark's held-out noisy queries, the
# plain mean's 0.949.)
SCANN_TUNING_Z = 1.645
# Queries per chunk that a ScaNN worker thread takes at most. One chunk per core lets a batch
# under 512 queries use every core (ScaNN's default chunk is 256); for 1,000 GloVe queries on
# 2 cores it measured 36.5k against 35.8k QPS, within noise.
SCANN_MAX_CHUNK = 1024


def _import_scann():
  try:
    import scann  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(f"ScannSearch needs scann ({e}); pip install scann") from None
  return scann


def _chunk(num_queries: int) -> int:
  """Queries per ScaNN worker chunk: the batch shared evenly over the usable cores."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(SCANN_MAX_CHUNK, -(-num_queries // (cores or 1))))


def _scann_result(ids, scores) -> Result:
  """ScaNN's (ids, scores) as a `Result`: the slots it could not fill (id 0 and a NaN score)
  become id -1 and score -inf."""
  ids, scores = np.asarray(ids).astype(np.int64), np.asarray(scores, np.float32)
  missing = np.isnan(scores)
  return np.where(missing, -np.inf, scores).astype(np.float32), np.where(missing, -1, ids)


def _drop_self(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
  """ids [B, k + 1] -> [B, k]: each query row's own id removed (or else its last id), so that
  rows of the index can stand in for held-out queries."""
  own = ids == rows[:, None]
  own[:, -1] |= ~own.any(axis=1)
  return ids[~own].reshape(len(ids), k)


class _TuningSample(NamedTuple):
  """Index rows that stand in for held-out queries (`ScannSearch.tune`, and the threshold)."""
  rows: np.ndarray        # [Q] their row numbers, sorted
  queries: np.ndarray     # [Q, D] float32
  k: int                  # neighbours per query: min(k, N - 1)
  want: np.ndarray        # [Q, k] exact neighbours, each query's own row left out
  kth_cosine: float       # median cosine between a query and its k-th neighbour
  median_norm: float      # median norm of the queries


class ScannSearch:
  """ScaNN (Guo et al. 2020) on the host: partition, score with anisotropic hashing, rescore.

  The embeddings are indexed as they are: normalising them (as ScaNN's angular examples do)
  would turn the inner product into a cosine and change which passages win.

  Parameters left as None are chosen from N (and k) when the index is built; `params()`
  returns the resolved values, so `ScannSearch(embeddings, **s.params())` builds the same:

    brute_force      N < 5,000: score every row exactly, no tree and no hashing.
    num_leaves       round(1.6 sqrt(N)) for N >= 5,000 without brute force, else 0 (no tree).
    spherical        a spherical k-means tree when the rows have unit norm (within 1e-3),
                     a Euclidean one otherwise.
    num_leaves_to_search
                     tuned when the index is built: the fewest leaves whose recall@k reaches
                     `recall_target` (see `tune`). The recall it measured is `tuned_recall`.
    reorder          rows rescored exactly after hashing: 0 with brute force (already exact),
                     else max(100, 10 * k), at most N. A search for a larger k scales it.
    anisotropic_quantization_threshold
                     max(0.2, 0.55 c) * the tuning rows' median norm, c the median cosine
                     between a tuning row and its k-th exact neighbour (see
                     SCANN_THRESHOLD_PER_COSINE; the anisotropic weight depends on
                     threshold / norm). Only used with hashing; choosing it costs the tuning
                     rows' exact search (see `tune`), which tuning then reuses.
    training_sample_size
                     rows sampled to train the tree and the hash codebooks:
                     min(N, max(250,000, 100 * num_leaves)); the tree runs
                     `training_iterations` (20) rounds of k-means.

  Search runs on all host cores (`search_batched_parallel`, the batch split into one chunk
  per core, at most SCANN_MAX_CHUNK queries each). Rows ScaNN does not reach (a
  query whose searched leaves hold fewer than k rows) come back as id -1, score -inf.
  """

  name = "scann"

  def __init__(self, embeddings, *, k: int = 10, brute_force: Optional[bool] = None,
               num_leaves: Optional[int] = None, num_leaves_to_search: Optional[int] = None,
               recall_target: float = 0.95, reorder: Optional[int] = None,
               dimensions_per_block: int = 2, spherical: Optional[bool] = None,
               anisotropic_quantization_threshold: Optional[float] = None,
               training_sample_size: Optional[int] = None, training_iterations: int = 20,
               tuned_recall: Optional[float] = None, measured_recall: Optional[float] = None):
    """
    Args:
      embeddings: [N, D] float; copied into ScaNN as float32.
      k: the number of neighbours the searcher is tuned for (sets the default `reorder`).
      brute_force, num_leaves, num_leaves_to_search, reorder, spherical,
      anisotropic_quantization_threshold, training_sample_size: see the class docstring;
        None chooses from the data. (A threshold left None costs an exact search of 1,000
        rows, as tuning does, even when `num_leaves_to_search` is given.)
      recall_target: the recall@k that the tuned `num_leaves_to_search` reaches on the
        tuning queries; only used when there is a tree and `num_leaves_to_search` is None.
      dimensions_per_block: dimensions per hashing block; 2 is ScaNN's recommendation.
      training_iterations: k-means rounds for the tree.
      tuned_recall: the recall the tuning measured (kept as a record when rebuilding).
      measured_recall: a recall measured earlier for this configuration, kept as a record.
    """
    scann = _import_scann()
    self.num, self.dim = _check_embeddings(embeddings)
    data = np.ascontiguousarray(np.asarray(embeddings, np.float32))
    self._resolve(data, k=k, brute_force=brute_force, num_leaves=num_leaves,
                  num_leaves_to_search=num_leaves_to_search, reorder=reorder,
                  dimensions_per_block=dimensions_per_block, spherical=spherical,
                  threshold=anisotropic_quantization_threshold,
                  training_sample_size=training_sample_size,
                  training_iterations=training_iterations)
    if not 0.0 < recall_target <= 1.0:
      raise ValueError(f"recall_target must be in (0, 1], got {recall_target!r}")
    self.recall_target = float(recall_target)
    self.tuned_recall = tuned_recall
    self.measured_recall = measured_recall
    self._fingerprint = _fingerprint(data)  # For `save`: which embeddings this indexes.
    self._tuning = None  # See `_tuning_sample`.
    if not self.brute_force and self.anisotropic_quantization_threshold is None:
      sample = self._tuning_sample(data)
      relative = max(SCANN_MIN_THRESHOLD, SCANN_THRESHOLD_PER_COSINE * sample.kth_cosine)
      self.anisotropic_quantization_threshold = relative * sample.median_norm

    builder = scann.scann_ops_pybind.builder(data, self.k, "dot_product")
    if self.num_leaves:
      builder = builder.tree(num_leaves=self.num_leaves,
                             # A placeholder when tuning follows: searches pass their own.
                             num_leaves_to_search=self.num_leaves_to_search or 1,
                             training_sample_size=self.training_sample_size,
                             training_iterations=self.training_iterations,
                             spherical=self.spherical)
    if self.brute_force:
      builder = builder.score_brute_force()
    else:
      builder = builder.score_ah(
          self.dimensions_per_block,
          anisotropic_quantization_threshold=self.anisotropic_quantization_threshold,
          training_sample_size=self.training_sample_size)
    if self.reorder:
      builder = builder.reorder(self.reorder)
    self._searcher = builder.build()
    if self.num_leaves and not self.num_leaves_to_search:
      self.tune(data, self.recall_target)

  def tune(self, embeddings, recall_target: float) -> float:
    """Sets `num_leaves_to_search` to the fewest leaves whose recall@k reaches `recall_target`
    (all leaves if none does) and returns the recall measured there (also `tuned_recall`).
    "Reaches" is statistical: the mean over the tuning queries, less SCANN_TUNING_Z (1.645)
    standard errors, is at least the target (so the count is not a lucky draw of the sample;
    `tuned_recall`, the mean, comes out a little above the target). The tuning queries are
    index rows: other queries, a question encoder's say, may come out lower; `measure_recall`
    on a sample of real queries tells.

    The tuning queries are `SCANN_TUNING_QUERIES` rows of `embeddings` (the matrix this was
    built from, checked by its fingerprint) taken as held-out queries: each row's own id is
    dropped from both its exact and its ScaNN neighbours before comparing the top k. The
    exact neighbours come from `ExactSearch` (a copy of the embeddings on the default device,
    for that one search) when the build chose the threshold, or else on the first call, and
    are kept for later calls. Recall grows with the leaves searched, so a
    bisection over [1, num_leaves] finds the count in about log2(L) passes.
    """
    if not self.num_leaves:
      raise ValueError("tune needs a tree (num_leaves > 0); this searcher has none")
    if not 0.0 < recall_target <= 1.0:
      raise ValueError(f"recall_target must be in (0, 1], got {recall_target!r}")
    if _fingerprint(embeddings) != self._fingerprint:
      raise ValueError("tune needs the embeddings this searcher was built from")
    rows, queries, k, want = self._tuning_sample(embeddings)[:4]
    # As many rescored rows as a search for k serves with, plus the query's own row.
    pre = self.reorder + 1 if self.reorder else None

    def recall(leaves: int) -> Tuple[float, float]:
      """(mean recall, its one-sided 95% lower confidence bound) with `leaves` searched."""
      ids, _ = self._searcher.search_batched_parallel(
          queries, final_num_neighbors=k + 1, pre_reorder_num_neighbors=pre,
          leaves_to_search=leaves, batch_size=_chunk(len(queries)))
      per_query = _recall_rows(want, _drop_self(np.asarray(ids).astype(np.int64), rows, k))
      spread = SCANN_TUNING_Z * per_query.std(ddof=1) / math.sqrt(len(per_query))
      return float(per_query.mean()), float(per_query.mean() - spread)

    low, high = 1, self.num_leaves
    measured = {high: recall(high)}
    if measured[high][1] >= recall_target:
      while low < high:  # Invariant: `high` reaches the target.
        mid = (low + high) // 2
        measured[mid] = recall(mid)
        if measured[mid][1] >= recall_target:
          high = mid
        else:
          low = mid + 1
    self.num_leaves_to_search, self.recall_target = high, float(recall_target)
    mean, bound = measured[high]
    self.tuned_recall = round(mean, 4)
    if bound < recall_target:
      logging.warning("scann: recall@%d target %.3f not reached with all %d leaves (%.4f, "
                      "lower bound %.4f); a larger `reorder` or `dimensions_per_block=1` "
                      "rescores more exactly", k, recall_target, self.num_leaves, mean, bound)
    return self.tuned_recall

  def _tuning_sample(self, embeddings) -> _TuningSample:
    """`SCANN_TUNING_QUERIES` rows of `embeddings` as held-out queries and their exact top k
    without themselves (see `_TuningSample`). Found on the first call (`ExactSearch`, a copy
    of the embeddings on the default device for that one search) and kept."""
    if getattr(self, "_tuning", None) is None:
      rng = np.random.default_rng(0)
      rows = np.sort(rng.choice(self.num, min(SCANN_TUNING_QUERIES, self.num), replace=False))
      queries = np.ascontiguousarray(np.asarray(embeddings[rows], np.float32))
      k = min(self.k, self.num - 1)
      want = _drop_self(ExactSearch(embeddings).search(queries, k + 1)[1], rows, k)
      norms = np.linalg.norm(queries, axis=1)
      cosine = 0.0  # One row: no neighbour.
      if k:
        kth = np.asarray(embeddings[want[:, -1]], np.float32)
        cosine = float(np.median(np.sum(queries * kth, axis=1) / np.maximum(
            norms * np.linalg.norm(kth, axis=1), 1e-30)))
      self._tuning = _TuningSample(rows, queries, k, want, cosine, float(np.median(norms)))
    return self._tuning

  def _resolve(self, data: np.ndarray, *, k, brute_force, num_leaves, num_leaves_to_search,
               reorder, dimensions_per_block, spherical, threshold, training_sample_size,
               training_iterations) -> None:
    """Sets the parameters, choosing the ones left as None (see the class docstring).

    `num_leaves_to_search` stays None when it is to be tuned after the build.
    """
    n = self.num

    def check(name, value, low):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
      return int(value)

    self.k = min(check("k", k, 1), n)
    self.brute_force = bool(n < SCANN_TREE_FROM if brute_force is None else brute_force)
    if num_leaves is None:
      tree = not self.brute_force and n >= SCANN_TREE_FROM
      num_leaves = round(SCANN_LEAVES_PER_SQRT_N * math.sqrt(n)) if tree else 0
    self.num_leaves = check("num_leaves", num_leaves, 0)
    if self.num_leaves > n:
      raise ValueError(f"num_leaves={self.num_leaves} exceeds the {n} embeddings")
    if not self.num_leaves:
      num_leaves_to_search = 0
    elif num_leaves_to_search is not None:
      num_leaves_to_search = min(check("num_leaves_to_search", num_leaves_to_search, 1),
                                 self.num_leaves)
    self.num_leaves_to_search = num_leaves_to_search
    if reorder is None:
      reorder = 0 if self.brute_force else max(100, 10 * self.k)
    self.reorder = min(check("reorder", reorder, 0), n)
    self.dimensions_per_block = check("dimensions_per_block", dimensions_per_block, 1)
    sample = data[np.linspace(0, n - 1, min(n, 10_000)).astype(np.int64)]
    norms = np.linalg.norm(sample, axis=1)
    self.spherical = bool(np.all(np.abs(norms - 1.0) < 1e-3) if spherical is None
                          else spherical)
    # None without hashing; left None here to be chosen from the data (see `__init__`).
    self.anisotropic_quantization_threshold = (
        None if self.brute_force or threshold is None else float(threshold))
    if training_sample_size is None:
      training_sample_size = min(n, max(250_000, 100 * self.num_leaves))
    self.training_sample_size = check("training_sample_size", training_sample_size, 1)
    self.training_iterations = check("training_iterations", training_iterations, 1)

  def __len__(self) -> int:
    return self.num

  def search(self, queries, k: int) -> Result:
    """queries [B, D] -> scores [B, k] float32, ids [B, k] int64, best first."""
    _check_query(queries, k, self.num, self.dim)
    k = int(k)
    queries = np.ascontiguousarray(np.asarray(queries, np.float32))
    # ScaNN returns at most the pre-rescoring count. A larger k keeps the candidates per
    # neighbour the searcher was built with; a smaller one keeps all `reorder` (cheap, and
    # fewer would cost recall).
    pre = max(self.reorder, math.ceil(self.reorder * k / self.k)) if self.reorder else None
    ids, scores = self._searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
        leaves_to_search=self.num_leaves_to_search or None, batch_size=_chunk(len(queries)))
    return _scann_result(ids, scores)

  def params(self) -> Dict[str, Any]:
    return {"k": self.k, "brute_force": self.brute_force, "num_leaves": self.num_leaves,
            "num_leaves_to_search": self.num_leaves_to_search,
            "recall_target": self.recall_target, "tuned_recall": self.tuned_recall,
            "reorder": self.reorder, "dimensions_per_block": self.dimensions_per_block,
            "spherical": self.spherical,
            "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
            "training_sample_size": self.training_sample_size,
            "training_iterations": self.training_iterations,
            "measured_recall": self.measured_recall}

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the searcher to `directory` (created; it must not hold files already).

    ScaNN's own files come first (with paths relative to the directory, so it can be moved),
    then `rag_jax_scann.json` with the parameters and a fingerprint of the embeddings,
    written to a temporary name and renamed: without it, `load` sees no index at all.
    """
    directory = pathlib.Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
      raise ValueError(f"{directory}: exists and is not an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    self._searcher.serialize(str(directory), relative_path=True)
    meta = {"format": SCANN_FORMAT, "count": self.num, "dim": self.dim,
            "fingerprint": self._fingerprint, "params": self.params()}
    files.write_json(directory / SCANN_META, meta)

  @classmethod
  def load(cls, directory: str | os.PathLike, embeddings) -> "ScannSearch":
    """The searcher `save` wrote to `directory`, for the embeddings it was built from.

    ScaNN keeps its own copy of the data; `embeddings` [N, D] are only checked against the
    saved shape and fingerprint, since the ids it returns are rows of that matrix.
    """
    scann = _import_scann()
    directory = pathlib.Path(directory)
    meta_path = directory / SCANN_META
    try:
      meta = json.loads(meta_path.read_text(encoding="utf-8"))
      count, dim, fingerprint, params = (meta["count"], meta["dim"], meta["fingerprint"],
                                         meta["params"])
    except FileNotFoundError:
      raise ValueError(f"{meta_path}: missing file (not a saved ScaNN index?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{meta_path}: unreadable ({type(e).__name__}: {e})") from None
    if meta.get("format") != SCANN_FORMAT:
      raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {SCANN_FORMAT!r}")
    shape = _check_embeddings(embeddings)
    if shape != (count, dim) or _fingerprint(embeddings) != fingerprint:
      raise ValueError(f"{directory}: saved for other embeddings ([{count}, {dim}]) than "
                       f"the {list(shape)} given")

    self = cls.__new__(cls)
    self.num, self.dim = count, dim
    for key, value in params.items():
      setattr(self, key, value)
    self._searcher = scann.scann_ops_pybind.load_searcher(str(directory))
    self._fingerprint = fingerprint
    return self


def _fingerprint(embeddings, rows: int = 64) -> str:
  """sha256 of the shape and of `rows` evenly spaced rows (as float32): cheap on a memory map
  of 21M rows, and enough to tell one corpus's embeddings from another's."""
  num, dim = embeddings.shape
  picked = np.unique(np.linspace(0, num - 1, min(num, rows)).astype(np.int64))
  digest = hashlib.sha256(f"{num}x{dim}".encode())
  digest.update(np.ascontiguousarray(np.asarray(embeddings[picked], np.float32)).tobytes())
  return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# faiss HNSW (optional).


def _import_faiss():
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingDependencyError(
        "FaissHnswSearch needs faiss, which is not installed; install the faiss extra: "
        "pip install 'rag_jax[faiss]'") from None
  return faiss


class FaissHnswSearch:
  """A faiss HNSW graph (Malkov & Yashunin 2018) under the inner product, on the host.

  Needs the `faiss` extra (`pip install 'rag_jax[faiss]'`); without it, construction raises
  `MissingDependencyError`.
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
    faiss = _import_faiss()
    self.num, self.dim = _check_embeddings(embeddings)
    self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
    self.measured_recall = measured_recall
    self._index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
    self._index.hnsw.efConstruction = ef_construction
    self._index.add(np.ascontiguousarray(np.asarray(embeddings, np.float32)))

  def __len__(self) -> int:
    return self.num

  def search(self, queries, k: int) -> Result:
    """queries [B, D] -> scores [B, k] float32, ids [B, k] int64, best first."""
    _check_query(queries, k, self.num, self.dim)
    self._index.hnsw.efSearch = max(self.ef_search, int(k))
    scores, ids = self._index.search(np.ascontiguousarray(np.asarray(queries, np.float32)),
                                     int(k))
    ids = np.asarray(ids, np.int64)
    return np.where(ids < 0, -np.inf, scores).astype(np.float32), ids

  def params(self) -> Dict[str, Any]:
    return {"m": self.m, "ef_construction": self.ef_construction,
            "ef_search": self.ef_search, "measured_recall": self.measured_recall}


# ------------------------------------------------------------------------------------------

BACKENDS = {cls.name: cls for cls in (ExactSearch, ApproxSearch, ScannSearch, FaissHnswSearch)}


# The library each host backend needs (imported by `require`); the on-device ones need jax only.
_IMPORTS = {"scann": _import_scann, "faiss_hnsw": _import_faiss}


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
