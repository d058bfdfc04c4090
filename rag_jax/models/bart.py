"""BART (Lewis et al. 2019): the seq2seq generator of RAG, with a key/value cache for decoding.

Matches HF `BartForConditionalGeneration` number for number: learned positions with offset 2,
`layernorm_embedding`, `scale_embedding`, post-LN layers, shared input/output embeddings (or, with
`tie_word_embeddings=False`, separate encoder, decoder and output embeddings as HF v5 has them),
`final_logits_bias`.

Three entry points (use `Bart.apply(..., method=...)`):
  `encode(input_ids, attention_mask)` -> encoder states [B, S, D];
  `decode(decoder_input_ids, encoder_states, encoder_mask)` -> logits [B, T, V], teacher forced;
  `init_cache(encoder_states, max_length)` + `decode_step(ids, cache, encoder_mask)` ->
      incremental decoding, one or more new positions per call.
With `scan_layers=True` the encoder and the teacher-forced decoder run their layers as one
`nn.scan` each (rag_jax.models.scan); cached decoding then needs the unscanned module.

Shapes: B = batch, S = source length, T = target length, D = d_model, V = vocab, H = heads,
K = head width, L = cache length, N = decoder layers.
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rag_jax.models import layers
from rag_jax.models import scan

Array = jax.Array
POSITION_OFFSET = 2  # BART's learned positions start at row 2 (a fairseq legacy).


@dataclasses.dataclass(frozen=True)
class BartConfig:
  """The numbers of a BART that change its outputs (a subset of HF's BartConfig)."""
  vocab_size: int = 50265
  max_position_embeddings: int = 1024
  d_model: int = 1024
  encoder_layers: int = 12
  decoder_layers: int = 12
  encoder_attention_heads: int = 16
  decoder_attention_heads: int = 16
  encoder_ffn_dim: int = 4096
  decoder_ffn_dim: int = 4096
  activation_function: str = "gelu"
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  init_std: float = 0.02
  scale_embedding: bool = False
  tie_word_embeddings: bool = True
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  decoder_start_token_id: int = 2
  forced_bos_token_id: Optional[int] = None
  forced_eos_token_id: Optional[int] = 2

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "BartConfig":
    """From an HF `config.json` dict (model_type bart)."""
    for key in ("normalize_before", "add_final_layer_norm"):
      if hf.get(key):
        raise ValueError(f"unsupported BART variant: {key}=true (pre-LN is mBART, not BART)")
    layers.activation(hf.get("activation_function", "gelu"))  # fail at load, not at first use
    for key in ("encoder_layerdrop", "decoder_layerdrop"):
      if hf.get(key):
        logging.warning("BART %s=%s is not implemented; training runs every layer", key, hf[key])
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in fields}
    kwargs = {k: v for k, v in kwargs.items()
              if v is not None or k in ("forced_bos_token_id", "forced_eos_token_id")}
    kwargs.update(overrides)
    config = cls(**kwargs)
    for prefix in ("encoder", "decoder"):
      heads = getattr(config, f"{prefix}_attention_heads")
      if config.d_model % heads:
        raise ValueError(f"d_model {config.d_model} is not a multiple of {prefix}_attention_heads "
                         f"{heads}")
    return config


@flax.struct.dataclass
class DecoderCache:
  """Everything incremental decoding carries from step to step.

  The decoder rows may outnumber the encoder rows: beams (or candidates) decoded against the
  same source share its projected encoder states instead of each holding a copy. With
  `cross_copies` C and `cross_group` G, decoder row ((b * C + c) * G + g) attends to encoder
  row (b * G + g): the G sources of example b (its documents, for RAG), each decoded C times.
  """
  self_attn: Tuple[layers.KVCache, ...]   # N x [B * C * G, H, L, K], filled up to `index`
  cross_attn: Tuple[layers.KVCache, ...]  # N x [B * G, H, S, K], the projected encoder states
  index: Array                            # int32 scalar: the next position to write
  cross_copies: int = flax.struct.field(pytree_node=False, default=1)
  cross_group: int = flax.struct.field(pytree_node=False, default=1)


