"""What every search backend keeps to: the answer's form, the argument checks, recall.

Every backend answers the same calls (duck typing, no base class):

  search(queries [B, D], k) -> (scores [B, k] float32, ids [B, k] int64)   numpy, best first
  params() -> dict                                                          JSON-able settings

`ids` are row numbers into the embedding matrix [N, D] the backend was built from, `scores`
the inner products q . e (exact for every backend here except ScaNN without rescoring). A k
larger than N is a ValueError. An approximate backend that finds fewer than k rows for a query
fills the rest with id -1 and score -inf: -1 is what `PassageStore` refuses as a row, and -inf
is what `marginalize` reads as a missing document.

A leaf: numpy only, so that the host backends and the on-device ones share it without
importing each other.
"""

from typing import Tuple

import numpy as np

Result = Tuple[np.ndarray, np.ndarray]  # scores [B, k] float32, ids [B, k] int64


class MissingDependencyError(ImportError):
  """A backend whose library is not installed; the message says which extra to install."""


def check_embeddings(embeddings) -> Tuple[int, int]:
  """The (N, D) of embeddings [N, D], or a ValueError if they are not a non-empty matrix."""
  shape = tuple(getattr(embeddings, "shape", ()))
  if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
    raise ValueError(f"embeddings must be a non-empty [N, D] matrix, got shape {list(shape)}")
  return shape


def check_query(queries, k, num: int, dim: int) -> None:
  """A ValueError unless queries are [B, dim] and k is an integer in [1, num]."""
  shape = tuple(getattr(queries, "shape", ()))
  if len(shape) != 2 or shape[1] != dim:
    raise ValueError(f"queries must be [B, {dim}], got shape {list(shape)}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  if k > num:
    raise ValueError(f"k={k} exceeds the {num} indexed embeddings")


def measure_recall(backend, reference, queries, k: int) -> float:
  """recall@k of `backend` against `reference` (usually `ExactSearch`), averaged over queries.

  The fraction of the reference's k ids that the backend also returns; order is ignored and
  a -1 (no result) never counts.
  """
  return recall(reference.search(queries, k)[1], backend.search(queries, k)[1])


def recall(want: np.ndarray, got: np.ndarray) -> float:
  """Ids [B, k] each: the fraction of `want` found anywhere in the same row of `got`."""
  return float(recall_rows(want, got).mean())


def recall_rows(want: np.ndarray, got: np.ndarray) -> np.ndarray:
  """Ids [B, k] each -> [B]: each row's fraction of `want` found in the same row of `got`."""
  return (want[:, :, None] == got[:, None, :]).any(axis=-1).mean(axis=-1)
