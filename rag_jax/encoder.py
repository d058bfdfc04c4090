"""Text in, vectors out: a BERT-family encoder with its tokenizer, under jit.

    encoder = TextEncoder.from_pretrained(assets.fetch("all-MiniLM-L6-v2"))
    vectors = encoder.encode(["Who wrote Hamlet?"])   # [1, 384] float32

Batches are padded to a length bucket (a power of two, at most `max_length`) and to a fixed
batch size, so a stream of texts compiles a handful of programs, not one per batch. On the CPU
a compiled call runs its batch 8 rows at a time (`micro_batch`): the activations of 8 x 128
tokens stay in cache, which made MiniLM encoding 1.25x faster on a 2-core Xeon
(`benchmarks/encode.py`); accelerators take the whole batch at once.
"""

import dataclasses
import functools
import json
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import sharding
from rag_jax import weights
from rag_jax.models import bert


# Rows per step on a single CPU device (see the module docstring); 4 and 8 were the fastest
# of 4-64 for MiniLM at 128 tokens.
CPU_MICRO_BATCH = 8


def length_bucket(n: int, max_length: int, smallest: int = 16) -> int:
  """The smallest power of two >= n (and >= smallest), capped at max_length."""
  bucket = smallest
  while bucket < n:
    bucket *= 2
  return min(bucket, max_length)


