"""Embedding a passage store with the frozen document encoder: sharded, resumable, atomic.

The rows 0..N-1 of a `PassageStore` are cut into shards of `shard_size` rows. Each shard is
encoded in jitted batches split over all local devices (data parallel, `TextEncoder.data_parallel`:
the batch axis of the inputs is sharded over `sharding.DATA_AXES` of
`sharding.make_mesh({"data": -1}, jax.local_devices())`, the params are replicated) and
written as `shard-00042.npy`: first under a temporary name, fsync'ed, then renamed. An
interrupted build therefore leaves only whole shards behind, and `embed_store` skips the
shards that are already there: it resumes where it stopped, with identical results.

In a multi-host job every process calls `embed_store` with its `process_index` and
`process_count` and writes the shards `j` with `j % process_count == process_index` into the
same (shared) directory.

Passages are encoded as DPR encodes them: the tokenizer's text pair (title, text), i.e.
`[CLS] title [SEP] text [SEP]` for BERT tokenizers.
"""

import dataclasses
import pathlib
import time
from typing import List, Optional

import jax
import ml_dtypes
import numpy as np
from tqdm import tqdm

from rag_jax import faults
from rag_jax import files
from rag_jax.encoder import TextEncoder
from rag_jax.index.corpus import PassageStore

DTYPES = ("float32", "float16", "bfloat16")
TOKENIZE_CHUNK = 4096  # passages tokenized per tokenizer call (see `_tokenize_pairs`)
ALIGN = 64  # bytes: the alignment XLA:CPU needs to use a host buffer as it is


class EmbedError(ValueError):
  """Embeddings that cannot be written or read; the message says why in one line."""


def shard_name(j: int) -> str:
  return f"shard-{j:05d}.npy"


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
  """float32 [n, D] -> the stored array. bfloat16 is stored as its uint16 bit pattern so that
  plain numpy can read the file back."""
  if dtype == "bfloat16":
    return x.astype(ml_dtypes.bfloat16).view(np.uint16)
  return x.astype(dtype)


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
  """The inverse of `to_storage`, as float32."""
  if dtype == "bfloat16":
    return x.view(ml_dtypes.bfloat16).astype(np.float32)
  return x.astype(np.float32)


@dataclasses.dataclass
class EmbedReport:
  shards: int          # shards this process is responsible for
  written: int         # shards written by this call
  skipped: int         # shards found complete and kept (resumed)
  passages: int        # passages encoded by this call
  seconds: float

  @property
  def passages_per_s(self) -> float:
    return self.passages / self.seconds if self.seconds > 0 else 0.0


def _shard_ok(path: pathlib.Path, rows: int, dim: int, dtype: str) -> bool:
  try:
    arr = np.load(path, mmap_mode="r")
  except (OSError, ValueError):
    return False
  expected = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
  return arr.shape == (rows, dim) and arr.dtype == expected


