"""RAG over both generators, through the one generator interface, against brute force.

The same RAG code (rag.Rag, decoding) runs over a tiny random BART and a tiny random Llama
(grouped-query attention). Every result is checked against a reference that uses no cache,
no sharing and no interface: the model's plain full forward pass (`_reference_logits`; for the
Llama the prompt's real tokens and the target laid out contiguously, right-padded, a layout
the RAG code never uses), recomputed over the whole sequence at every decoding step, each
beam with its own copy of every document, marginalised in NumPy (float64).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import max_abs
from rag_jax import decoding
from rag_jax.model import RagModel
from rag_jax.models import generator as generator_lib
from rag_jax.models import layers
from rag_jax.models.bart import Bart, BartConfig
from rag_jax.models.llama import Llama, LlamaConfig
from rag_jax.rag import Rag, RagConfig

V, B, Z, MAX_LENGTH = 41, 2, 3, 7
KINDS = ["bart", "llama"]


def _perturb(params, seed, scale):
  """Adds noise to every param, so that no norm scale is 1 and no distribution is flat."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + np.float32(scale) * rng.standard_normal(
      p.shape, np.float32), params)


def _model(kind: str, seed: int = 0) -> RagModel:
  """A RagModel over a tiny random generator (no question encoder: contexts come given)."""
  ids = jnp.ones((1, 4), jnp.int32)
  if kind == "bart":
    module = Bart(BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4,
                             encoder_ffn_dim=37, decoder_ffn_dim=41, max_position_embeddings=64,
                             dropout=0.0, init_std=0.1))
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(seed), ids, ids, ids))
    # Likelier EOS: some beams end early, so candidates of several lengths meet.
    params["params"]["final_logits_bias"] += jnp.zeros((1, V)).at[0, 2].set(1.0)
  else:
    module = Llama(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               head_dim=8, rope_theta=500.0, initializer_range=0.2,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0))
    params = module.init(jax.random.PRNGKey(seed), ids)
  params = _perturb(nn.meta.unbox(params)["params"], seed + 1, 0.1)
  return RagModel(Rag(None, module, RagConfig(n_docs=Z)), {"generator": params})


def _contexts(kind: str, rng, b: int = B, unpadded: bool = False):
  """[b * Z, S] random contexts and their mask: BART's right-padded; the Llama's prompts
  padded on either side, row by row (its positions follow the mask)."""
  lengths = np.full(b * Z, 9) if unpadded else rng.integers(3, 10, size=b * Z)
  s = int(lengths.max())
  ids = rng.integers(3, V, size=(b * Z, s)).astype(np.int32)
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    left = kind == "llama" and i % 2 == 0
    if left:
      mask[i, s - n:] = 1
    else:
      mask[i, :n] = 1
  pad = 1 if kind == "bart" else 0
  scores = (rng.standard_normal((b, Z)) * 2).astype(np.float32)
  return np.where(mask == 1, ids, pad).astype(np.int32), mask, scores


def _reference_logits(model: RagModel, params, ctx, mask, targets):
  """The generator's plain full forward pass: [N, S] contexts, [N, T] targets -> logits
  [N, T, V]. BART: Bart.__call__. Llama: each prompt's real tokens, then the target, as one
  contiguous right-padded sequence through Llama.__call__."""
  module = model.generator
  variables = {"params": params}
  if isinstance(module, Bart):
    return module.apply(variables, ctx, mask, targets)
  n, s = ctx.shape
  t = targets.shape[1]
  count = mask.sum(axis=1)
  prompt = jnp.take_along_axis(ctx, jnp.argsort(1 - mask, axis=1, stable=True), axis=1)
  cols = count[:, None] + jnp.arange(t)[None]                                   # [N, T]
  ids = jnp.concatenate([prompt, jnp.zeros_like(targets)], axis=1)
  ids = ids.at[jnp.arange(n)[:, None], cols].set(targets)
  full_mask = (jnp.arange(s + t)[None] < (count + t)[:, None]).astype(jnp.int32)
  logits = module.apply(variables, ids, full_mask)
  return jnp.take_along_axis(logits, cols[:, :, None], axis=1)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def _processors(model: RagModel, max_length: int = MAX_LENGTH) -> decoding.Processors:
  gen = model.rag.gen
  return decoding.Processors(eos_token_id=gen.eos_token_id, max_length=max_length,
                             forced_bos_token_id=gen.forced_bos_token_id,
                             forced_eos_token_id=gen.forced_eos_token_id)


