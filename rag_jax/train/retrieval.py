"""A batch's retrieved documents, by the config's retrieval mode, placed on the mesh.

`BatchRetriever(params, arrays)` takes the token arrays of a batch's examples (this process's
rows, or with `replicated` the whole batch) and returns them on the mesh with the top-k
documents of each question: doc_ids [B, Z], passage_tokens [B, Z, P], passage_length [B, Z],
and doc_embeds [B, Z, D] (the frozen d(z)) or, for a retriever without vectors (BM25, closed
book), retrieval_scores [B, Z]. What the generator then reads is `contexts.join_contexts` of
those rows, inside `step.contexts_and_scores`: one path from ids to contexts for training,
evaluation and the demo.

Modes: "device" (exact top-k inside the jitted function over the `DeviceIndex`), "host" (the
saved index searched between the jitted query encoding and the step), "bm25" (retrieved once
up front, the ids in the split's arrays), "none" (closed book: one empty passage of score 0).
"""

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import jax
import numpy as np

from rag_jax import distributed
from rag_jax import sharding
from rag_jax.index import device as device_lib
from rag_jax.index import saved
from rag_jax.train import input_pipeline

Array = jax.Array


def place(mesh, arrays: Dict[str, np.ndarray], replicated: bool = False) -> Dict[str, Array]:
  """This process's rows -> global arrays split over the data axes; or, `replicated`, the
  whole batch (the same on every process) on every device."""
  shard = lambda x: (sharding.replicated(mesh) if replicated
                     else sharding.batch_sharding(mesh, x.ndim))
  return {k: jax.make_array_from_process_local_data(shard(v), v) for k, v in arrays.items()}


def device_arrays(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """A batch's arrays less those only the host reads (BM25's retrieval of each example)."""
  return {k: v for k, v in arrays.items() if k not in input_pipeline.HOST_ONLY}


@dataclasses.dataclass(frozen=True)
class BatchRetriever:
  """Retrieves the documents of a batch (see the module docstring)."""
  mode: str                                   # retrieval.mode
  mesh: jax.sharding.Mesh
  k: int                                      # training's k
  index: saved.Index
  passage_tokens: np.ndarray                  # [M, P]
  passage_length: np.ndarray                  # [M]
  device_index: Optional[device_lib.DeviceIndex]
  encode: Callable                            # Steps.encode
  retrieve: Callable                          # Steps.retrieve

  @classmethod
  def of(cls, run, steps) -> "BatchRetriever":
    """The retriever of a `setup.Run` with its `step.Steps`."""
    return cls(mode=run.config.retrieval.mode, mesh=run.mesh, k=run.step_config.k,
               index=run.index, passage_tokens=run.passage_tokens,
               passage_length=run.passage_length, device_index=run.device_index,
               encode=steps.encode, retrieve=steps.retrieve)

  def __call__(self, params, arrays: Dict[str, np.ndarray], replicated: bool = False,
               k: Optional[int] = None) -> Dict[str, Array]:
    """The batch `arrays` on the mesh with its top `k` (default: training's) documents."""
    k = k or self.k
    batch = place(self.mesh, device_arrays(arrays), replicated)
    if self.device_index is not None:
      return self.retrieve(params, batch, self.device_index, k)
    if self.mode == "none":
      # Closed book: one empty passage of score 0, so that each context is the question alone.
      ids = np.zeros((len(arrays["question_ids"]), 1), np.int64)
      docs = {"retrieval_scores": np.zeros(ids.shape, np.float32)}
    elif "bm25_ids" in arrays:  # retrieved up front; these are already this process's rows
      ids, docs = arrays["bm25_ids"][:, :k], {"retrieval_scores": arrays["bm25_scores"][:, :k]}
    else:
      # Every process searches the whole batch's questions and keeps its own rows' documents.
      q = distributed.to_host(self.encode(params, batch))
      ids = np.asarray(self.index.search(q, k)[1], np.int64)
      if not replicated:
        ids = input_pipeline.host_rows(ids)
      docs = {"doc_embeds": np.asarray(self.index.embeddings[np.maximum(ids, 0).ravel()],
                                       np.float32).reshape(ids.shape + (-1,))}
    safe = np.maximum(ids, 0)
    empty = (ids < 0) | (self.mode == "none")
    docs.update({"doc_ids": ids.astype(np.int32), "passage_tokens": self.passage_tokens[safe],
                 "passage_length": np.where(empty, 0, self.passage_length[safe])})
    return dict(batch, **place(self.mesh, docs, replicated))

  def train_inputs(self, params, arrays: Dict[str, np.ndarray]
                   ) -> Tuple[Dict[str, Array], Optional[device_lib.DeviceIndex]]:
    """The train step's (batch, index): in `device` mode the step retrieves itself."""
    if self.device_index is not None:
      return place(self.mesh, device_arrays(arrays)), self.device_index
    return self(params, arrays), None