def embed_store(store: PassageStore, encoder: TextEncoder, out_dir, *, shard_size: int = 65536,
                dtype: str = "float16", process_index: int = 0, process_count: int = 1,
                progress: bool = True, max_shards: Optional[int] = None) -> EmbedReport:
  """Embeds every passage of `store` into `out_dir/shard-*.npy`, resuming past shards.

  Args:
    store: the passages, rows 0..N-1.
    encoder: the document encoder (its `batch_size` is rounded up to the device count).
    out_dir: the shard directory (created).
    shard_size: rows per shard file.
    dtype: storage dtype, one of DTYPES.
    process_index, process_count: this process's slice of a multi-host job.
    progress: a tqdm bar with passages/s.
    max_shards: stop after writing this many shards (to test interruption).
  Returns:
    An EmbedReport.
  """
  if dtype not in DTYPES:
    raise EmbedError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  n = len(store)
  n_shards = -(-n // shard_size)
  mine = [j for j in range(n_shards) if j % process_count == process_index]
  # Local devices only: each process of a multi-host job encodes its own shards, with no
  # collective between processes.
  encoder = encoder.data_parallel(jax.local_devices())
  report = EmbedReport(shards=len(mine), written=0, skipped=0, passages=0, seconds=0.0)
  start = time.perf_counter()
  bar = tqdm(total=sum(min(shard_size, n - j * shard_size) for j in mine), unit="passage",
             disable=not progress, desc="embedding")
  for j in mine:
    lo, hi = j * shard_size, min(n, (j + 1) * shard_size)
    path = out_dir / shard_name(j)
    if _shard_ok(path, hi - lo, encoder.dim, dtype):
      report.skipped += 1
      bar.update(hi - lo)
      continue
    if max_shards is not None and report.written >= max_shards:
      break
    tokens = _tokenize_pairs(encoder, store.get_many(range(lo, hi)))
    # Batches of similar lengths, each padded to its own bucket: in store order nearly every
    # batch holds one long passage and pads all of its rows to it.
    order = np.argsort([len(t) for t in tokens], kind="stable")
    vectors = np.empty((hi - lo, encoder.dim), np.float32)
    for b in range(0, hi - lo, encoder.batch_size):
      rows = order[b:b + encoder.batch_size]
      vectors[rows] = encoder.encode_tokens(*encoder.pad([tokens[i] for i in rows]))
      bar.update(len(rows))
      report.passages += len(rows)
      faults.reach("index_embed")
    files.save_npy(path, to_storage(vectors, dtype))
    report.written += 1
  bar.close()
  report.seconds = time.perf_counter() - start
  return report


def _tokenize_pairs(encoder: TextEncoder, rows: List[dict]) -> List[np.ndarray]:
  """Passages -> int32 token ids of their (title, text) pairs, the text truncated to fit.

  In chunks of TOKENIZE_CHUNK rows, keeping only the ids: a shard of 65,536 passages then
  holds ~36 MB of them, where the tokenizer's whole output for it would take ~2.5 GB.
  """
  ids = []
  for start in range(0, len(rows), TOKENIZE_CHUNK):
    chunk = rows[start:start + TOKENIZE_CHUNK]
    ids += [np.asarray(t, np.int32) for t in encoder.tokenizer(
        [r["title"] for r in chunk], [r["text"] for r in chunk], truncation="only_second",
        max_length=encoder.max_length, return_token_type_ids=False,
        return_attention_mask=False)["input_ids"]]
  return ids


def aligned_empty(shape, dtype) -> np.ndarray:
  """`np.empty`, its data aligned to ALIGN bytes. On a CPU backend `jax.device_put` of such an
  array (or of a row slice, when a row is a multiple of ALIGN bytes) shares its memory; of
  a misaligned one (a large `np.empty` is 16 bytes past a page), it copies: a second copy
  of an index's vectors beside the host's. Shared, the array must not be written once a
  backend holds it."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(size + ALIGN, np.uint8)
  start = -raw.ctypes.data % ALIGN
  return raw[start:start + size].view(dtype).reshape(shape)


def load_embeddings(directory, count: int, dim: int, dtype: str, shard_size: int) -> np.ndarray:
  """All shards of a finished build as one float32 [count, dim] array (`aligned_empty`, so
  that an on-device backend on the CPU searches it in place); a missing, truncated or
  misshapen shard is an EmbedError naming the file."""
  directory = pathlib.Path(directory)
  out = aligned_empty((count, dim), np.float32)
  for j in range(-(-count // shard_size)):
    lo, hi = j * shard_size, min(count, (j + 1) * shard_size)
    path = directory / shard_name(j)
    if not path.is_file():
      raise EmbedError(f"{path}: missing embeddings shard")
    try:
      arr = np.load(path)
    except (OSError, ValueError, EOFError) as e:
      raise EmbedError(f"{path}: truncated or corrupt embeddings ({e})") from None
    if arr.shape != (hi - lo, dim):
      raise EmbedError(f"{path}: shape {arr.shape}, expected {(hi - lo, dim)}")
    out[lo:hi] = from_storage(arr, dtype)
  return out
