"""The RAG training step: state, optimizer, retrieval inside the step, and the update.

One jitted function per retrieval mode, both built from the same loss:

- `device`: the frozen passage vectors and their pre-tokenized passages live on the mesh,
  split by rows over every mesh axis (`index.device.DeviceIndex`). The step encodes the
  questions with the *current* query encoder, takes the exact top-k (each shard's, then a
  global merge), gathers the winners' vectors and tokens (each shard contributes its own
  rows, then a psum) and joins them with the question into the generator's contexts: no host
  round trip.
- `host`: any saved index (ScaNN, FAISS, ...) is searched between `encode_questions` (jitted)
  and the step, which gets the retrieved ids, vectors and passage tokens in the batch.

Both recompute the doc scores q(x) . stop_gradient(d(z)) under the gradient, so the query
encoder learns through them; the document encoder is not in the state at all (frozen by
construction). Retrieval uses q(x) without dropout (a top-k is not differentiated, and
dropout noise in the search would only add variance); the doc scores under the gradient use
it with dropout, as HF does.

Shapes: B = global batch, Z = docs retrieved (k), Lq = question tokens, Q = the question's
generator tokens, P = a passage's generator tokens, L = context length, T = target length,
D = retrieval dim, N = passages.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from rag_jax import contexts
from rag_jax import rag as rag_lib
from rag_jax import sharding
from rag_jax.index import device as device_lib
from rag_jax.train import optimizer

Array = jax.Array
Batch = Dict[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step (and checkpoints)."""
  step: Array          # int32 scalar
  params: Any          # {"question_encoder", "generator"}: the trainable params only
  opt_state: Any
  rng: Array           # the run's base key; step s uses fold_in(rng, s)


# ------------------------------------------------------------------------------------------
# The state.


def create_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(seed))


def abstract_state(rag: rag_lib.Rag, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """The state's shapes, its params boxed with the modules' logical axes (for shardings)."""
  ids = jnp.ones((1, 4), jnp.int32)
  # An encoder-decoder reads contexts and targets; a decoder-only model one sequence.
  g_inputs = (ids, ids, ids) if rag.gen.has_encoder else (ids, ids)
  boxed = jax.eval_shape(lambda: {
      "question_encoder": rag.question_encoder.init(jax.random.PRNGKey(0), ids, ids)["params"],
      "generator": rag.generator.init(jax.random.PRNGKey(0), *g_inputs)["params"]})
  return jax.eval_shape(lambda: create_state(boxed, tx, seed))


# ------------------------------------------------------------------------------------------
# The step.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the loss needs besides the model: static under jit."""
  kind: str = "token"              # "token" | "sequence"
  k: int = 5                       # docs per question
  label_smoothing: float = 0.0
  doc_temperature: float = 1.0     # p(z|x) = softmax(scores / doc_temperature)
  context: Optional[contexts.ContextFormat] = None
  frozen: Tuple[str, ...] = ()     # params without gradient (`optimizer.frozen_params`)


def encode_questions(rag: rag_lib.Rag, params, batch: Batch) -> Array:
  """q(x) without dropout, for the search: [B, Lq] -> [B, D] float32."""
  return rag.question_vectors(params, batch["question_ids"], batch["question_mask"])


def retrieve_on_device(rag: rag_lib.Rag, params, batch: Batch, index: device_lib.DeviceIndex,
                       k: int) -> Batch:
  """The batch with the current query encoder's top-k docs: doc_ids [B, Z],
  doc_embeds [B, Z, D], passage_tokens [B, Z, P], passage_length [B, Z]."""
  q = jax.lax.stop_gradient(encode_questions(rag, params, batch))
  _, ids = index.search(q, k)
  embeds, tokens, lengths = index.gather(ids)
  return dict(batch, doc_ids=ids, doc_embeds=embeds, passage_tokens=tokens,
              passage_length=lengths)


def contexts_and_scores(rag: rag_lib.Rag, params, batch: Batch, cfg: StepConfig, *,
                        deterministic: bool = True, rngs=None) -> Tuple[Array, Array, Array]:
  """Generator contexts [B * Z, L] (ids, mask) and the doc scores [B, Z] / temperature.

  The scores are q(x) . d(z), or a batch's `retrieval_scores` [B, Z] where a retriever
  without vectors found the docs (BM25, whose scores the paper's ablation uses as the
  logits of p(z|x))."""
  ctx, ctx_mask = contexts.join_contexts(batch["passage_tokens"], batch["passage_length"],
                                batch["question_tokens"], batch["question_length"], cfg.context)
  if "retrieval_scores" in batch:
    scores = batch["retrieval_scores"]
  else:
    scores = rag.doc_scores(params, batch["question_ids"], batch["question_mask"],
                            batch["doc_embeds"], deterministic=deterministic, rngs=rngs)
  valid = batch["doc_ids"] >= 0
  return ctx, ctx_mask, jnp.where(valid, scores / cfg.doc_temperature, -jnp.inf)


def loss_fn(rag: rag_lib.Rag, params, batch: Batch, rng: Array, cfg: StepConfig) -> Array:
  """Mean per-example RAG NLL of a retrieved batch, dropout on; no gradient reaches the
  `cfg.frozen` params."""
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jax.lax.stop_gradient(v) if optimizer.is_frozen(path, cfg.frozen) else v, params)
  kq, kg = jax.random.split(rng)
  ctx, ctx_mask, scores = contexts_and_scores(rag, params, batch, cfg, deterministic=False,
                                              rngs={"dropout": kq})
  nll = rag.loss(params, ctx, ctx_mask, scores, batch["labels"], kind=cfg.kind,
                 epsilon=cfg.label_smoothing, deterministic=False, rngs={"dropout": kg})
  return nll.mean()


