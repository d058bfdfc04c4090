"""ScaNN (Guo et al. 2020) as a search backend: its parameters chosen from the data, the leaves
searched tuned to a recall target, and the searcher saved to and loaded from a directory.

ScaNN runs on the host; it needs the `scann` package, imported only when a searcher is built
or loaded (`import_scann`), so that the other backends work without it.

Shapes: N = rows, D = dim, B = queries, Q = tuning queries, k = wanted.
"""

import hashlib
import json
import logging
import math
import os
import pathlib
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from rag_jax import files
from rag_jax.index import backend
from rag_jax.index import exact

SCANN_META = "rag_jax_scann.json"
SCANN_FORMAT = "rag_jax.scann.v2"  # v2: spherical, training_iterations, tuning
# ScaNN's rules of thumb (scann/docs/algorithms.md) are brute force below 20k points,
# hashing with rescoring below 100k and a tree of about sqrt(N) leaves above. Since the
# leaves searched are tuned to a recall target here, the tree already pays from a few
# thousand rows (benchmarks/ann.py on MiniLM vectors); below, brute force is exact.
SCANN_TREE_FROM = 5_000
# Leaves per sqrt(N): of the counts between 1 and 3 sqrt(N) that benchmarks/ann.py tried on
# GloVe, the fastest to reach recall@10 0.95; with the threshold below, its neighbours came
# out alike, and more leaves also cost build time.
SCANN_LEAVES_PER_SQRT_N = 1.6
# The anisotropic threshold T, as a fraction of the row norm, is
#   max(SCANN_MIN_THRESHOLD, SCANN_THRESHOLD_PER_COSINE * c),
# c the median cosine between a tuning row and its k-th neighbour: the hashing then weighs
# the error along a row (which moves its inner products) by the inner products that decide
# the top k. ScaNN's fixed 0.2 for unit-norm data is the floor. On GloVe (benchmarks/ann.py)
# the rule's threshold reached the held-out recall target with fewer leaves searched than
# 0.2 did, for more QPS at the same recall; on MiniLM vectors, where the tree and not the
# hashing limits recall, the threshold made no difference.
SCANN_MIN_THRESHOLD = 0.2
SCANN_THRESHOLD_PER_COSINE = 0.55
# Rows used as queries when `num_leaves_to_search` is tuned to a recall target.
SCANN_TUNING_QUERIES = 1000
# Tuning asks the one-sided 95% lower confidence bound of the tuning queries' mean recall to
# reach the target, not the mean itself: a sample's mean is off from the mean over all rows
# by about its standard error, so a count chosen on the mean can fall just short of the
# target on other queries (on GloVe's held-out queries in benchmarks/ann.py, it did and the
# bound's count did not). Queries that are not index rows can still come out lower.
SCANN_TUNING_Z = 1.645
# Queries per chunk that a ScaNN worker thread takes at most. One chunk per core lets a batch
# of fewer than 256 queries per core use every core (ScaNN's default chunk is 256); on a
# large batch the two chunkings measured alike, within noise.
SCANN_MAX_CHUNK = 1024


def import_scann():
  """The scann module, or a MissingDependencyError with a one-line message."""
  try:
    import scann  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise backend.MissingDependencyError(
        f"ScannSearch needs scann ({e}); pip install scann") from None
  return scann


def _chunk(num_queries: int) -> int:
  """Queries per ScaNN worker chunk: the batch shared evenly over the usable cores."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(SCANN_MAX_CHUNK, -(-num_queries // (cores or 1))))


def _scann_result(ids, scores) -> backend.Result:
  """ScaNN's (ids, scores) as a `backend.Result`: the slots it could not fill (id 0 and a NaN score)
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
    scann = import_scann()
    self.num, self.dim = backend.check_embeddings(embeddings)
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
    index rows: other queries, a question encoder's say, may come out lower;
    `backend.measure_recall` on a sample of real queries tells.

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
      got = _drop_self(np.asarray(ids).astype(np.int64), rows, k)
      per_query = backend.recall_rows(want, got)
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
      want = _drop_self(exact.ExactSearch(embeddings).search(queries, k + 1)[1], rows, k)
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

  def search(self, queries, k: int) -> backend.Result:
    """queries [B, D] -> scores [B, k] float32, ids [B, k] int64, best first."""
    backend.check_query(queries, k, self.num, self.dim)
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
    scann = import_scann()
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
    shape = backend.check_embeddings(embeddings)
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
