"""The RAG training step: state, optimizer, retrieval inside the step, and the update.

One jitted function per retrieval mode, both built from the same loss:

- `device`: the frozen passage vectors and their pre-tokenized passages live on the mesh,
  split by rows over every mesh axis (`DeviceIndex`). The step encodes the questions with the
  *current* query encoder, takes the exact top-k (each shard's, then a global merge), gathers
  the winners' vectors and tokens (each shard contributes its own rows, then a psum) and joins
  them with the question into the generator's contexts: no host round trip.
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
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from rag_jax import rag as rag_lib
from rag_jax import sharding
from rag_jax.index import search as search_lib

Array = jax.Array
Batch = Dict[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step (and checkpoints)."""
  step: Array          # int32 scalar
  params: Any          # {"question_encoder", "generator"}: the trainable params only
  opt_state: Any
  rng: Array           # the run's base key; step s uses fold_in(rng, s)


@dataclasses.dataclass(frozen=True)
class ContextFormat:
  """How a passage and a question join into one generator input, as HF's RagRetriever
  tokenizes `prefix + title / text // question`: [start] passage question [end], truncated
  to `length` (the question is what truncation cuts first, as in HF), then padded.

  Passages are pre-tokenized without special tokens (`prefix + title / text //`), questions
  as `" " + question` without special tokens, so that joining the two token lists is the
  tokenization of the whole string wherever the tokenizer splits at spaces (WordPiece, and
  byte-level BPE with its leading-space tokens).
  """
  length: int          # L, HF's max_combined_length
  start_id: int        # the tokenizer's first special token (BART: <s>, BERT: [CLS])
  end_id: int          # its last (BART: </s>, BERT: [SEP])
  pad_id: int


def join_contexts(passages: Array, passage_length: Array, question: Array,
                  question_length: Array, fmt: ContextFormat) -> Tuple[Array, Array]:
  """Joins each example's Z passages with its question (HF's layout, example-major).

  Args:
    passages: [B, Z, P] int32 content tokens; passage_length: [B, Z].
    question: [B, Q] int32 content tokens; question_length: [B].
    fmt: the ContextFormat.
  Returns:
    context ids [B * Z, L] int32 and their attention mask [B * Z, L] int32.
  """
  b, z, p = passages.shape
  pos = jnp.arange(fmt.length - 2)                                           # [L - 2]
  lp = passage_length[:, :, None]                                            # [B, Z, 1]
  from_passage = jnp.take_along_axis(passages, jnp.clip(pos, 0, p - 1)[None, None].repeat(
      b, 0).repeat(z, 1), axis=2)                                            # [B, Z, L - 2]
  q_pos = jnp.clip(pos[None, None] - lp, 0, question.shape[1] - 1)          # [B, Z, L - 2]
  from_question = jnp.take_along_axis(question[:, None].repeat(z, 1), q_pos, axis=2)
  content = jnp.where(pos < lp, from_passage, from_question)
  n = jnp.minimum(lp + question_length[:, None, None], fmt.length - 2)      # [B, Z, 1]
  content = jnp.where(pos < n, content, fmt.pad_id)
  ids = jnp.concatenate([jnp.full((b, z, 1), fmt.start_id, content.dtype), content,
                         jnp.full((b, z, 1), fmt.pad_id, content.dtype)], axis=2)  # [B, Z, L]
  full = jnp.arange(fmt.length)[None, None]
  ids = jnp.where(full == n + 1, fmt.end_id, ids)
  mask = (full <= n + 1).astype(jnp.int32)
  return ids.reshape(b * z, fmt.length).astype(jnp.int32), mask.reshape(b * z, fmt.length)


# ------------------------------------------------------------------------------------------
# The index on the mesh.


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
  exact: search_lib.ExactSearch = flax.struct.field(pytree_node=False)
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
    exact = search_lib.ExactSearch(embeddings, chunk_size=rows, dtype=dtype, mesh=mesh,
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

    exact = search_lib.ExactSearch(jax.ShapeDtypeStruct((num, dim), jnp.float32),
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


# ------------------------------------------------------------------------------------------
# Optimizer and state.


def frozen_groups(config) -> Tuple[str, ...]:
  """The param groups that get no updates: the query encoder when the config freezes it (the
  paper's "Frozen" ablation) or when BM25 retrieves (nothing reads it then)."""
  r = config.retrieval
  return ("question_encoder",) if r.freeze_query_encoder or r.mode == "bm25" else ()


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup, then linear or cosine decay to 0 by `num_train_steps`, and
  global-norm clipping. config: learning_rate, warmup_steps, num_train_steps, decay
  ("linear" | "cosine" | "constant"), weight_decay, max_grad_norm, adam_b1, adam_b2, adam_eps.

  The `frozen_groups` are frozen by construction: `optax.multi_transform` gives them zero
  updates (no weight decay, no optimizer state), so their params stay bit for bit.
  """
  decay_steps = max(1, config.num_train_steps - config.warmup_steps)
  warmup = optax.linear_schedule(0.0, config.learning_rate, max(1, config.warmup_steps))
  decays = {
      "linear": optax.linear_schedule(config.learning_rate, 0.0, decay_steps),
      "cosine": optax.cosine_decay_schedule(config.learning_rate, decay_steps),
      "constant": optax.constant_schedule(config.learning_rate),
  }
  if config.decay not in decays:
    raise ValueError(f"decay must be one of {sorted(decays)}, got {config.decay!r}")
  schedule = optax.join_schedules([warmup, decays[config.decay]], [config.warmup_steps])
  tx = optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                  weight_decay=config.weight_decay))
  frozen = frozen_groups(config)
  if not frozen:
    return tx
  labels = lambda params: {k: "frozen" if k in frozen else "trained" for k in params}
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def create_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(seed))


# ------------------------------------------------------------------------------------------
# The step.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the loss needs besides the model: static under jit."""
  kind: str = "token"              # "token" | "sequence"
  k: int = 5                       # docs per question
  label_smoothing: float = 0.0
  doc_temperature: float = 1.0     # p(z|x) = softmax(scores / doc_temperature)
  context: Optional[ContextFormat] = None
  frozen: Tuple[str, ...] = ()     # param groups without gradient (`frozen_groups`)


def encode_questions(rag: rag_lib.Rag, params, batch: Batch) -> Array:
  """q(x) without dropout, for the search: [B, Lq] -> [B, D] float32."""
  return rag.question_vectors(params, batch["question_ids"], batch["question_mask"])


def retrieve_on_device(rag: rag_lib.Rag, params, batch: Batch, index: DeviceIndex,
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
  ctx, ctx_mask = join_contexts(batch["passage_tokens"], batch["passage_length"],
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
  `cfg.frozen` groups."""
  params = {k: jax.lax.stop_gradient(v) if k in cfg.frozen else v for k, v in params.items()}
  kq, kg = jax.random.split(rng)
  ctx, ctx_mask, scores = contexts_and_scores(rag, params, batch, cfg, deterministic=False,
                                              rngs={"dropout": kq})
  nll = rag.loss(params, ctx, ctx_mask, scores, batch["labels"], kind=cfg.kind,
                 epsilon=cfg.label_smoothing, deterministic=False, rngs={"dropout": kg})
  return nll.mean()


def train_step(state: TrainState, batch: Batch, index: Optional[DeviceIndex], *,
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
