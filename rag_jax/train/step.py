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
from flax import linen as nn
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
  """How a passage and a question join into one generator input: `prefix` + passage +
  question + `suffix`, truncated to `length`, then padded on the right. What truncation cuts
  first is the question, as in HF, or with `keep_question` the passage (a decoder-only
  generator's prompt, as `RagModel.contextualize` makes it: the answer follows the question).

  BART's is HF RagRetriever's tokenization of `prefix + title / text // question`: prefix
  (<s>,), suffix (</s>,). A decoder-only generator's is its prompt: with a chat template,
  the prefix is the template up to the user's text (system turn included) and the suffix
  the end of that turn and the assistant's header, so the target follows the prompt.

  Passages are pre-tokenized without special tokens (`prefix + title / text //`), questions
  as `" " + question` without special tokens, so that joining the token lists is the
  tokenization of the whole string wherever the tokenizer splits at spaces and newlines
  (WordPiece, and byte-level BPE with its leading-space tokens).
  """
  length: int                # L, HF's max_combined_length
  prefix: Tuple[int, ...]    # tokens before the passage
  suffix: Tuple[int, ...]    # tokens after the question
  pad_id: int
  keep_question: bool = False

  @property
  def content_length(self) -> int:
    """The most passage + question tokens an input holds."""
    return self.length - len(self.prefix) - len(self.suffix)


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
  pre, suf, c = len(fmt.prefix), len(fmt.suffix), fmt.content_length
  pos = jnp.arange(c)                                                        # [C]
  lp = passage_length[:, :, None]                                            # [B, Z, 1]
  if fmt.keep_question:
    lp = jnp.minimum(lp, c - jnp.minimum(question_length, c)[:, None, None])
  from_passage = jnp.take_along_axis(passages, jnp.clip(pos, 0, p - 1)[None, None].repeat(
      b, 0).repeat(z, 1), axis=2)                                            # [B, Z, C]
  q_pos = jnp.clip(pos[None, None] - lp, 0, question.shape[1] - 1)          # [B, Z, C]
  from_question = jnp.take_along_axis(question[:, None].repeat(z, 1), q_pos, axis=2)
  content = jnp.where(pos < lp, from_passage, from_question)
  n = jnp.minimum(lp + question_length[:, None, None], c)                   # [B, Z, 1]
  content = jnp.where(pos < n, content, fmt.pad_id).astype(jnp.int32)
  ids = jnp.pad(content, ((0, 0), (0, 0), (pre, suf)), constant_values=fmt.pad_id)  # [B, Z, L]
  full = jnp.arange(fmt.length)[None, None]                                  # [1, 1, L]
  if pre:
    prefix = jnp.asarray(fmt.prefix + (fmt.pad_id,) * (fmt.length - pre), jnp.int32)
    ids = jnp.where(full < pre, prefix, ids)
  if suf:
    at = full - pre - n                                                      # [B, Z, L]
    suffix = jnp.asarray(fmt.suffix, jnp.int32)[jnp.clip(at, 0, suf - 1)]
    ids = jnp.where((at >= 0) & (at < suf), suffix, ids)
  mask = (full < pre + n + suf).astype(jnp.int32)
  return ids.reshape(b * z, fmt.length), mask.reshape(b * z, fmt.length)


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


def frozen_params(config, rag: rag_lib.Rag) -> Tuple[str, ...]:
  """The params that get no updates, as "/"-joined path prefixes of the params tree:

  - "question_encoder" when the config freezes it (the paper's "Frozen" ablation) or when
    nothing reads it (BM25 retrieval, a closed-book run);
  - with `model.train_generator_layers` = n > 0, all of a decoder-only generator but its
    top n layers and final norm: what a short run on a CPU can train of a 135M model (the
    embeddings, tied to the LM head in SmolLM2, stay as they are).

  Raises:
    ValueError: train_generator_layers for a generator it does not apply to.
  """
  r = config.retrieval
  frozen = ["question_encoder"] if r.freeze_query_encoder or r.mode in ("bm25", "none") else []
  n = config.model.train_generator_layers
  if n:
    if rag.gen.has_encoder:
      raise ValueError("config model.train_generator_layers applies to a decoder-only "
                       "generator; BART trains whole")
    total = rag.generator.config.num_hidden_layers
    if not 0 < n <= total:
      raise ValueError(f"config model.train_generator_layers={n}: the generator has {total} "
                       "layers")
    frozen += ["generator/embed_tokens", "generator/lm_head"]
    frozen += [f"generator/layers_{i}" for i in range(total - n)]
  return tuple(frozen)


def is_frozen(path, frozen: Tuple[str, ...]) -> bool:
  """Whether the param at `path` (a jax key path) is under one of the `frozen` prefixes."""
  name = _path_name(path)
  return any(name == f or name.startswith(f + "/") for f in frozen)


def _path_name(path) -> str:
  """"question_encoder/encoder/layer_0/..." for a jax key path."""
  return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def make_optimizer(config, frozen: Tuple[str, ...] = ()) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with linear warmup and linear or cosine decay to 0 by
  `num_train_steps`. config: learning_rate, question_encoder_lr_scale (the query encoder's
  rate is learning_rate times it), warmup_steps, num_train_steps, decay ("linear" | "cosine"
  | "constant"), weight_decay, max_grad_norm, adam_b1, adam_b2, adam_eps.

  The `frozen` params (`frozen_params`) are frozen by construction: `optax.multi_transform`
  gives them zero updates (no weight decay, no optimizer state), so they stay bit for bit.
  Their gradients are zero (the step stops them), so the clipping norm is the trained params'.
  """
  decays = {"linear": lambda peak, steps: optax.linear_schedule(peak, 0.0, steps),
            "cosine": optax.cosine_decay_schedule,
            "constant": lambda peak, steps: optax.constant_schedule(peak)}
  if config.decay not in decays:
    raise ValueError(f"decay must be one of {sorted(decays)}, got {config.decay!r}")

  def adamw(peak: float) -> optax.GradientTransformation:
    decay = decays[config.decay](peak, max(1, config.num_train_steps - config.warmup_steps))
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(1, config.warmup_steps)), decay],
        [config.warmup_steps])
    return optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                       weight_decay=config.weight_decay)

  scale = config.get("question_encoder_lr_scale", 1.0)
  if not (np.isfinite(scale) and scale >= 0):
    raise ValueError(f"question_encoder_lr_scale must be finite and >= 0, got {scale!r}")

  # The same groups whatever is frozen or scaled, so that the state's layout depends only on
  # which params are frozen (see checkpoint.Manager.restore_latest).
  def label(path, _) -> str:
    if is_frozen(path, frozen):
      return "frozen"
    return "question_encoder" if _path_name(path[:1]) == "question_encoder" else "trained"
  # A boxed param (the abstract state, whose shardings come from its logical axes) is
  # labelled whole, so that its box stays around its value or is masked with it.
  labels = lambda params: jax.tree_util.tree_map_with_path(
      label, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.multi_transform({"trained": adamw(config.learning_rate),
                             "question_encoder": adamw(config.learning_rate * scale),
                             "frozen": optax.set_to_zero()}, labels))


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
  context: Optional[ContextFormat] = None
  frozen: Tuple[str, ...] = ()     # params without gradient (`frozen_params`)


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
  `cfg.frozen` params."""
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jax.lax.stop_gradient(v) if is_frozen(path, cfg.frozen) else v, params)
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
