"""BERT encoders: DPR question / context encoders, BertModel and sentence-transformers MiniLM.

One module covers them all; they differ only in how a sequence becomes one vector:

- `pooling="cls"`: the first token's final hidden state (DPR), then DPR's optional
  `encode_proj` projection when `projection_dim > 0`;
- `pooling="pooler"`: BertModel's `pooler_output`, tanh(dense(h_cls));
- `pooling="mean"`: the mean of the hidden states over non-padding tokens
  (sentence-transformers), optionally L2-normalised (`normalize=True`).

Shapes: B = batch, L = tokens, D = hidden size, P = pooled size (D or `projection_dim`).
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rag_jax.models import layers
from rag_jax.models import scan

Array = jax.Array

POOLINGS = ("cls", "pooler", "mean")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The numbers of a BERT that change its outputs (a subset of HF's BertConfig / DPRConfig)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  pad_token_id: int = 0
  projection_dim: int = 0       # DPR's encode_proj; 0 = none.
  pooling: str = "cls"          # One of POOLINGS.
  normalize: bool = False       # L2-normalise the pooled vector.

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "BertConfig":
    """From an HF `config.json` dict (model_type bert or dpr)."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"unsupported position_embedding_type {hf['position_embedding_type']!r} "
                       "(only 'absolute')")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in fields and v is not None}
    kwargs.update(overrides)
    config = cls(**kwargs)
    layers.activation(config.hidden_act)  # fail at load, not at first use
    if config.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {config.pooling!r}; expected one of {POOLINGS}")
    if config.hidden_size % config.num_attention_heads:
      raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of "
                       f"num_attention_heads {config.num_attention_heads}")
    return config

  @property
  def output_dim(self) -> int:
    return self.projection_dim or self.hidden_size


class BertLayer(nn.Module):
  """Post-LN transformer encoder layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    c = self.config
    drop = nn.Dropout(c.hidden_dropout_prob)
    h = layers.Attention(c.num_attention_heads, c.hidden_size // c.num_attention_heads,
                         dtype=self.dtype, dropout_rate=c.attention_probs_dropout_prob,
                         init_std=c.initializer_range, name="attention")(
                             x, bias=bias, deterministic=deterministic)
    x = layers.layer_norm(c.layer_norm_eps, self.dtype, "attention_norm")(
        x + drop(h, deterministic=deterministic))
    h = layers.MLP(c.intermediate_size, c.hidden_size, c.hidden_act, dtype=self.dtype,
                   init_std=c.initializer_range, name="mlp")(x, deterministic)
    x = layers.layer_norm(c.layer_norm_eps, self.dtype, "mlp_norm")(
        x + drop(h, deterministic=deterministic))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class BertEncoder(nn.Module):
  """A BERT that maps token ids to hidden states and one pooled vector per sequence.

  Attributes:
    config: the BertConfig (pooling and projection included).
    dtype: computation dtype; parameters stay float32 and pooled outputs are float32.
    remat: rematerialisation of the layers in training (layers.REMAT_POLICIES).
    scan_layers: run the layers as one `nn.scan` (rag_jax.models.scan): compiled once, params
      under "layers" stacked [num_hidden_layers, ...] instead of "layers_0", "layers_1", ...
      (`scan.stack_layers` / `scan.unstack_layers` convert).
  """
  config: BertConfig
  dtype: Any = jnp.float32
  remat: str = "none"
  scan_layers: bool = False

  @property
  def layer_stacks(self) -> dict:
    """{name: number of layers} of the layer stacks (see rag_jax.models.scan)."""
    return {"layers": self.config.num_hidden_layers}

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Optional[Array] = None,
               token_type_ids: Optional[Array] = None, *,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """Encodes a batch.

    Args:
      input_ids: [B, L] int token ids.
      attention_mask: [B, L], 1 for real tokens, 0 for padding (default: all 1).
      token_type_ids: [B, L] segment ids (default: all 0).
      deterministic: False enables dropout (needs a 'dropout' rng).
    Returns:
      hidden states [B, L, D] in `dtype`, pooled vectors [B, P] in float32.
    """
    c = self.config
    if input_ids.shape[1] > c.max_position_embeddings:
      raise ValueError(f"{input_ids.shape[1]} tokens exceed max_position_embeddings "
                       f"{c.max_position_embeddings}")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    positions = jnp.arange(input_ids.shape[1])[None, :]

    x = (layers.embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), self.dtype,
                      c.initializer_range, "word_embeddings")(input_ids)
         + layers.embed(c.max_position_embeddings, c.hidden_size, (None, "embed"), self.dtype,
                        c.initializer_range, "position_embeddings")(positions)
         + layers.embed(c.type_vocab_size, c.hidden_size, (None, "embed"), self.dtype,
                        c.initializer_range, "token_type_embeddings")(token_type_ids))
    x = layers.layer_norm(c.layer_norm_eps, self.dtype, "embeddings_norm")(x)
    x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)

    bias = layers.padding_bias(attention_mask)
    n = c.num_hidden_layers
    stack = scan.make_stack(lambda name: BertLayer(c, self.dtype, name=name), "layers", n,
                            self.scan_layers)
    x = scan.apply_stack(lambda layer, x, bias: layer(x, bias, deterministic), stack, x, bias,
                         remat=self.remat, length=n)

    # Pooling: [B, L, D] -> [B, P].
    if c.pooling == "mean":
      mask = attention_mask.astype(jnp.float32)[..., None]
      pooled = (x.astype(jnp.float32) * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
    elif c.pooling == "pooler":
      pooled = jnp.tanh(layers.dense(c.hidden_size, ("embed", "embed_out"), dtype=self.dtype,
                                     std=c.initializer_range, name="pooler")(x[:, 0]))
    else:
      pooled = x[:, 0]
    if c.projection_dim:
      pooled = layers.dense(c.projection_dim, ("embed", "embed_out"), dtype=self.dtype,
                            std=c.initializer_range, name="projection")(pooled)
    pooled = pooled.astype(jnp.float32)
    if c.normalize:
      pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return x, pooled