def _brute_step(model: RagModel, ctx, mask, doc_scores):
  """A search step with no cache: the sequences so far are the state, and every step runs
  the full forward pass over all of them, under each of the Z documents of the row (rows n,
  documents ctx[n * Z + z], each its own copy), marginalised over the documents."""
  n, z = doc_scores.shape
  doc_lp = jax.nn.log_softmax(doc_scores, axis=-1)[:, :, None]
  params = model.params["generator"]

  def step(tokens, seqs, cur_len):
    seqs = seqs.at[:, cur_len - 1].set(tokens)                                  # [N, L]
    logits = _reference_logits(model, params, ctx, mask, jnp.repeat(seqs, z, axis=0))
    last = jax.lax.dynamic_index_in_dim(logits, cur_len - 1, 1, keepdims=False)  # [N*Z, V]
    lp = jax.nn.log_softmax(last, axis=-1).reshape(n, z, -1)
    return jax.nn.logsumexp(lp + doc_lp, axis=1), seqs
  return step


def _brute_beam(model: RagModel, ctx, mask, doc_scores, num_beams, max_length=MAX_LENGTH, **kw):
  """Beam search (the library's loop, checked against HF elsewhere) over `_brute_step`: rows
  of `doc_scores` [N, Z] over ctx [N * Z, S], each beam with its own copies."""
  n, z = doc_scores.shape
  s = ctx.shape[1]
  expand = lambda x: np.repeat(x.reshape(n, 1, z, s), num_beams, axis=1).reshape(-1, s)
  step = _brute_step(model, jnp.asarray(expand(ctx)), jnp.asarray(expand(mask)),
                     jnp.repeat(jnp.asarray(doc_scores), num_beams, axis=0))
  gen = model.rag.gen
  run = jax.jit(lambda: decoding.beam_search(
      step, jnp.zeros((n * num_beams, max_length), jnp.int32), batch=n, num_beams=num_beams,
      start_token_id=gen.start_token_id, pad_token_id=gen.pad_token_id,
      processors=_processors(model, max_length), reorder_cache=decoding.reorder_rows, **kw))
  return [np.asarray(x) for x in run()]


def _strip(rows, pad):
  """Rows without their trailing pads, as tuples."""
  out = []
  for r in np.asarray(rows):
    r = list(r)
    while r and r[-1] == pad:
      r.pop()
    out.append(tuple(r))
  return out


def _reference_nll(model, ctx, mask, doc_scores, labels, kind, epsilon=0.0, drop_first=False):
  """RAG's NLL [B] from full forward passes, marginalised in NumPy (float64), HF's rules:
  targets are the labels shifted left, scored up to the pad; label smoothing as HF's."""
  gen = model.rag.gen
  b, z = doc_scores.shape
  t = labels.shape[1]
  logits = _reference_logits(model, model.params["generator"], jnp.asarray(ctx),
                             jnp.asarray(mask), jnp.asarray(np.repeat(labels, z, axis=0)))
  lp_all = _log_softmax(logits).reshape(b, z, t, -1)                              # [B, Z, T, V]
  targets = np.concatenate([labels[:, 1:], np.full((b, 1), gen.pad_token_id)], axis=1)
  scored = targets != gen.pad_token_id                                            # [B, T]
  lp = np.take_along_axis(lp_all, np.broadcast_to(targets[:, None, :, None], (b, z, t, 1)),
                          -1)[..., 0]                                             # [B, Z, T]
  doc_lp = _log_softmax(doc_scores)                                               # [B, Z]
  lse_z = lambda x: np.logaddexp.reduce(x, axis=1)
  if kind == "token":
    ll = (scored * lse_z(lp + doc_lp[:, :, None])).sum(1)
    smooth = (scored * lse_z(lp_all + doc_lp[:, :, None, None]).sum(-1)).sum(1)
  else:
    ll_mask = scored.copy()
    ll_mask[:, 0] &= ~np.asarray(drop_first)
    ll = lse_z(doc_lp + (ll_mask[:, None] * lp).sum(-1))
    smooth = lse_z(V * doc_lp + (scored[:, None] * lp_all.sum(-1)).sum(-1))
  return (1 - epsilon) * -ll + epsilon / V * -smooth