class BartLayer(nn.Module):
  """Post-LN BART layer; a decoder layer (`decoder=True`) adds cross-attention."""
  config: BartConfig
  decoder: bool
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    heads = c.decoder_attention_heads if self.decoder else c.encoder_attention_heads
    ffn = c.decoder_ffn_dim if self.decoder else c.encoder_ffn_dim
    attn = lambda name: layers.Attention(heads, c.d_model // heads, dtype=self.dtype,
                                         dropout_rate=c.attention_dropout, init_std=c.init_std,
                                         name=name)
    norm = lambda name: layers.layer_norm(1e-5, self.dtype, name)
    self.self_attn, self.self_attn_norm = attn("self_attn"), norm("self_attn_norm")
    if self.decoder:
      self.cross_attn, self.cross_attn_norm = attn("cross_attn"), norm("cross_attn_norm")
    self.mlp = layers.MLP(ffn, c.d_model, c.activation_function, dtype=self.dtype,
                          dropout_rate=c.activation_dropout, init_std=c.init_std, name="mlp")
    self.mlp_norm = norm("mlp_norm")
    self.drop = nn.Dropout(c.dropout)

  def _residual(self, x, h, norm, deterministic):
    x = norm(x + self.drop(h, deterministic=deterministic))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def __call__(self, x: Array, self_bias: Optional[Array], *,
               cross_kv: Optional[layers.KVCache] = None, cross_bias: Optional[Array] = None,
               self_cache: Optional[layers.KVCache] = None, index: Optional[Array] = None,
               cross_share: Tuple[int, int] = (1, 1),
               deterministic: bool = True) -> Tuple[Array, Optional[layers.KVCache]]:
    """x [B, T, D] -> [B, T, D], and the updated self-attention cache when one is given.

    `cross_share` (C, G): C consecutive groups of G rows of x share the G rows of `cross_kv`
    and `cross_bias` (see `DecoderCache`).
    """
    if self_cache is None:
      h = self.self_attn(x, bias=self_bias, deterministic=deterministic)
    else:
      h, self_cache = self.self_attn.cached_self_attention(x, self_cache, index, bias=self_bias,
                                                           deterministic=deterministic)
    x = self._residual(x, h, self.self_attn_norm, deterministic)
    if self.decoder:
      # Cross-attention has no causal mask, so the copies sharing a source's keys attend to
      # them as extra query positions of one row (layers.share_rows).
      h = layers.unshare_rows(self.cross_attn(layers.share_rows(x, *cross_share), bias=cross_bias,
                                              kv=cross_kv, deterministic=deterministic),
                              *cross_share)
      x = self._residual(x, h, self.cross_attn_norm, deterministic)
    x = self._residual(x, self.mlp(x, deterministic), self.mlp_norm, deterministic)
    return x, self_cache

  def project_cross_kv(self, encoder_states: Array) -> layers.KVCache:
    return self.cross_attn.project_kv(encoder_states)


