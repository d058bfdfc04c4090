"""Llama (Touvron et al. 2023) as SmolLM2 uses it: the decoder-only generator, with a KV cache.

Matches HF `LlamaForCausalLM` number for number: pre-norm layers with RMSNorm, rotary position
embeddings (HF's `rotate_half` convention: the two halves of each head, not interleaved pairs),
grouped-query attention (`num_key_value_heads` <= `num_attention_heads`), a SwiGLU feed-forward
(down(act(gate(x)) * up(x))), tied or untied input/output embeddings, optional biases.

Prompts of different lengths share a batch, padded on either side: every row counts its own
positions, `cumsum(attention_mask) - 1` (what HF's `generate` derives from the mask), and
padding is masked as keys.

Entry points (use `Llama.apply(..., method=...)`):
  `__call__(input_ids, attention_mask)` -> logits [B, T, V], teacher forced;
  `continuation_logits(prompt_ids, prompt_mask, target_ids)` -> the logits of targets that
      follow the prompts [B, T, V], teacher forced (RAG's loss);
  `init_cache(batch, max_length)` + `decode_step(ids, cache, attention_mask)` -> incremental
      decoding: prefill a (padded) prompt, then any number of new positions per call;
  `prefill(prompt_ids, prompt_mask, max_length, copies=C, group=G)` + `decode_step` -> the
      same with each prompt's keys/values stored once and shared by its C continuations
      (beams), each continuation's own keys/values in its own buffer.

Shapes: B = batch, T = new positions, D = hidden_size, V = vocab, H = query heads,
H_kv = key/value heads, G = H / H_kv, K = head_dim, F = intermediate_size, L = cache length,
N = layers.
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rag_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """The numbers of a Llama that change its outputs (a subset of HF's LlamaConfig)."""
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 128
  hidden_act: str = "silu"
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  attention_dropout: float = 0.0
  initializer_range: float = 0.02
  pad_token_id: Optional[int] = None
  bos_token_id: Optional[int] = 1
  eos_token_id: Any = 2  # an int, or a list of them

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "LlamaConfig":
    """From an HF `config.json` dict (model_type llama); rope_theta from `rope_parameters`
    (transformers v5) or the top level (v4)."""
    rope = dict(hf.get("rope_parameters") or {})
    for scaling in (hf.get("rope_scaling"), rope):
      kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
      if kind != "default":
        raise ValueError(f"unsupported rope scaling {kind!r} (only unscaled rotary embeddings)")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError(f"unsupported partial_rotary_factor {hf['partial_rotary_factor']}")
    layers.activation(hf.get("hidden_act", "silu"))  # fail at load, not at first use
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in fields and v is not None}
    kwargs["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", cls.rope_theta)))
    heads = kwargs.get("num_attention_heads", cls.num_attention_heads)
    kwargs.setdefault("num_key_value_heads", heads)
    kwargs.setdefault("head_dim", kwargs.get("hidden_size", cls.hidden_size) // heads)
    for k in ("pad_token_id", "bos_token_id"):  # None is meaningful for these
      if k in hf:
        kwargs[k] = hf[k]
    kwargs.update(overrides)
    config = cls(**kwargs)
    if config.num_attention_heads % config.num_key_value_heads:
      raise ValueError(f"num_attention_heads {config.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads {config.num_key_value_heads}")
    if config.head_dim % 2:
      raise ValueError(f"head_dim {config.head_dim} is odd; rotary embeddings need pairs")
    return config


@flax.struct.dataclass
class LlamaCache:
  """Everything incremental decoding carries from step to step.

  All rows write their new positions into the same slots (`index`), so a batch of prompts of
  different lengths, padded, prefills together; `mask` marks which slots of a row hold real
  tokens and `positions` counts them, so each row's rotary positions run on from its own
  prompt. Keys are stored already rotated.

  A cache from `Llama.prefill` also holds a `prefix`: a prompt's keys/values, stored once per
  prompt row and attended to by every row decoding after it. With `copies` C and `group` G,
  decoder row ((b * C + c) * G + g) continues prompt row (b * G + g): the G prompts of example b
  (its documents, for RAG), each continued by C beams (layers.share_rows). The beams' own
  keys/values go to `self_attn`, one buffer per row, so reordering beams moves only those.
  """
  self_attn: Tuple[layers.KVCache, ...]  # N x [B, H_kv, L, K], filled up to `index`
  mask: Array                            # [B, L] int32: 1 = a real token was written there
  positions: Array                       # [B] int32: each row's next rotary position
  index: Array                           # int32 scalar: the next slot to write
  prefix: Tuple[layers.KVCache, ...] = ()  # N x [B / C, H_kv, S, K], the shared prompts
  prefix_mask: Optional[Array] = None    # [B / C, S] int32: the prompts' padding
  copies: int = flax.struct.field(pytree_node=False, default=1)
  group: int = flax.struct.field(pytree_node=False, default=1)


def positions_from_mask(mask: Array) -> Array:
  """[B, T] padding mask (1 = real token) -> [B, T] int32 positions: real tokens count 0, 1,
  ... along each row, whichever side the padding is on (pads get their neighbour's, unused)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rotary(x: Array, positions: Array, theta: float) -> Array:
  """Rotary position embedding, HF's rotate_half convention.

  Args:
    x: [B, T, H, K] queries or keys.
    positions: [B, T] int positions.
    theta: the rotary base (rope_theta).
  Returns:
    [B, T, H, K] in x's dtype; the rotation itself is computed in float32.
  """
  k = x.shape[-1]
  # The frequencies as HF computes them, in float32, so positions in the thousands agree.
  inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, k, 2, dtype=np.float32) / np.float32(k)))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq                 # [B, T, K/2]
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]            # [B, T, 1, K]
  xf = x.astype(jnp.float32)
  half = jnp.concatenate([-xf[..., k // 2:], xf[..., :k // 2]], axis=-1)
  return (xf * jnp.cos(angles) + half * jnp.sin(angles)).astype(x.dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * scale, the statistics in float32 (HF's LlamaRMSNorm)."""
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., D] -> [..., D] in `dtype`."""
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * xf.astype(self.dtype)


class LlamaAttention(nn.Module):
  """Grouped-query self-attention with rotary positions, with or without a KV cache."""
  config: LlamaConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    proj = lambda heads, name: layers.dense(
        (heads, c.head_dim), ("embed", "heads", "kv"), dtype=self.dtype, std=c.initializer_range,
        use_bias=c.attention_bias, name=name)
    self.query = proj(c.num_attention_heads, "query")
    self.key = proj(c.num_key_value_heads, "key")
    self.value = proj(c.num_key_value_heads, "value")
    self.out = layers.dense(c.hidden_size, ("heads", "kv", "embed"), in_axis=(-2, -1),
                            dtype=self.dtype, std=c.initializer_range, use_bias=c.attention_bias,
                            name="out")
    self.dropout = nn.Dropout(c.attention_dropout)

  def _attend(self, query: Array, key: Array, value: Array, bias: Array, deterministic: bool,
              prefix: Optional[layers.KVCache] = None, prefix_bias: Optional[Array] = None,
              share: Tuple[int, int] = (1, 1)) -> Array:
    """query [B, T, H, K], key/value [B, H_kv, S, K], bias [B, 1, T, S] -> [B, T, D]; the
    optional shared `prefix` as layers.dot_product_attention's."""
    b, t, h, k = query.shape
    h_kv = key.shape[1]
    g = h // h_kv
    query = query * jnp.asarray(k ** -0.5, query.dtype)
    # Query head i uses key/value head i // G (HF's repeat_kv): grouping the G query heads of
    # one key/value head as extra query rows lets them share its keys without copying them.
    query = query.transpose(0, 2, 1, 3).reshape(b, h_kv, g * t, k)             # [B, H_kv, G*T, K]
    bias = jnp.tile(bias, (1, 1, g, 1))                                         # [B, 1, G*T, S]
    drop = lambda w: self.dropout(w, deterministic=deterministic)
    mixed = layers.dot_product_attention(query, key, value, bias, drop, self.dtype,
                                         prefix=prefix, prefix_bias=prefix_bias, share=share)
    mixed = mixed.astype(self.dtype).reshape(b, h, t, k).transpose(0, 2, 1, 3)  # [B, T, H, K]
    mixed = nn.with_logical_constraint(mixed, ("batch", "length", "heads", "kv"))
    return self.out(mixed)

  def __call__(self, x: Array, positions: Array, bias: Array, *,
               cache: Optional[layers.KVCache] = None, index: Optional[Array] = None,
               prefix: Optional[layers.KVCache] = None, prefix_bias: Optional[Array] = None,
               share: Tuple[int, int] = (1, 1),
               deterministic: bool = True) -> Tuple[Array, Optional[layers.KVCache]]:
    """Self-attention of x [B, T, D] at `positions` [B, T].

    Without a cache, the keys are x's own and `bias` is [B, 1, T, T]. With one, x's keys and
    values are written into its slots `index .. index + T - 1` and x attends to all L slots,
    `bias` [B, 1, T, L], and to the shared `prefix` [B / C, H_kv, S, K] if given (under
    `prefix_bias` [B / C, 1, 1, S]; `share` = (C, G) as LlamaCache's copies and group).
    Returns [B, T, D] and the updated cache (None without one).
    """
    theta = self.config.rope_theta
    query = rotary(self.query(x), positions, theta)
    heads_major = lambda y: y.transpose(0, 2, 1, 3)
    key = heads_major(rotary(self.key(x), positions, theta))                  # [B, H_kv, T, K]
    value = heads_major(self.value(x))
    if cache is not None:
      zero = jnp.zeros((), jnp.int32)
      write = lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype),
                                                            (zero, zero, index, zero))
      cache = layers.KVCache(key=write(cache.key, key), value=write(cache.value, value))
      key, value = cache.key.astype(self.dtype), cache.value.astype(self.dtype)
    if prefix is not None:
      prefix = layers.KVCache(prefix.key.astype(self.dtype), prefix.value.astype(self.dtype))
    return self._attend(query, key, value, bias, deterministic, prefix, prefix_bias,
                        share), cache