def _labels(model, rng, lengths=(6, 4)):
  gen = model.rag.gen
  labels = np.full((len(lengths), max(lengths)), gen.pad_token_id, np.int32)
  for i, n in enumerate(lengths):
    labels[i, :n] = rng.integers(3, V, size=n)
    labels[i, 0], labels[i, n - 1] = gen.start_token_id, gen.eos_token_id
  return labels


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_loss_matches_brute_force(rng, kind):
  model = _model(kind)
  ctx, mask, doc_scores = _contexts(kind, rng)
  labels = _labels(model, rng)
  for rag_kind in ("token", "sequence"):
    for epsilon in (0.0, 0.1):
      ours = np.asarray(model.loss(ctx, mask, doc_scores, labels, kind=rag_kind,
                                   epsilon=epsilon))
      ref = _reference_nll(model, ctx, mask, doc_scores, labels, rag_kind, epsilon)
      np.testing.assert_allclose(ours, ref, rtol=2e-5, err_msg=f"{rag_kind} {epsilon}")
  # The gradient flows through the same code too (finite, reaching the generator's params).
  grads = jax.jit(jax.grad(lambda p: model.rag.loss({"generator": p}, ctx, mask, doc_scores,
                                                    labels).sum()))(model.params["generator"])
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_soft_retrieval_needs_an_encoder(rng):
  model = _model("llama")
  ctx, mask, doc_scores = _contexts("llama", rng)
  with pytest.raises(ValueError, match=r"^kind='soft' mixes encoder states; the Llama "
                                       r"generator has no encoder") as e:
    model.loss(ctx, mask, doc_scores, _labels(model, rng), kind="soft")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_rag_token_greedy_matches_brute_force(rng, kind):
  model = _model(kind, seed=2)
  ctx, mask, doc_scores = _contexts(kind, rng)
  ours = model.generate(ctx, mask, doc_scores, decoding="greedy", max_length=MAX_LENGTH)
  gen = model.rag.gen
  step = _brute_step(model, jnp.asarray(ctx), jnp.asarray(mask), jnp.asarray(doc_scores))
  ref, length = jax.jit(lambda: decoding.greedy_search(
      step, jnp.zeros((B, MAX_LENGTH), jnp.int32), batch=B, start_token_id=gen.start_token_id,
      pad_token_id=gen.pad_token_id, processors=_processors(model)))()
  np.testing.assert_array_equal(ours, np.asarray(ref)[:, :int(length)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_rag_token_beam_matches_brute_force(rng, kind):
  model = _model(kind, seed=3)
  ctx, mask, doc_scores = _contexts(kind, rng)
  ours = model.generate(ctx, mask, doc_scores, decoding="beam", num_beams=3,
                        num_return_sequences=2, max_length=MAX_LENGTH)
  seqs, _, gen_len = _brute_beam(model, ctx, mask, doc_scores, 3)
  length = 1 + int(gen_len[:, :2].max())
  np.testing.assert_array_equal(ours, seqs[:, :2, :length].reshape(2 * B, length))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_per_document_beams_match_brute_force(rng, kind):
  """RAG-Sequence's beam search under each document, with the contexts' mask."""
  model = _model(kind, seed=4)
  ctx, mask, _ = _contexts(kind, rng)
  seqs, scores, gen_len = decoding.generator_beam(model.rag.gen, model.params["generator"],
                                                  ctx, mask, num_beams=3,
                                                  processors=_processors(model))
  ref = _brute_beam(model, ctx, mask, np.zeros((B * Z, 1), np.float32), 3)
  np.testing.assert_array_equal(seqs, ref[0])
  np.testing.assert_allclose(scores, ref[1], rtol=1e-5)
  np.testing.assert_array_equal(gen_len, ref[2])


def _thorough_reference(model, ctx, mask, doc_scores, num_beams, num_return):
  """RAG-Sequence thorough decoding by its definition: the brute-force beams of every
  document, deduplicated per example, every candidate scored under every document by full
  forward passes (HF's BOS rule), the best kept."""
  b, z = doc_scores.shape
  seqs, _, gen_len = _brute_beam(model, ctx, mask, np.zeros((b * z, 1), np.float32), num_beams)
  out = []
  for i in range(b):
    beams = seqs[i * z:(i + 1) * z].reshape(z * num_beams, -1)
    width = 1 + int(gen_len[i * z:(i + 1) * z].max())
    cands = list(dict.fromkeys(tuple(r[:width]) for r in beams))
    labels = np.array(cands, np.int32)
    drop_first = np.all(beams[:, 1] == model.rag.bos_token_id)
    rows = slice(i * z, (i + 1) * z)
    nll = _reference_nll(model, np.tile(ctx[rows], (len(cands), 1)),
                         np.tile(mask[rows], (len(cands), 1)),
                         np.repeat(doc_scores[i:i + 1], len(cands), axis=0), labels, "sequence",
                         drop_first=np.full(len(cands), drop_first))
    out.extend((cands[j], nll[j]) for j in np.argsort(nll, kind="stable")[:num_return])
  return out


@pytest.mark.parametrize("kind, padded", [("bart", True), ("llama", True), ("llama", False)])
@pytest.mark.slow
def test_rag_sequence_thorough_matches_brute_force(rng, kind, padded):
  """Padded contexts too: the per-document beam search reads them under their mask (where HF's
  BART reads the padding; test_decoding.py has HF's unpadded case)."""
  model = _model(kind, seed=5)
  ctx, mask, doc_scores = _contexts(kind, rng, unpadded=not padded)
  assert padded == (mask == 0).any()
  ours = model.generate(ctx, mask, doc_scores, kind="sequence", decoding="thorough",
                        num_beams=2, num_return_sequences=2, max_length=MAX_LENGTH)
  ref = _thorough_reference(model, ctx, mask, doc_scores, 2, 2)
  pad = model.rag.gen.pad_token_id
  got = _strip(ours, pad)
  want = _strip(decoding.pad_rows([np.array(y) for y, _ in ref], pad), pad)
  if got != want:
    # Candidates whose likelihoods tie to rounding may swap: then rank by rank, the same NLL.
    nll = dict(zip(want, [n for _, n in ref]))
    np.testing.assert_allclose([nll.get(y, np.inf) for y in got], [n for _, n in ref],
                               rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_rag_sequence_fast_matches_brute_force(rng, kind):
  """Fast decoding by its definition: p(y|x) = sum_z p(z|x) p(y|x,z), p(y|x,z) the brute-force
  beam's own probability where y is in z's beam, else 0."""
  model = _model(kind, seed=6)
  ctx, mask, doc_scores = _contexts(kind, rng)
  ours = model.generate(ctx, mask, doc_scores, kind="sequence", decoding="fast", num_beams=3,
                        num_return_sequences=2, max_length=MAX_LENGTH)
  seqs, scores, gen_len = _brute_beam(model, ctx, mask, np.zeros((B * Z, 1), np.float32), 3)
  doc_lp = _log_softmax(doc_scores)
  want = []
  for i in range(B):
    p = {}
    for z in range(Z):
      for k in range(3):
        y = tuple(seqs[i * Z + z, k, :1 + gen_len[i * Z + z, k]])
        log_p = scores[i * Z + z, k] * max(gen_len[i * Z + z, k], 1)  # length penalty 1 undone
        p[y] = p.get(y, 0.0) + np.exp(doc_lp[i, z] + log_p)
    want.extend(sorted(p, key=lambda y: -p[y])[:2])
  assert _strip(ours, model.rag.gen.pad_token_id) == _strip(
      decoding.pad_rows([np.array(y) for y in want], model.rag.gen.pad_token_id),
      model.rag.gen.pad_token_id)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_doc_posteriors_match_brute_force(rng, kind):
  model = _model(kind, seed=7)
  ctx, mask, doc_scores = _contexts(kind, rng)
  seqs = _labels(model, rng, lengths=(7, 5))
  post = model.doc_posteriors(ctx, mask, doc_scores, seqs)
  logits = _reference_logits(model, model.params["generator"], jnp.asarray(ctx),
                             jnp.asarray(mask), jnp.asarray(np.repeat(seqs[:, :-1], Z, axis=0)))
  lp = _log_softmax(logits).reshape(B, Z, seqs.shape[1] - 1, -1)
  lp = np.take_along_axis(lp, np.broadcast_to(seqs[:, None, 1:, None], lp.shape[:3] + (1,)),
                          -1)[..., 0]
  np.testing.assert_allclose(model.doc_token_log_probs(ctx, mask, seqs), lp, rtol=1e-4,
                             atol=1e-5)
  prior = _log_softmax(doc_scores)[:, :, None]
  for posterior_kind, joint in (("token", lp + prior), ("sequence", np.cumsum(lp, 2) + prior)):
    expected = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
    got = post if posterior_kind == "token" else model.doc_posteriors(ctx, mask, doc_scores, seqs,
                                                                     kind="sequence")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=posterior_kind)


@dataclasses.dataclass(frozen=True)
class _CopiedContexts:
  """A generator whose prefill copies each context once per beam (no sharing), reordering
  every row of its cache: the reference for the shared prefill."""
  gen: Any

  def prefill(self, params, ctx, mask, length, *, copies=1, group=1):
    expand = lambda x: layers.expand_rows(x, copies, group)
    return self.gen.prefill(params, expand(ctx), expand(mask), length)

  def reorder(self, cache, rows, group=1):
    return layers.take_rows(cache, rows, group)

  def __getattr__(self, name):
    return getattr(self.gen, name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_beams_sharing_their_contexts_equal_beams_with_copies(rng, kind):
  """One copy of each document's encoder keys/values (BART) or prompt KV cache (Llama),
  shared by its beams, gives the beams of a copy per beam."""
  model = _model(kind, seed=8)
  ctx, mask, doc_scores = _contexts(kind, rng)
  gen, params = model.rag.gen, model.params["generator"]
  kw = dict(num_beams=2, processors=_processors(model, max_length=9))
  shared = decoding.rag_token_beam(gen, params, ctx, mask, doc_scores, **kw)
  copied = decoding.rag_token_beam(_CopiedContexts(gen), params, ctx, mask, doc_scores, **kw)
  np.testing.assert_array_equal(shared[0], copied[0])
  np.testing.assert_allclose(shared[1], copied[1], rtol=1e-5)
  np.testing.assert_array_equal(shared[2], copied[2])
  cache = gen.prefill(params, ctx, mask, 8, copies=2, group=Z)
  if kind == "llama":  # the prompts once; the beams' own keys in their own buffers
    assert cache.prefix[0].key.shape[0] == B * Z and cache.self_attn[0].key.shape[0] == B * 2 * Z
  else:
    assert cache.decoder.cross_attn[0].key.shape[0] == B * Z


def test_shared_prefix_attention_equals_attention_over_copies(rng):
  """layers.dot_product_attention over a prefix shared by C copies = attention over the
  concatenated keys with a copy of the prefix per row."""
  b, c, g, h, r, s, l, k = 2, 3, 2, 2, 4, 5, 6, 8
  n = b * c * g
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q, key, value = draw(n, h, r, k), draw(n, h, l, k), draw(n, h, l, k)
  prefix = layers.KVCache(draw(b * g, h, s, k), draw(b * g, h, s, k))
  prefix_mask = (rng.random((b * g, s)) > 0.3).astype(np.int32)
  bias = jnp.asarray(np.where(rng.random((n, 1, r, l)) > 0.3, 0.0, layers.MASK_VALUE),
                     jnp.float32)
  ours = layers.dot_product_attention(q, key, value, bias, lambda w: w, jnp.float32,
                                      prefix=prefix, prefix_bias=layers.padding_bias(prefix_mask),
                                      share=(c, g))
  copy = lambda x: layers.expand_rows(x, c, g)
  full_key = jnp.concatenate([copy(prefix.key), key], axis=2)
  full_value = jnp.concatenate([copy(prefix.value), value], axis=2)
  full_bias = jnp.concatenate([jnp.broadcast_to(layers.padding_bias(copy(prefix_mask)),
                                                (n, 1, r, s)), bias], axis=-1)
  ref = jax.nn.softmax(jnp.einsum("nhrk,nhsk->nhrs", q, full_key) + full_bias, axis=-1)
  ref = jnp.einsum("nhrs,nhsk->nhrk", ref, full_value)
  assert max_abs(ours, ref) < 1e-5
  x = draw(n, 3, r, 5)
  shared = layers.share_rows(x, c, g, axis=2)
  assert shared.shape == (b * g, 3, c * r, 5)
  np.testing.assert_array_equal(layers.unshare_rows(shared, c, g, axis=2), x)
  # Row (b, c, g) of x sits in source row (b, g), copy c.
  np.testing.assert_array_equal(shared.reshape(b, g, 3, c, r, 5)[1, 0, :, 2],
                                x[(1 * c + 2) * g + 0])


def test_adapt():
  model = _model("llama")
  gen = generator_lib.adapt(model.generator)
  assert isinstance(gen, generator_lib.DecoderOnlyGenerator) and not gen.has_encoder
  assert (gen.start_token_id, gen.pad_token_id, gen.eos_token_id) == (1, 0, 2)
  assert generator_lib.adapt(gen) is gen
  assert generator_lib.adapt(gen, start_token_id=7).start_token_id == 7
  # A Llama padding with its EOS (SmolLM2) pads with its BOS instead: EOS must be scored.
  smol = model.generator.clone(config=dataclasses.replace(model.generator.config, pad_token_id=2))
  assert generator_lib.adapt(smol).pad_token_id == 1
  assert isinstance(generator_lib.adapt(_model("bart").generator), generator_lib.BartGenerator)
  with pytest.raises(TypeError, match="no generator interface for Dense"):
    generator_lib.adapt(nn.Dense(3))


def test_from_parts_over_a_gguf_llama(tmp_path, monkeypatch, rng):
  """RagModel.from_parts with a Llama GGUF (tokenizer inside): prompts right-padded to the
  longest, a long passage cut so that the question stays, and RAG over them."""
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path / "cache"))  # its built tokenizer
  import gguf
  import transformers
  from conftest import randomize_
  from test_llama import TINY, _write_gguf
  from test_rag import Q
  hf = randomize_(transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)))
  _write_gguf(tmp_path / "tiny.gguf", hf, gguf.GGMLQuantizationType.F32)
  transformers.DPRQuestionEncoder(transformers.DPRConfig(**Q)).save_pretrained(tmp_path / "q")
  # The tiny tokenizer knows lowercase letters, '.' and spaces only.
  model = RagModel.from_parts(tmp_path / "q", tmp_path / "tiny.gguf", n_docs=2,
                              max_combined_length=24, title_sep=". ", doc_sep=". ")
  assert isinstance(model.generator, Llama) and model.generator_tokenizer is not None
  tok = model.generator_tokenizer
  assert model.rag.gen.start_token_id == TINY["bos_token_id"]  # no newline token: the BOS
  docs = [[{"title": "cat", "text": "the cat sat on the mat " * 6},
           {"title": "dog", "text": "a dog"}],
          [{"title": "hat", "text": "a hat"}, {"title": "sun", "text": "the sun is hot"}]]
  ctx, mask = model.contextualize(["where is the cat", "is it hot"], docs)
  assert ctx.shape == (4, 24) and mask[0].all() and mask[:, 0].all()
  assert not mask[1, -1] and mask[1].sum() == len(tok("dog. a dog. where is the cat")["input_ids"])
  # The first passage lost its end to fit 24 tokens; its question is whole.
  assert tok.decode(ctx[0]) == "cat. the cat s. where is the cat"
  doc_scores = rng.standard_normal((2, 2)).astype(np.float32)
  seqs = model.generate(ctx, mask, doc_scores, max_length=6)
  assert seqs.shape[0] == 2 and (seqs[:, 0] == TINY["bos_token_id"]).all()
  assert np.isfinite(model.loss(ctx, mask, doc_scores, seqs)).all()


def test_chat_prompt_ends_where_the_answer_starts():
  from rag_jax import prompts

  class Chat:
    def apply_chat_template(self, turns, tokenize, add_generation_prompt):
      assert not tokenize and add_generation_prompt
      return "".join(f"<{t['role']}>{t['content']}\n" for t in turns) + "<assistant>\n"
  assert prompts.chat_prompt(Chat(), system="be brief")("ctx") == \
      "<system>be brief\n<user>ctx\n<assistant>"
