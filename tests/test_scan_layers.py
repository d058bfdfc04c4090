"""`scan_layers=True` (rag_jax.models.scan): the scanned BERT and BART compute what the unrolled
ones do, given stacked params; stack/unstack round trips; stacked params carry the "layers"
logical axis; the scanned program does not grow with depth."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import max_abs, padded_batch
from rag_jax.models import Bart, BartConfig, BertConfig, BertEncoder, scan, shift_tokens_right

BERT_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
BART_TINY = dict(vocab_size=101, d_model=32, encoder_layers=2, decoder_layers=3,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                 decoder_ffn_dim=41, max_position_embeddings=64)
BERT_POOLINGS = {
    "cls-projection": dict(pooling="cls", projection_dim=16),
    "pooler": dict(pooling="pooler"),
    "mean-normalize": dict(pooling="mean", normalize=True),
}
TOL = 1e-5


def _pair(cls, config, remat="none"):
  """The unscanned and the scanned module of one config."""
  return cls(config, remat=remat), cls(config, remat=remat, scan_layers=True)


def _init(module, *args, method=None, seed=0):
  """Unboxed random params; perturbed so that no LayerNorm scale is 1 and no bias is 0."""
  params = nn.meta.unbox(module.init(jax.random.key(seed), *args, method=method)["params"])
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return treedef.unflatten([x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _bert_inputs(rng):
  ids, mask = padded_batch(rng, [7, 3, 11, 1], BERT_TINY["vocab_size"], pad_id=0)
  return ids, mask


def _bart_inputs(rng):
  src, src_mask = padded_batch(rng, [9, 4, 12], BART_TINY["vocab_size"], pad_id=1)
  labels, tgt_mask = padded_batch(rng, [6, 8, 3], BART_TINY["vocab_size"], pad_id=1)
  dec_in = np.asarray(shift_tokens_right(np.where(tgt_mask == 1, labels, -100), 1, 2))
  return src, src_mask, dec_in


def _assert_trees_close(a, b, tol=TOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and max_abs(x, y) < tol


# remat "full" on one config of each model: the checkpointed scan body computes the same.
@pytest.mark.parametrize("pooling,remat", [
    ("cls-projection", "none"), ("pooler", "none"), ("mean-normalize", "full")])
@pytest.mark.slow
def test_bert_scanned_matches_unscanned(rng, pooling, remat):
  config = BertConfig(**BERT_TINY, **BERT_POOLINGS[pooling])
  module, scanned = _pair(BertEncoder, config, remat)
  ids, mask = _bert_inputs(rng)
  params = _init(module, ids, mask)
  stacked = scan.stack_layers(params, scanned)
  assert "layers" in stacked and "layers_0" not in stacked

  hidden, pooled = jax.jit(module.apply)({"params": params}, ids, mask)
  s_hidden, s_pooled = jax.jit(scanned.apply)({"params": stacked}, ids, mask)
  assert max_abs(hidden, s_hidden) < TOL and max_abs(pooled, s_pooled) < TOL

  weights = jnp.asarray(rng.normal(size=pooled.shape), jnp.float32)
  def loss(params, m):
    hidden, pooled = m.apply({"params": params}, ids, mask)
    return (pooled * weights).sum() + (hidden ** 2).mean()
  grads = jax.jit(jax.grad(loss), static_argnums=1)(params, module)
  s_grads = jax.jit(jax.grad(loss), static_argnums=1)(stacked, scanned)
  _assert_trees_close(scan.stack_layers(grads, scanned), s_grads)


@pytest.mark.parametrize("tie,remat", [(True, "none"), (False, "full")],
                         ids=["tied", "untied-remat"])
@pytest.mark.slow
def test_bart_scanned_matches_unscanned(rng, tie, remat):
  config = BartConfig(**BART_TINY, tie_word_embeddings=tie)
  module, scanned = _pair(Bart, config, remat)
  src, src_mask, dec_in = _bart_inputs(rng)
  params = _init(module, src, src_mask, dec_in)
  stacked = scan.stack_layers(params, scanned)
  assert {"encoder_layers", "decoder_layers"} <= set(stacked)
  assert not any(k.startswith(("encoder_layers_", "decoder_layers_")) for k in stacked)

  def run(m, params):
    states = m.apply({"params": params}, src, src_mask, method=Bart.encode)
    return states, m.apply({"params": params}, dec_in, states, src_mask, method=Bart.decode)
  states, logits = jax.jit(run, static_argnums=0)(module, params)
  s_states, s_logits = jax.jit(run, static_argnums=0)(scanned, stacked)
  assert max_abs(states, s_states) < TOL and max_abs(logits, s_logits) < TOL

  labels = jnp.asarray(np.roll(dec_in, -1, axis=1))
  def loss(params, m):
    logits = m.apply({"params": params}, src, src_mask, dec_in)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1).mean()
  grads = jax.jit(jax.grad(loss), static_argnums=1)(params, module)
  s_grads = jax.jit(jax.grad(loss), static_argnums=1)(stacked, scanned)
  _assert_trees_close(scan.stack_layers(grads, scanned), s_grads)


def test_round_trip_is_exact(rng):
  module = Bart(BartConfig(**BART_TINY), scan_layers=True)
  src, src_mask, dec_in = _bart_inputs(rng)
  params = _init(module.clone(scan_layers=False), src, src_mask, dec_in)
  for tree in (params, jax.tree.map(np.asarray, params)):
    stacked = scan.stack_layers(tree, module)
    leaf = stacked["decoder_layers"]["mlp"]["wi"]["kernel"]
    assert leaf.shape == (3, 32, 41) and type(leaf) is type(tree["shared"]["embedding"])
    back = scan.unstack_layers(stacked, module)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
      np.testing.assert_array_equal(x, y)
  # Scanned -> unscanned -> scanned, and under jit (the trainer converts on device).
  stacked = scan.stack_layers(params, module)
  again = jax.jit(lambda p: scan.stack_layers(scan.unstack_layers(p, module), module))(stacked)
  for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(x, y)
  # Abstract trees convert too: the shapes a scanned init would give.
  abstract = jax.eval_shape(lambda: params)
  s_abstract = scan.stack_layers(abstract, module)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), s_abstract) == jax.tree.map(
      lambda x: (x.shape, x.dtype), stacked)
  assert scan.unstack_layers(s_abstract, module) == abstract


def test_conversion_errors(rng):
  module = BertEncoder(BertConfig(**BERT_TINY), scan_layers=True)
  params = _init(module.clone(scan_layers=False), *_bert_inputs(rng))
  stacked = scan.stack_layers(params, module)
  with pytest.raises(ValueError, match="layers_0"):
    scan.stack_layers(stacked, module)
  with pytest.raises(ValueError, match="missing"):
    scan.stack_layers({k: v for k, v in params.items() if k != "layers_2"}, module)
  with pytest.raises(ValueError, match="expected scanned"):
    scan.unstack_layers(params, module)
  deeper = module.clone(config=BertConfig(**{**BERT_TINY, "num_hidden_layers": 4}))
  with pytest.raises(ValueError, match="leading axis of 4"):
    scan.unstack_layers(stacked, deeper)


def test_scanned_init_is_boxed_with_layers_axis(rng):
  module = BertEncoder(BertConfig(**BERT_TINY, pooling="pooler"), scan_layers=True)
  ids, mask = _bert_inputs(rng)
  boxed = jax.eval_shape(module.init, jax.random.key(0), ids, mask)["params"]
  is_box = lambda x: isinstance(x, nn.Partitioned)
  layer_boxes = jax.tree.leaves(boxed["layers"], is_leaf=is_box)
  assert layer_boxes and all(is_box(b) for b in layer_boxes)
  for b in layer_boxes:
    assert b.names[0] == "layers" and b.value.shape[0] == 3 and len(b.names) == b.value.ndim
  kernel = boxed["layers"]["attention"]["query"]["kernel"]
  assert kernel.names == ("layers", "embed", "heads", "kv")
  # Params outside the stack are not stacked.
  assert boxed["pooler"]["kernel"].names == ("embed", "embed_out")
  # The unboxed scanned init has the layout stack_layers gives.
  unscanned = jax.eval_shape(module.clone(scan_layers=False).init, jax.random.key(0), ids, mask)
  shapes = lambda t: jax.tree.map(lambda x: x.shape, nn.meta.unbox(t))
  assert shapes(boxed) == shapes(scan.stack_layers(nn.meta.unbox(unscanned["params"]), module))
  # The params rng is split per layer: the layers start different.
  params = nn.meta.unbox(module.init(jax.random.key(0), ids, mask)["params"])
  query = params["layers"]["attention"]["query"]["kernel"]
  assert not np.allclose(query[0], query[1])


def test_scanned_dropout_runs_and_differs_per_layer(rng):
  config = BertConfig(**BERT_TINY, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
  module, scanned = _pair(BertEncoder, config, "full")
  ids, mask = _bert_inputs(rng)
  stacked = scan.stack_layers(_init(module, ids, mask), scanned)
  apply = jax.jit(scanned.apply, static_argnames="deterministic")
  train = lambda seed: apply({"params": stacked}, ids, mask, deterministic=False,
                             rngs={"dropout": jax.random.key(seed)})[1]
  evaluate = apply({"params": stacked}, ids, mask)[1]
  assert np.all(np.isfinite(train(0)))
  assert max_abs(train(0), evaluate) > 1e-3 and max_abs(train(0), train(1)) > 1e-3
  np.testing.assert_array_equal(train(0), train(0))


@pytest.mark.slow
def test_bart_cached_decoding_needs_unscanned(rng):
  module = Bart(BartConfig(**BART_TINY), scan_layers=True)
  src, src_mask, dec_in = _bart_inputs(rng)
  stacked = scan.stack_layers(_init(module.clone(scan_layers=False), src, src_mask, dec_in),
                              module)
  states = module.apply({"params": stacked}, src, src_mask, method=Bart.encode)
  with pytest.raises(ValueError, match="unstack_layers"):
    module.apply({"params": stacked}, states, 16, method=Bart.init_cache)
  # The way out: the unscanned module with unstacked params decodes.
  plain = module.clone(scan_layers=False)
  params = scan.unstack_layers(stacked, module)
  cache = plain.apply({"params": params}, states, 16, method=Bart.init_cache)
  logits, _ = plain.apply({"params": params}, dec_in[:, :1], cache, src_mask,
                          method=Bart.decode_step)
  teacher = plain.apply({"params": params}, dec_in[:, :1], states, src_mask, method=Bart.decode)
  assert max_abs(logits, teacher) < TOL


def _program_size(module, batch: int = 2, length: int = 16) -> int:
  """Characters of the lowered (StableHLO) training step, loss and gradients, of a BERT."""
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  plain = module.clone(scan_layers=False)
  abstract = jax.eval_shape(lambda k, ids: nn.meta.unbox(plain.init(k, ids, ids)["params"]),
                            jax.random.key(0), ids)
  if module.scan_layers:
    abstract = scan.stack_layers(abstract, module)
  loss = lambda p, ids: module.apply({"params": p}, ids, ids)[1].sum()
  return len(jax.jit(jax.value_and_grad(loss)).lower(abstract, ids).as_text())


@pytest.mark.slow
def test_scanned_program_does_not_grow_with_depth():
  config = lambda n: BertConfig(**{**BERT_TINY, "num_hidden_layers": n})
  unrolled = _program_size(BertEncoder(config(12)))
  scanned = _program_size(BertEncoder(config(12), scan_layers=True))
  assert scanned < unrolled / 2
  # Depth changes only the scan's trip count.
  scanned_24 = _program_size(BertEncoder(config(24), scan_layers=True))
  assert abs(scanned_24 - scanned) < 0.01 * scanned