@dataclasses.dataclass
class TextEncoder:
  """A BertEncoder, its params and tokenizer.

  Attributes:
    module: the Flax encoder.
    params: its parameters.
    tokenizer: an HF tokenizer.
    max_length: texts are truncated to this many tokens.
    batch_size: texts per compiled call.
    data_sharding: where each batch goes (e.g. split over devices, see `data_parallel`);
      None: the default device.
    micro_batch: rows each device runs at a time (a `lax.map` over its rows); None: on CPU
      devices CPU_MICRO_BATCH in all (CPU_MICRO_BATCH / devices each, when `data_sharding`
      splits the rows over mesh axes), on accelerators the whole batch; 0: the whole batch.
  """
  module: bert.BertEncoder
  params: Any
  tokenizer: Any
  max_length: int = 512
  batch_size: int = 64
  data_sharding: Optional[jax.sharding.Sharding] = None
  micro_batch: Optional[int] = None

  def __post_init__(self):
    if self.max_length < 2:
      raise ValueError(f"max_length must be at least 2 (a [CLS] and a [SEP] token), got "
                       f"{self.max_length}")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")
    self._apply: Callable = jax.jit(self._pooled, static_argnums=3)

  def _pooled(self, params, ids: jax.Array, mask: jax.Array, m: int) -> jax.Array:
    """ids, mask [N, L] -> pooled [N, P]; each device runs its rows m at a time."""
    axis = self._batch_axis()
    if axis is None:
      return self._local(params, ids, mask, m)
    # One shard of the batch per device, each micro-batched on its own (a plain jit would
    # partition the micro-batch loop instead of the rows).
    spec = jax.sharding.PartitionSpec
    return jax.shard_map(functools.partial(self._local, m=m), mesh=self.data_sharding.mesh,
                         in_specs=(spec(), spec(axis), spec(axis)),
                         out_specs=spec(axis))(params, ids, mask)

  def _local(self, params, ids: jax.Array, mask: jax.Array, m: int) -> jax.Array:
    """ids, mask [n, L] -> pooled [n, P], m rows at a time (m divides n)."""
    apply = lambda ids, mask: self.module.apply({"params": params}, ids, mask)[1]
    n, length = ids.shape
    if m == n:
      return apply(ids, mask)
    split = lambda x: x.reshape(n // m, m, length)
    return jax.lax.map(lambda x: apply(*x), (split(ids), split(mask))).reshape(n, -1)

  def _batch_axis(self) -> Union[None, str, Tuple[str, ...]]:
    """The mesh axes `data_sharding` splits the rows over, when it splits only those."""
    split = self.data_sharding
    if not isinstance(split, jax.sharding.NamedSharding) or not split.spec:
      return None
    first, rest = split.spec[0], tuple(split.spec[1:])
    return first if first and isinstance(first, (str, tuple)) and not any(rest) else None

  def _rows_at_a_time(self, n: int) -> int:
    """How many of the rows each device holds (of a batch of n) it runs at a time."""
    axis = self._batch_axis()
    shards = sharding.axes_size(self.data_sharding.mesh, axis) if axis else 1
    rows = n // shards
    m = self.micro_batch
    if m is None:
      if axis:
        cpu = self.data_sharding.mesh.devices.flat[0].platform == "cpu"
      else:
        cpu = self.data_sharding is None and jax.default_backend() == "cpu"
      m = max(1, CPU_MICRO_BATCH // shards) if cpu else 0
    return m if 0 < m < rows and rows % m == 0 else rows

  def data_parallel(self, devices: Optional[Sequence[Any]] = None, *,
                    mesh: Optional[jax.sharding.Mesh] = None) -> "TextEncoder":
    """This encoder with each batch split over sharding.DATA_AXES of a mesh and the params
    replicated on it; itself when the mesh has one device, or when it is split over that mesh
    already (a new encoder would compile its programs again).

    Args:
      devices: the mesh is `sharding.make_mesh({"data": -1}, devices)`; default: the local
        devices (each process encodes its own texts).
      mesh: a mesh from `sharding.make_mesh` to use instead (e.g. the training mesh).

    On a CPU host with one XLA device per core (`jax_num_cpu_devices`, which the command-line
    entry points set; see `rag_jax.cli.use_cpu_cores`), each core then encodes its share of a
    batch in micro-batches of its own, which encodes faster than one device driving every
    core (`benchmarks/encode.py`; benchmarks/RESULTS.md).
    """
    if mesh is None:
      mesh = sharding.make_mesh({"data": -1},
                                jax.local_devices() if devices is None else devices)
    if mesh.size == 1:
      return self
    split = sharding.batch_sharding(mesh)
    if self.data_sharding == split:
      return self
    shards = sharding.data_size(mesh)
    batch = -(-self.batch_size // shards) * shards
    return dataclasses.replace(
        self, params=jax.device_put(self.params, sharding.replicated(mesh)), batch_size=batch,
        data_sharding=split)

  @classmethod
  def from_pretrained(cls, path_or_name, *, dtype=jnp.float32, max_length: Optional[int] = None,
                      batch_size: int = 64, **load_kwargs) -> "TextEncoder":
    """Loads weights and tokenizer from an HF / sentence-transformers directory or hub name."""
    directory = weights.resolve(path_or_name)
    module, params = weights.load_bert(directory, dtype=dtype, **load_kwargs)
    tokenizer = weights.load_tokenizer(directory)
    if max_length is None:
      st_config = directory / "sentence_bert_config.json"
      if st_config.is_file():
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length", 512))
      else:
        max_length = 512
    max_length = min(max_length, module.config.max_position_embeddings)
    return cls(module, params, tokenizer, max_length=max_length, batch_size=batch_size)

  @property
  def dim(self) -> int:
    return self.module.config.output_dim

  def tokenize(self, texts: Sequence[str], length: Optional[int] = None):
    """texts -> ids, mask [N, length] int32 numpy (length: bucket of the longest, by default)."""
    enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                         padding=False)["input_ids"]
    return self.pad(enc, length)

  def pad(self, enc: Sequence[Sequence[int]], length: Optional[int] = None):
    """Token id lists -> ids, mask [N, length] int32 numpy, right-padded."""
    if length is None:
      length = length_bucket(max(len(e) for e in enc), self.max_length)
    pad = self.tokenizer.pad_token_id or 0
    ids = np.full((len(enc), length), pad, np.int32)
    mask = np.zeros((len(enc), length), np.int32)
    for i, e in enumerate(enc):
      e = e[:length]
      ids[i, :len(e)] = e
      mask[i, :len(e)] = 1
    return ids, mask

  def encode_tokens(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ids, mask [N, L] -> pooled vectors [N, P] float32, in fixed-size compiled batches."""
    n, b = ids.shape[0], self.batch_size
    out = np.empty((n, self.dim), np.float32)
    for start in range(0, n, b):
      chunk_ids, chunk_mask = ids[start:start + b], mask[start:start + b]
      m = chunk_ids.shape[0]
      if m < b:  # pad the last batch so it reuses the compiled program
        chunk_ids = np.pad(chunk_ids, ((0, b - m), (0, 0)))
        chunk_mask = np.pad(chunk_mask, ((0, b - m), (0, 0)))
      if self.data_sharding is not None:
        chunk_ids, chunk_mask = jax.device_put((chunk_ids, chunk_mask), self.data_sharding)
      out[start:start + m] = np.asarray(
          self._apply(self.params, chunk_ids, chunk_mask, self._rows_at_a_time(b)))[:m]
    return out

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """texts -> [N, P] float32 vectors (normalised if the model says so)."""
    if isinstance(texts, str):
      raise TypeError("encode() takes a list of texts, not one string")
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    # Sort by length so that each batch pads to its own bucket; restore order at the end.
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(texts), self.dim), np.float32)
    for start in range(0, len(texts), self.batch_size):
      idx = order[start:start + self.batch_size]
      ids, mask = self.tokenize([texts[i] for i in idx])
      out[idx] = self.encode_tokens(ids, mask)
    return out
