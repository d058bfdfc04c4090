"""The optimizer, and what it leaves frozen: AdamW per part of the params, frozen parts zeroed by
construction (`optax.multi_transform`), global-norm clipping first."""

from typing import Tuple

from flax import linen as nn
import jax
import numpy as np
import optax

from rag_jax import rag as rag_lib


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
