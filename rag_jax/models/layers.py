"""Building blocks shared by the encoders and generators: attention, feed-forward, and the
row sharing by which the beams of a generator attend to one copy of what they condition on
(BART's encoder keys/values, a decoder-only model's prompt KV cache): `share_rows`,
`expand_rows`, `take_rows` and `dot_product_attention`'s shared prefix.

Everything here is a pure linen module: no I/O, no mesh. Parameters are created in
`param_dtype` (float32) and the computation runs in `dtype` (float32 or bfloat16); softmax
statistics are always taken in float32. Parameters and activations carry logical axis names
(`batch, length, embed, heads, kv, mlp, vocab`) that `rag_jax.sharding` maps onto a mesh.

Shapes: B = batch, T = query length, S = key length, D = model width, H = heads,
K = head width, F = feed-forward width.
"""

from typing import Any, Callable, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# Added to the attention logits of masked positions. Finite, so a fully masked row gives a
# uniform distribution (as HF does with finfo.min) instead of NaN.
MASK_VALUE = -1e30

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


REMAT_POLICIES = {
    "none": None,
    # Keep nothing but each layer's inputs; recompute the layer in the backward pass.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep the projections' matmul outputs, recompute the rest (norms, gelu, softmax and the
    # two batched attention matmuls, which have batch dimensions).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(fn: Callable, policy: str) -> Callable:
  """`fn(module, *args)` under flax's lifted jax.checkpoint with a named policy."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; expected one of {list(REMAT_POLICIES)}")
  if policy == "none":
    return fn
  return nn.checkpoint(fn, policy=REMAT_POLICIES[policy])


def activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation function {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def dense_init(std: float):
  return nn.initializers.normal(stddev=std)


class _FullRankPartitioned(nn.LogicallyPartitioned):
  """A logically partitioned param whose sharding constraint applies only at its full rank.

  DenseGeneral creates a [D, H, K] kernel (and an [H, K] bias) flat, [D, H * K], and unboxes
  it before reshaping it (flax issue #3676); under a mesh and logical rules
  (`sharding.axis_rules`) the constraint of the full rank on the flat array is an error. The
  reshaped param is constrained as usual.
  """

  def unbox(self, apply_constraint=True):
    return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))


def _partitioned(init, names: Tuple[str, ...]):
  """`nn.with_logical_partitioning` for DenseGeneral's params (see _FullRankPartitioned)."""
  return lambda *args: _FullRankPartitioned(init(*args), names)


def dense(features, axes: Tuple[str, ...], *, in_axis=-1, dtype, std=0.02, use_bias=True,
          name=None) -> nn.DenseGeneral:
  """A DenseGeneral whose kernel and bias carry logical axis names."""
  n_in = 1 if isinstance(in_axis, int) else len(in_axis)
  out_axes = axes[n_in:]
  return nn.DenseGeneral(
      features=features, axis=in_axis, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=_partitioned(dense_init(std), axes),
      bias_init=_partitioned(nn.initializers.zeros, out_axes),
      name=name)


def layer_norm(eps: float, dtype, name=None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
      name=name)


def embed(num: int, features: int, axes: Tuple[str, str], dtype, std=0.02, name=None) -> nn.Embed:
  return nn.Embed(
      num_embeddings=num, features=features, dtype=dtype, param_dtype=jnp.float32,
      embedding_init=nn.with_logical_partitioning(dense_init(std), axes), name=name)


def padding_bias(mask: Array) -> Array:
  """Key-padding mask [B, S] (1 = keep) -> additive bias [B, 1, 1, S] in float32."""
  return jnp.where(mask[:, None, None, :].astype(bool), 0.0, MASK_VALUE).astype(jnp.float32)


def causal_bias(q_positions: Array, k_positions: Array) -> Array:
  """Positions [T], [S] -> additive bias [1, 1, T, S]: key j visible from query i iff j <= i."""
  visible = k_positions[None, :] <= q_positions[:, None]
  return jnp.where(visible, 0.0, MASK_VALUE)[None, None].astype(jnp.float32)


def share_rows(x: Array, copies: int, group: int, axis: int = 1) -> Array:
  """Rows that attend to one shared source, moved beside each other along `axis`.

  x has B * C * G rows, ordered (example b, copy c, member g of the group): the C copies (the
  beams, or the candidates) of each of an example's G sources (its documents). The result has
  the B * G source rows, with the C copies' entries side by side on `axis`:
  [B * C * G, ..., R, ...] -> [B * G, ..., C * R, ...]. Attention treats every query row
  alike, so the copies can attend to their source's one set of keys as extra query rows
  instead of each holding a copy of them (BART's encoder keys/values, a prompt's KV cache).
  """
  if copies == 1:
    return x
  shape = x.shape
  b = shape[0] // (copies * group)
  x = x.reshape(b, copies, group, *shape[1:])
  x = jnp.moveaxis(x, 1, axis + 1)                      # C just before the `axis` dimension
  return x.reshape(b * group, *shape[1:axis], copies * shape[axis], *shape[axis + 1:])


def unshare_rows(x: Array, copies: int, group: int, axis: int = 1) -> Array:
  """The inverse of `share_rows`: [B * G, ..., C * R, ...] -> [B * C * G, ..., R, ...]."""
  if copies == 1:
    return x
  shape = x.shape
  b = shape[0] // group
  x = x.reshape(b, group, *shape[1:axis], copies, shape[axis] // copies, *shape[axis + 1:])
  x = jnp.moveaxis(x, axis + 1, 1)                      # [B, C, G, ..., R, ...]
  return x.reshape(b * copies * group, *shape[1:axis], shape[axis] // copies, *shape[axis + 1:])


def expand_rows(tree: Any, copies: int, group: int = 1) -> Any:
  """Rows repeated for beams or candidates, in `share_rows`'s order: every leaf [B * G, ...]
  (example-major, G rows per example) -> [B * C * G, ...] ordered (example, copy, row of the
  group). Scalars and None pass through."""
  def expand(x):
    if x is None or x.ndim == 0 or copies == 1:
      return x
    x = x.reshape(x.shape[0] // group, 1, group, *x.shape[1:])
    return jnp.repeat(x, copies, axis=1).reshape(-1, *x.shape[3:])
  return jax.tree.map(expand, tree, is_leaf=lambda x: x is None)


def take_rows(tree: Any, rows: Array, group: int = 1) -> Any:
  """Gathers rows of every leaf with a leading row axis: row block i of the result is block
  `rows[i]`, each block `group` rows long (the G documents of a beam, for RAG-Token); beam
  search's reordering. Scalars pass through."""
  idx = (rows[:, None] * group + jnp.arange(group)[None, :]).reshape(-1)
  return jax.tree.map(lambda x: x[idx] if x.ndim > 0 else x, tree)


def dot_product_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                          dropout: Callable[[Array], Array], dtype: Dtype, *,
                          prefix: Optional["KVCache"] = None, prefix_bias: Optional[Array] = None,
                          share: Tuple[int, int] = (1, 1)) -> Array:
  """softmax(query . key + bias) . value, optionally over a shared prefix of keys as well.

  Args:
    query: [N, H, R, K] already scaled; R query rows per head (positions, or for grouped-query
      attention the query heads of one key/value head times the positions).
    key, value: [N, H, L, K].
    bias: additive, broadcastable to [N, H, R, L] (float32), or None.
    dropout: applied to the unnormalised weights (in `dtype`).
    dtype: the dtype of the value matmul.
    prefix: keys/values [N / C, H, S, K] that every query row also attends to, stored once per
      source row and shared by its C copies (`share` = (C, G), see `share_rows`): a prompt's
      KV cache shared by the beams decoding after it.
    prefix_bias: additive, broadcastable to [N / C, H, C * R, S] (the prompt's padding).
  Returns:
    [N, H, R, K] float32.
  """
  logits = jnp.matmul(query, key.swapaxes(-1, -2)).astype(jnp.float32)        # [N, H, R, L]
  if bias is not None:
    logits = logits + bias
  # softmax(logits) @ value with the normalisation moved after the matmul: dividing the
  # [N, H, R, K] output by the row sums instead of the [N, H, R, L] probabilities is one
  # pass less over the largest tensor (faster on XLA:CPU; benchmarks/RESULTS.md). Dropout
  # commutes with the division, so it applies to the unnormalised weights.
  top = logits.max(axis=-1, keepdims=True)                                     # [N, H, R, 1]
  if prefix is not None:
    copies, group = share
    shared_q = share_rows(query, copies, group, axis=2)                        # [N/C, H, C*R, K]
    pre = jnp.matmul(shared_q, prefix.key.swapaxes(-1, -2)).astype(jnp.float32)  # [., ., ., S]
    if prefix_bias is not None:
      pre = pre + prefix_bias
    # One max over both key sets, so that the two parts' weights share one scale.
    top = jnp.maximum(top, unshare_rows(pre.max(axis=-1, keepdims=True), copies, group, axis=2))
  top = jax.lax.stop_gradient(top)
  weights = jnp.exp(logits - top)
  total = weights.sum(axis=-1, keepdims=True)                                  # [N, H, R, 1]
  mixed = jnp.matmul(dropout(weights.astype(dtype)), value).astype(jnp.float32)
  if prefix is not None:
    pre_weights = jnp.exp(pre - share_rows(top, copies, group, axis=2))
    total = total + unshare_rows(pre_weights.sum(axis=-1, keepdims=True), copies, group, axis=2)
    pre_mixed = jnp.matmul(dropout(pre_weights.astype(dtype)), prefix.value.astype(dtype))
    mixed = mixed + unshare_rows(pre_mixed.astype(jnp.float32), copies, group, axis=2)
  return mixed / total


@flax.struct.dataclass
class KVCache:
  """Keys and values of one attention layer, kept between decoding steps.

  For self-attention the buffers are `max_length` long and filled up to the decoder's
  `index`; for cross-attention they hold the projected encoder outputs, computed once. They
  are kept heads-major, the layout of the attention matmuls, so that a decoding step does not
  transpose the whole cache.
  """
  key: Array    # [B, H, S, K]
  value: Array  # [B, H, S, K]


class Attention(nn.Module):
  """Multi-head dot-product attention (BERT and BART flavour: biased q/k/v/out projections).

  Attributes:
    num_heads: H.
    head_dim: K.
    dtype: computation dtype.
    dropout_rate: dropout on the attention probabilities.
    init_std: stddev of the kernel initialiser.
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  init_std: float = 0.02

  def setup(self):
    qkv = lambda name: dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"),
                             dtype=self.dtype, std=self.init_std, name=name)
    self.query, self.key, self.value = qkv("query"), qkv("key"), qkv("value")
    self.out = dense(self.num_heads * self.head_dim, ("heads", "kv", "embed"), in_axis=(-2, -1),
                     dtype=self.dtype, std=self.init_std, name="out")
    self.dropout = nn.Dropout(self.dropout_rate)

  def project_kv(self, inputs_kv: Array) -> KVCache:
    """[B, S, D] -> keys and values [B, H, S, K] (cross-attention's cache)."""
    heads_major = lambda x: x.transpose(0, 2, 1, 3)
    return KVCache(key=heads_major(self.key(inputs_kv)), value=heads_major(self.value(inputs_kv)))

  def attend(self, query: Array, key: Array, value: Array, bias: Optional[Array],
             deterministic: bool) -> Array:
    """query [B, T, H, K], key/value [B, H, S, K], bias broadcastable to [B, H, T, S] -> [B, T, D]."""
    query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
    # Heads-major layout for the two batched matmuls: XLA:CPU runs "bhtk,bhsk" several times
    # faster when the operands are materialised as [B, H, *, K] than via einsum on [B, T, H, K].
    query = query.transpose(0, 2, 1, 3)                                        # [B, H, T, K]
    drop = lambda w: self.dropout(w, deterministic=deterministic)
    mixed = dot_product_attention(query, key, value, bias, drop, self.dtype)  # [B, H, T, K]
    mixed = mixed.astype(self.dtype).transpose(0, 2, 1, 3)                    # [B, T, H, K]
    mixed = nn.with_logical_constraint(mixed, ("batch", "length", "heads", "kv"))
    return self.out(mixed)

  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None, *,
               bias: Optional[Array] = None, kv: Optional[KVCache] = None,
               deterministic: bool = True) -> Array:
    """Attention of `inputs_q` [B, T, D] over `inputs_kv` [B, S, D] (self-attention if None).

    `kv`, when given, replaces the keys/values projected from `inputs_kv` (cross-attention
    with a cache). `bias` is additive, broadcastable to [B, H, T, S].
    """
    if kv is None:
      kv = self.project_kv(inputs_q if inputs_kv is None else inputs_kv)
    return self.attend(self.query(inputs_q), kv.key, kv.value, bias, deterministic)

  def cached_self_attention(self, inputs: Array, cache: KVCache, index: Array, *,
                            bias: Optional[Array] = None,
                            deterministic: bool = True) -> Tuple[Array, KVCache]:
    """Causal self-attention of T new positions starting at `index`, against a KV cache.

    Args:
      inputs: [B, T, D] the new positions.
      cache: buffers [B, H, L, K] holding positions `< index`.
      index: int32 scalar, the position of `inputs[:, 0]`.
      bias: optional extra additive bias broadcastable to [B, H, T, L] (key padding).
    Returns:
      outputs [B, T, D] and the cache with the new positions written in.
    """
    new = self.project_kv(inputs)
    zero = jnp.zeros((), jnp.int32)
    key = jax.lax.dynamic_update_slice(cache.key, new.key.astype(cache.key.dtype),
                                       (zero, zero, index, zero))
    value = jax.lax.dynamic_update_slice(cache.value, new.value.astype(cache.value.dtype),
                                         (zero, zero, index, zero))
    t, length = inputs.shape[1], cache.key.shape[2]
    causal = causal_bias(index + jnp.arange(t), jnp.arange(length))
    bias = causal if bias is None else causal + bias
    out = self.attend(self.query(inputs), key.astype(self.dtype), value.astype(self.dtype), bias,
                      deterministic)
    return out, KVCache(key=key, value=value)


class MLP(nn.Module):
  """Position-wise feed-forward: wo(dropout(act(wi(x))))."""
  hidden_dim: int
  out_dim: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  init_std: float = 0.02

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    """[B, T, D] -> [B, T, D]."""
    h = dense(self.hidden_dim, ("embed", "mlp"), dtype=self.dtype, std=self.init_std, name="wi")(x)
    h = activation(self.activation)(h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense(self.out_dim, ("mlp", "embed"), dtype=self.dtype, std=self.init_std, name="wo")(h)
