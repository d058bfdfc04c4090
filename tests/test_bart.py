"""Flax BART against HF PyTorch BartForConditionalGeneration on random weights; KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import max_abs, padded_batch, randomize_, rel_err
from rag_jax import decoding
from rag_jax import weights
from rag_jax.models import Bart, generator, shift_tokens_right

TINY = dict(vocab_size=101, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
            decoder_ffn_dim=41, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2)
SRC_LENGTHS, TGT_LENGTHS = [9, 4, 12], [6, 8, 3]


def _save(tmp_path, seed=0, scale=0.2, **overrides):
  hf = randomize_(transformers.BartForConditionalGeneration(
      transformers.BartConfig(**{**TINY, **overrides})), seed=seed, scale=scale)
  hf.save_pretrained(tmp_path)
  return hf


def _batch(rng):
  src, src_mask = padded_batch(rng, SRC_LENGTHS, TINY["vocab_size"], TINY["pad_token_id"])
  labels, tgt_mask = padded_batch(rng, TGT_LENGTHS, TINY["vocab_size"], TINY["pad_token_id"])
  labels = np.where(tgt_mask == 1, labels, -100)
  dec_in = np.asarray(shift_tokens_right(labels, TINY["pad_token_id"],
                                         TINY["decoder_start_token_id"]))
  dec_mask = np.ones_like(dec_in)
  dec_mask[:, 1:] = tgt_mask[:, :-1]
  return src, src_mask, dec_in, dec_mask


@pytest.mark.parametrize("overrides", [
    {},
    {"scale_embedding": True, "activation_function": "relu"},
    {"tie_word_embeddings": False, "activation_function": "gelu_new"},
], ids=["default", "scaled-relu", "untied"])
def test_logits_match_hf(tmp_path, rng, overrides):
  hf = _save(tmp_path, **overrides)
  src, src_mask, dec_in, dec_mask = _batch(rng)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask),
             decoder_input_ids=torch.tensor(dec_in),
             decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
  module, params = weights.load_bart(tmp_path)
  assert module.config.tie_word_embeddings == overrides.get("tie_word_embeddings", True)
  assert ("lm_head" in params) == (not module.config.tie_word_embeddings)
  logits = jax.jit(module.apply)({"params": params}, src, src_mask, dec_in, dec_mask)
  valid = dec_mask.astype(bool)
  assert logits.dtype == jnp.float32
  assert max_abs(np.asarray(logits)[valid], ref[valid]) < 1e-4


def test_shift_tokens_right_matches_hf():
  labels = np.array([[5, 6, 2, -100], [7, 2, -100, -100]])
  ref = transformers.models.bart.modeling_bart.shift_tokens_right(torch.tensor(labels), 1, 2)
  np.testing.assert_array_equal(shift_tokens_right(labels, 1, 2), ref.numpy())


@pytest.mark.slow
def test_encoder_matches_hf_and_bartmodel_layout(tmp_path, rng):
  hf = randomize_(transformers.BartModel(transformers.BartConfig(**TINY)), seed=4)
  hf.save_pretrained(tmp_path)
  src, src_mask, dec_in, _ = _batch(rng)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask),
             decoder_input_ids=torch.tensor(dec_in))
  module, params = weights.load_bart(tmp_path)
  states = module.apply({"params": params}, src, src_mask, method=Bart.encode)
  valid = src_mask.astype(bool)
  assert max_abs(np.asarray(states)[valid], out.encoder_last_hidden_state.numpy()[valid]) < 1e-4
  hidden = module.apply({"params": params}, dec_in, states, src_mask, return_hidden=True,
                        method=Bart.decode)
  assert max_abs(hidden, out.last_hidden_state.numpy()) < 1e-4


def _incremental(module, params, src, src_mask, dec_in, chunks, max_length):
  """Decodes dec_in in the given chunk sizes through the cache; returns logits [B, T, V]."""
  states = module.apply({"params": params}, src, src_mask, method=Bart.encode)
  cache = module.apply({"params": params}, states, max_length, method=Bart.init_cache)
  step = jax.jit(lambda ids, cache: module.apply({"params": params}, ids, cache, src_mask,
                                                 method=Bart.decode_step))
  outs, start = [], 0
  for n in chunks:
    logits, cache = step(dec_in[:, start:start + n], cache)
    outs.append(logits)
    start += n
  assert int(cache.index) == start
  return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("chunks", [[1] * 8, [3, 1, 4]], ids=["one-by-one", "prefill"])
@pytest.mark.slow
def test_cached_decoding_equals_teacher_forcing(tmp_path, rng, chunks):
  _save(tmp_path, seed=5)
  module, params = weights.load_bart(tmp_path)
  src, src_mask, _, _ = _batch(rng)
  dec_in = rng.integers(3, TINY["vocab_size"], size=(len(SRC_LENGTHS), 8)).astype(np.int32)
  dec_in[:, 0] = TINY["decoder_start_token_id"]
  full = module.apply({"params": params}, src, src_mask, dec_in)
  cached = _incremental(module, params, src, src_mask, dec_in, chunks, max_length=12)
  assert max_abs(cached, full) < 1e-4


@pytest.mark.slow
def test_decoder_rows_sharing_encoder_states_equal_their_own_copies(tmp_path, rng):
  # 2 examples x 3 sources (G) each, each source decoded by 2 copies (C): decoder row
  # ((b * C + c) * G + g) attends to source (b * G + g), through one cache entry per source,
  # as beams share their documents'.
  _save(tmp_path, seed=8)
  module, params = weights.load_bart(tmp_path)
  batch, copies, group = 2, 2, 3
  src, src_mask = padded_batch(rng, [9, 4, 12, 7, 12, 5], TINY["vocab_size"],
                               TINY["pad_token_id"])
  dec_in = rng.integers(3, TINY["vocab_size"], size=(batch * copies * group, 5)).astype(np.int32)
  apply = lambda *args, **kw: module.apply({"params": params}, *args, **kw)
  shared = generator.BartGenerator(module).prefill(params, src, src_mask, 8, copies=copies,
                                                   group=group).decoder
  # The reference: every decoder row with its own copy of its source.
  rows = [(b * group + g) for b in range(batch) for _ in range(copies) for g in range(group)]
  own_src, own_mask = src[rows], src_mask[rows]
  own = apply(apply(own_src, own_mask, method=Bart.encode), 8, method=Bart.init_cache)
  for start, stop in [(0, 2), (2, 3), (3, 5)]:  # a prefill, then single steps
    want, own = apply(dec_in[:, start:stop], own, own_mask, method=Bart.decode_step)
    got, shared = apply(dec_in[:, start:stop], shared, src_mask, method=Bart.decode_step)
    assert max_abs(got, want) < 1e-5
  assert shared.cross_attn[0].key.shape[0] == batch * group
  with pytest.raises(ValueError, match="encoder_mask has 12 rows"):
    apply(dec_in[:, :1], shared, own_mask, method=Bart.decode_step)
  with pytest.raises(TypeError, match="DecoderCache is reordered by its Generator.reorder"):
    decoding.reorder_rows(shared, jnp.arange(batch * copies))


@pytest.mark.slow
def test_bfloat16_close_to_float32(tmp_path, rng):
  _save(tmp_path, seed=6, scale=0.05)
  src, src_mask, dec_in, dec_mask = _batch(rng)
  m32, params = weights.load_bart(tmp_path)
  m16, _ = weights.load_bart(tmp_path, dtype=jnp.bfloat16)
  ref = m32.apply({"params": params}, src, src_mask, dec_in, dec_mask)
  out = m16.apply({"params": params}, src, src_mask, dec_in, dec_mask)
  assert out.dtype == jnp.float32
  assert rel_err(out, ref) < 2e-2
  # The cache holds bf16 too; cached bf16 decoding stays as close. (Right padding: the
  # valid positions never see a padded key, so the cache needs no target mask.)
  cached = _incremental(m16, params, src, src_mask, dec_in, [2, 1, 1, 1, 1, 1, 1], 10)
  valid = dec_mask.astype(bool)
  assert rel_err(cached[valid], np.asarray(ref)[valid]) < 2e-2


def test_dropout_is_active_when_training(tmp_path, rng):
  _save(tmp_path, seed=7)
  module, params = weights.load_bart(tmp_path)
  src, src_mask, dec_in, dec_mask = _batch(rng)
  run = lambda key: module.apply({"params": params}, src, src_mask, dec_in, dec_mask,
                                 deterministic=False, rngs={"dropout": key})
  a, b = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(1))
  assert max_abs(a, b) > 1e-3
  np.testing.assert_array_equal(a, run(jax.random.PRNGKey(0)))


@pytest.mark.parametrize("policy", ["dots", "full"])
@pytest.mark.slow
def test_remat_changes_no_numbers(tmp_path, rng, policy):
  _save(tmp_path, seed=8)
  module, params = weights.load_bart(tmp_path)
  src, src_mask, dec_in, dec_mask = _batch(rng)

  def loss(module):  # (flax draws other dropout masks inside a checkpoint: compare without)
    return lambda p: module.apply({"params": p}, src, src_mask, dec_in, dec_mask).sum()
  # Jitted: op by op, the backward pass of each checkpointed layer would dispatch (and
  # compile) every primitive on its own.
  ref_value, ref_grads = jax.jit(jax.value_and_grad(loss(module)))(params)
  value, grads = jax.jit(jax.value_and_grad(loss(module.clone(remat=policy))))(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    # float32 reassociation: remat changes how XLA fuses the layers, hence the order of sums
    assert max_abs(a, b) < 2e-5 * max(1.0, float(np.abs(b).max()))


def test_too_long_inputs_are_refused(tmp_path, rng):
  _save(tmp_path, seed=9)
  module, params = weights.load_bart(tmp_path)
  long = np.ones((1, TINY["max_position_embeddings"] + 1), np.int32)
  ok = np.ones((1, 4), np.int32)
  with pytest.raises(ValueError, match="exceed max_position_embeddings"):
    module.apply({"params": params}, long, None, ok)
  with pytest.raises(ValueError, match="exceed max_position_embeddings"):
    module.apply({"params": params}, ok, None, long)
  states = module.apply({"params": params}, ok, None, method=Bart.encode)
  with pytest.raises(ValueError, match="init_cache max_length"):
    module.apply({"params": params}, states, 65, method=Bart.init_cache)


def test_bfloat16_checkpoint_loads(tmp_path, rng):
  hf = _save(tmp_path, seed=10)
  hf.to(torch.bfloat16).save_pretrained(tmp_path)
  module, params = weights.load_bart(tmp_path)
  ref = hf.float()
  src, src_mask, dec_in, dec_mask = _batch(rng)
  with torch.no_grad():
    expected = ref(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask),
                   decoder_input_ids=torch.tensor(dec_in),
                   decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()
  logits = module.apply({"params": params}, src, src_mask, dec_in, dec_mask)
  valid = dec_mask.astype(bool)
  assert max_abs(np.asarray(logits)[valid], expected[valid]) < 1e-4