class LlamaLayer(nn.Module):
  """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: LlamaConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.attn_norm = RMSNorm(c.rms_norm_eps, self.dtype, name="attn_norm")
    self.attn = LlamaAttention(c, self.dtype, name="attn")
    self.mlp_norm = RMSNorm(c.rms_norm_eps, self.dtype, name="mlp_norm")
    ff = lambda n, axes, name: layers.dense(n, axes, dtype=self.dtype, std=c.initializer_range,
                                            use_bias=c.mlp_bias, name=name)
    self.gate = ff(c.intermediate_size, ("embed", "mlp"), "gate")
    self.up = ff(c.intermediate_size, ("embed", "mlp"), "up")
    self.down = ff(c.hidden_size, ("mlp", "embed"), "down")

  def __call__(self, x: Array, positions: Array, bias: Array, *,
               cache: Optional[layers.KVCache] = None, index: Optional[Array] = None,
               prefix: Optional[layers.KVCache] = None, prefix_bias: Optional[Array] = None,
               share: Tuple[int, int] = (1, 1),
               deterministic: bool = True) -> Tuple[Array, Optional[layers.KVCache]]:
    """x [B, T, D] -> [B, T, D], and the updated cache when one is given (the attention
    arguments as LlamaAttention's)."""
    h, cache = self.attn(self.attn_norm(x), positions, bias, cache=cache, index=index,
                         prefix=prefix, prefix_bias=prefix_bias, share=share,
                         deterministic=deterministic)
    x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
    y = self.mlp_norm(x)
    h = layers.activation(self.config.hidden_act)(self.gate(y)) * self.up(y)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    x = nn.with_logical_constraint(x + self.down(h), ("batch", "length", "embed"))
    return x, cache


class Llama(nn.Module):
  """Llama decoder with its LM head (HF's LlamaForCausalLM).

  Attributes:
    config: the LlamaConfig.
    dtype: computation dtype; parameters stay float32 and logits are returned in float32.
    remat: rematerialisation of the layers in teacher-forced training, one of
      layers.REMAT_POLICIES ("none", "dots", "full").
  """
  config: LlamaConfig
  dtype: Any = jnp.float32
  remat: str = "none"

  def setup(self):
    c = self.config
    self.embed_tokens = layers.embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), self.dtype,
                                     c.initializer_range, "embed_tokens")
    self.layers = [LlamaLayer(c, self.dtype, name=f"layers_{i}")
                   for i in range(c.num_hidden_layers)]
    self.norm = RMSNorm(c.rms_norm_eps, self.dtype, name="norm")
    if not c.tie_word_embeddings:
      self.lm_head = layers.dense(c.vocab_size, ("embed", "vocab"), dtype=self.dtype,
                                  std=c.initializer_range, use_bias=False, name="lm_head")

  def _embed(self, ids: Array) -> Array:
    return nn.with_logical_constraint(self.embed_tokens(ids), ("batch", "length", "embed"))

  def logits(self, hidden: Array) -> Array:
    """Final states [B, T, D] (after the last norm) -> float32 logits [B, T, V]."""
    if self.config.tie_word_embeddings:
      out = self.embed_tokens.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return nn.with_logical_constraint(out, ("batch", "length", "vocab")).astype(jnp.float32)

  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None, *,
               deterministic: bool = True, return_hidden: bool = False) -> Array:
    """Teacher-forced forward pass.

    Args:
      input_ids: [B, T] token ids, padded on either side.
      attention_mask: [B, T] 1 = real token (default: none padded). Each row's positions are
        `cumsum(mask) - 1`; the logits at padded positions are meaningless.
      return_hidden: return the final states [B, T, D] (after the last norm, HF's
        `last_hidden_state`) instead.
    Returns:
      float32 logits [B, T, V], or with `return_hidden` the states [B, T, D] in `dtype`.
    """
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    steps = jnp.arange(input_ids.shape[1])
    bias = layers.causal_bias(steps, steps) + layers.padding_bias(attention_mask)  # [B, 1, T, T]
    positions = positions_from_mask(attention_mask)
    run = layers.remat(lambda layer, x, positions, bias: layer(
        x, positions, bias, deterministic=deterministic)[0], self.remat)
    x = self._embed(input_ids)
    for layer in self.layers:
      x = run(layer, x, positions, bias)
    x = self.norm(x)
    return x if return_hidden else self.logits(x)

  def init_cache(self, batch: int, max_length: int) -> LlamaCache:
    """An empty cache for `max_length` slots (prompt, padding included, plus new tokens).

    Args:
      batch: B.
      max_length: L.
    """
    c = self.config
    zeros = jnp.zeros((batch, c.num_key_value_heads, max_length, c.head_dim), self.dtype)
    return LlamaCache(self_attn=tuple(layers.KVCache(zeros, zeros) for _ in self.layers),
                      mask=jnp.zeros((batch, max_length), jnp.int32),
                      positions=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))

  def decode_step(self, input_ids: Array, cache: LlamaCache,
                  attention_mask: Optional[Array] = None, *,
                  deterministic: bool = True) -> Tuple[Array, LlamaCache]:
    """Runs T new positions against the cache: the (padded) prompt first, then new tokens.

    Args:
      input_ids: [B, T] the tokens for slots index .. index + T - 1; the caller keeps
        index + T <= L (the index is traced, so it is not checked here: past L, writes would
        land on the last slot).
      cache: from `init_cache`, `prefill` or the previous step.
      attention_mask: [B, T] 1 = real token (default: all real); padded slots are never
        attended to and do not advance a row's positions.
    Returns:
      float32 logits [B, T, V] and the advanced cache.
    """
    hidden, cache = self._run(input_ids, cache, attention_mask, deterministic)
    return self.logits(hidden), cache

  def _run(self, input_ids: Array, cache: LlamaCache, attention_mask: Optional[Array],
           deterministic: bool) -> Tuple[Array, LlamaCache]:
    """`decode_step` up to the final norm: ([B, T, D] states, the advanced cache)."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    attention_mask = attention_mask.astype(jnp.int32)
    t, length = input_ids.shape[1], cache.mask.shape[1]
    positions = cache.positions[:, None] + positions_from_mask(attention_mask)   # [B, T]
    mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask,
                                        (jnp.zeros((), jnp.int32), cache.index))  # [B, L]
    bias = (layers.causal_bias(cache.index + jnp.arange(t), jnp.arange(length))
            + layers.padding_bias(mask))                                          # [B, 1, T, L]
    prefix = cache.prefix or (None,) * len(self.layers)
    prefix_bias = None if cache.prefix_mask is None else layers.padding_bias(cache.prefix_mask)
    x = self._embed(input_ids)
    new = []
    for layer, kv, pre in zip(self.layers, cache.self_attn, prefix):
      x, kv = layer(x, positions, bias, cache=kv, index=cache.index, prefix=pre,
                    prefix_bias=prefix_bias, share=(cache.copies, cache.group),
                    deterministic=deterministic)
      new.append(kv)
    cache = cache.replace(self_attn=tuple(new), mask=mask,
                          positions=cache.positions + attention_mask.sum(axis=1),
                          index=cache.index + t)
    return self.norm(x), cache

  def prefill(self, prompt_ids: Array, prompt_mask: Array, max_length: int, *,
              copies: int = 1, group: int = 1, deterministic: bool = True) -> LlamaCache:
    """A cache holding the prompts' keys/values once, for C continuations of each.

    Args:
      prompt_ids, prompt_mask: [P, S] padded prompts, P = B * G (G prompts per example,
        example-major), padded on either side.
      max_length: L, the new positions each continuation may decode.
      copies: C, the continuations (beams, candidates) of each prompt.
      group: G.
    Returns:
      A LlamaCache of P * C rows ordered (example, copy, prompt of the group), with empty
      buffers of L slots, whose `prefix` holds the P prompts' keys/values (no logits are
      computed for the prompts: the first decoded token continues them).
    """
    p, s = prompt_ids.shape
    _, prompt = self._run(prompt_ids, self.init_cache(p, s), prompt_mask, deterministic)
    rows = layers.expand_rows(prompt_mask.sum(axis=1).astype(jnp.int32), copies, group)
    empty = self.init_cache(p * copies, max_length)
    return empty.replace(positions=rows, prefix=prompt.self_attn, prefix_mask=prompt.mask,
                         copies=copies, group=group)

  def continuation_logits(self, prompt_ids: Array, prompt_mask: Array, target_ids: Array, *,
                          deterministic: bool = True) -> Array:
    """Teacher forcing of targets that follow padded prompts (the training pass).

    Args:
      prompt_ids, prompt_mask: [B, S] padded on either side (the positions follow the mask).
      target_ids: [B, T], every position real (a pad id inside a target is read as a token,
        as a cached step reads it).
    Returns:
      float32 logits [B, T, V] of the target positions (the prompt's are never projected
      onto the vocabulary).
    """
    ids = jnp.concatenate([prompt_ids, target_ids], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32),
                            jnp.ones(target_ids.shape, jnp.int32)], axis=1)
    hidden = self(ids, mask, deterministic=deterministic, return_hidden=True)
    return self.logits(hidden[:, prompt_ids.shape[1]:])