class Bart(nn.Module):
  """BART encoder-decoder with its LM head.

  Attributes:
    config: the BartConfig.
    dtype: computation dtype; parameters stay float32 and logits are returned in float32.
    remat: rematerialisation of the layers in training, one of layers.REMAT_POLICIES
      ("none", "dots", "full"): less activation memory for some recomputation.
    scan_layers: run the encoder's and the teacher-forced decoder's layers as one `nn.scan`
      each (rag_jax.models.scan): compiled once, params under "encoder_layers" and
      "decoder_layers" stacked [N, ...] instead of "encoder_layers_0", ... (`scan.stack_layers`
      / `scan.unstack_layers` convert). `init_cache` / `decode_step` need the unscanned module.
  """
  config: BartConfig
  dtype: Any = jnp.float32
  remat: str = "none"
  scan_layers: bool = False

  @property
  def layer_stacks(self) -> dict:
    """{name: number of layers} of the layer stacks (see rag_jax.models.scan)."""
    return {"encoder_layers": self.config.encoder_layers,
            "decoder_layers": self.config.decoder_layers}

  def setup(self):
    c = self.config
    tokens = lambda name: layers.embed(c.vocab_size, c.d_model, ("vocab", "embed"), self.dtype,
                                       c.init_std, name)
    if c.tie_word_embeddings:
      # One matrix embeds source and target tokens and is the output projection.
      self.shared = tokens("shared")
      self.encoder_tokens = self.decoder_tokens = self.shared
    else:
      # HF (v5) unties all three: encoder, decoder and lm_head have their own.
      self.encoder_tokens = tokens("encoder_embed_tokens")
      self.decoder_tokens = tokens("decoder_embed_tokens")
    pos = lambda name: layers.embed(c.max_position_embeddings + POSITION_OFFSET, c.d_model,
                                    (None, "embed"), self.dtype, c.init_std, name)
    norm = lambda name: layers.layer_norm(1e-5, self.dtype, name)
    self.encoder_positions, self.encoder_embed_norm = pos("encoder_positions"), norm(
        "encoder_embed_norm")
    self.decoder_positions, self.decoder_embed_norm = pos("decoder_positions"), norm(
        "decoder_embed_norm")
    self.encoder_layers = scan.make_stack(lambda name: BartLayer(c, False, self.dtype, name=name),
                                          "encoder_layers", c.encoder_layers, self.scan_layers)
    self.decoder_layers = scan.make_stack(lambda name: BartLayer(c, True, self.dtype, name=name),
                                          "decoder_layers", c.decoder_layers, self.scan_layers)
    if not c.tie_word_embeddings:
      self.lm_head = layers.dense(c.vocab_size, ("embed", "vocab"), dtype=self.dtype,
                                  std=c.init_std, use_bias=False, name="lm_head")
    self.final_logits_bias = self.param(
        "final_logits_bias", nn.with_logical_partitioning(nn.initializers.zeros, (None, "vocab")),
        (1, c.vocab_size), jnp.float32)
    self.drop = nn.Dropout(c.dropout)

  def _check_length(self, n: int, what: str):
    # Flax's Embed gives NaN rows for out-of-range ids; a too-long input must fail instead.
    if n > self.config.max_position_embeddings:
      raise ValueError(f"{what}: {n} positions exceed max_position_embeddings "
                       f"{self.config.max_position_embeddings}")

  def _embed(self, ids: Array, positions: Array, token_embed, pos_embed, norm,
             deterministic: bool) -> Array:
    """ids [B, T], positions [T] -> [B, T, D]."""
    scale = self.config.d_model ** 0.5 if self.config.scale_embedding else 1.0
    x = token_embed(ids) * jnp.asarray(scale, self.dtype)
    x = x + pos_embed(positions + POSITION_OFFSET)[None]
    x = self.drop(norm(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def encode(self, input_ids: Array, attention_mask: Optional[Array] = None, *,
             deterministic: bool = True) -> Array:
    """input_ids, attention_mask [B, S] -> encoder states [B, S, D] in `dtype`."""
    self._check_length(input_ids.shape[1], "encoder input")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    x = self._embed(input_ids, jnp.arange(input_ids.shape[1]), self.encoder_tokens,
                    self.encoder_positions,
                    self.encoder_embed_norm, deterministic)
    bias = layers.padding_bias(attention_mask)
    return scan.apply_stack(
        lambda layer, x, bias: layer(x, bias, deterministic=deterministic)[0],
        self.encoder_layers, x, bias, remat=self.remat, length=self.config.encoder_layers)

  def logits(self, hidden: Array) -> Array:
    """Decoder states [B, T, D] -> float32 logits [B, T, V]."""
    if self.config.tie_word_embeddings:
      out = self.shared.attend(hidden)
    else:
      out = self.lm_head(hidden)
    out = nn.with_logical_constraint(out, ("batch", "length", "vocab"))
    return out.astype(jnp.float32) + self.final_logits_bias

  def decode(self, decoder_input_ids: Array, encoder_states: Array,
             encoder_mask: Optional[Array] = None, decoder_mask: Optional[Array] = None, *,
             deterministic: bool = True, return_hidden: bool = False) -> Array:
    """Teacher-forced decoding.

    Args:
      decoder_input_ids: [B, T] (already shifted right: starts with decoder_start_token_id).
      encoder_states: [B, S, D] from `encode`.
      encoder_mask: [B, S] source padding mask (1 = real token).
      decoder_mask: [B, T] target padding mask (default: none padded).
      return_hidden: return the final decoder states [B, T, D] instead of logits.
    Returns:
      float32 logits [B, T, V], or with `return_hidden` the states [B, T, D] in `dtype`.
    """
    t = decoder_input_ids.shape[1]
    self._check_length(t, "decoder input")
    positions = jnp.arange(t)
    x = self._embed(decoder_input_ids, positions, self.decoder_tokens, self.decoder_positions,
                    self.decoder_embed_norm, deterministic)
    self_bias = layers.causal_bias(positions, positions)
    if decoder_mask is not None:
      self_bias = self_bias + layers.padding_bias(decoder_mask)
    cross_bias = None if encoder_mask is None else layers.padding_bias(encoder_mask)
    x = scan.apply_stack(
        lambda layer, x, states, self_bias, cross_bias: layer(
            x, self_bias, cross_kv=layer.project_cross_kv(states), cross_bias=cross_bias,
            deterministic=deterministic)[0],
        self.decoder_layers, x, encoder_states, self_bias, cross_bias, remat=self.remat,
        length=self.config.decoder_layers)
    return x if return_hidden else self.logits(x)

  def _check_unscanned(self, method: str):
    # A cache per layer, written step by step, does not fit a scan over stacked layers; the
    # trainer's generation converts the params once instead.
    if self.scan_layers:
      raise ValueError(
          f"Bart.{method} does not support scan_layers=True; decode with the unscanned module: "
          "rag_jax.models.scan.unstack_layers(params, module) and "
          "module.clone(scan_layers=False)")

  def init_cache(self, encoder_states: Array, max_length: int) -> DecoderCache:
    """An empty decoding cache for `max_length` target positions; projects the encoder once.

    Args:
      encoder_states: [B, S, D] from `encode`.
      max_length: L, the most target positions that will be decoded (<= max_position_embeddings).
    """
    self._check_unscanned("init_cache")
    self._check_length(max_length, "init_cache max_length")
    b = encoder_states.shape[0]
    c = self.config
    heads = c.decoder_attention_heads
    zeros = jnp.zeros((b, heads, max_length, c.d_model // heads), self.dtype)
    return DecoderCache(
        self_attn=tuple(layers.KVCache(zeros, zeros) for _ in self.decoder_layers),
        cross_attn=tuple(layer.project_cross_kv(encoder_states) for layer in self.decoder_layers),
        index=jnp.zeros((), jnp.int32))

  def decode_step(self, decoder_input_ids: Array, cache: DecoderCache,
                  encoder_mask: Optional[Array] = None, *,
                  deterministic: bool = True) -> Tuple[Array, DecoderCache]:
    """Decodes T new target positions against the cache.

    Args:
      decoder_input_ids: [B, T] the tokens at positions index .. index + T - 1; the caller
        keeps index + T <= the cache length L (the index is traced, so it is not checked
        here: past L, writes would land on the last slot).
      cache: from `init_cache` or the previous step.
      encoder_mask: the source padding mask, one row per encoder row of the cache (with
        shared encoder states, `cache.cross_copies` > 1, fewer than B; see `DecoderCache`).
    Returns:
      float32 logits [B, T, V] and the advanced cache.
    """
    self._check_unscanned("decode_step")
    rows, sources = decoder_input_ids.shape[0], cache.cross_attn[0].key.shape[0]
    if rows != sources * cache.cross_copies:
      raise ValueError(f"decode_step: {rows} decoder rows for a cache of {sources} encoder rows "
                       f"x {cache.cross_copies} copies")
    if encoder_mask is not None and encoder_mask.shape[0] != sources:
      raise ValueError(f"decode_step: encoder_mask has {encoder_mask.shape[0]} rows; the "
                       f"cache holds {sources} encoder rows (one mask row each)")
    t = decoder_input_ids.shape[1]
    positions = cache.index + jnp.arange(t)
    x = self._embed(decoder_input_ids, positions, self.decoder_tokens, self.decoder_positions,
                    self.decoder_embed_norm, deterministic)
    cross_bias = None if encoder_mask is None else layers.padding_bias(encoder_mask)
    new_self = []
    for layer, self_kv, cross_kv in zip(self.decoder_layers, cache.self_attn, cache.cross_attn):
      x, self_kv = layer(x, None, cross_kv=cross_kv, cross_bias=cross_bias, self_cache=self_kv,
                         index=cache.index, cross_share=(cache.cross_copies, cache.cross_group),
                         deterministic=deterministic)
      new_self.append(self_kv)
    cache = cache.replace(self_attn=tuple(new_self), index=cache.index + t)
    return self.logits(x), cache

  def __call__(self, input_ids: Array, attention_mask: Optional[Array],
               decoder_input_ids: Array, decoder_mask: Optional[Array] = None, *,
               deterministic: bool = True) -> Array:
    """Full forward: [B, S] source, [B, T] shifted target -> float32 logits [B, T, V]."""
    states = self.encode(input_ids, attention_mask, deterministic=deterministic)
    return self.decode(decoder_input_ids, states, attention_mask, decoder_mask,
                       deterministic=deterministic)


def shift_tokens_right(labels: Array, pad_token_id: int, decoder_start_token_id: int) -> Array:
  """HF's BART shift: [B, T] labels -> decoder inputs, start token first, -100 -> pad."""
  shifted = jnp.concatenate(
      [jnp.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], axis=1)
  return jnp.where(shifted == -100, pad_token_id, shifted)