def train_step(state: TrainState, batch: Batch, index: Optional[device_lib.DeviceIndex], *,
               rag: rag_lib.Rag, tx: optax.GradientTransformation,
               cfg: StepConfig) -> Tuple[TrainState, Dict[str, Array]]:
  """One update. `index` is the DeviceIndex in `device` mode; None in `host` mode, where the
  batch carries the retrieved docs. Returns the new state and {"loss", "grad_norm"}."""
  if index is not None:
    batch = retrieve_on_device(rag, state.params, batch, index, cfg.k)
  rng = jax.random.fold_in(state.rng, state.step)
  loss, grads = jax.value_and_grad(functools.partial(loss_fn, rag, cfg=cfg))(
      state.params, batch, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def jit_train_step(rag: rag_lib.Rag, tx, cfg: StepConfig, state_sharding=None):
  """`train_step` under one jax.jit, the state donated (and kept in `state_sharding`, when
  given). The inputs come placed: the state, the batch over the data axes, the index over the
  mesh. Call it as step(state, batch, index_or_None) -> (state, {"loss", "grad_norm"})."""
  fn = functools.partial(train_step, rag=rag, tx=tx, cfg=cfg)
  if state_sharding is None:
    return jax.jit(fn, donate_argnums=(0,))
  mesh = jax.tree.leaves(state_sharding)[0].mesh
  metrics = {"loss": sharding.replicated(mesh), "grad_norm": sharding.replicated(mesh)}
  return jax.jit(fn, out_shardings=(state_sharding, metrics), donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class Steps:
  """A run's jitted functions, built once (`make_steps`) and passed to whatever calls them: the
  loop, the batch retriever, evaluation's predict function."""
  train: Callable      # (state, batch, index or None) -> (state, {"loss", "grad_norm"})
  encode: Callable     # (params, batch) -> q(x) [B, D] float32, no dropout
  retrieve: Callable   # (params, batch, index, k) -> the batch with its top-k docs
  contexts: Callable   # (params, retrieved batch) -> contexts [B * Z, L], mask, scores [B, Z]


def make_steps(rag: rag_lib.Rag, tx, cfg: StepConfig, state_sharding=None) -> Steps:
  """The jitted functions of a run of `rag` (see `Steps`)."""
  # Module-level jits with the model and settings static: runs of the same model share them.
  return Steps(train=jit_train_step(rag, tx, cfg, state_sharding),
               encode=functools.partial(_ENCODE, rag),
               retrieve=functools.partial(_RETRIEVE, rag),
               contexts=lambda params, batch: _CONTEXTS(rag, params, batch, cfg))


_ENCODE = jax.jit(encode_questions, static_argnums=0)
_RETRIEVE = jax.jit(retrieve_on_device, static_argnums=(0, 4))
_CONTEXTS = jax.jit(contexts_and_scores, static_argnums=(0, 3))
