"""The marginalisation kernels against a brute-force NumPy version of their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rag_jax import marginalize as m

B, Z, T, V = 4, 5, 6, 11


def _setup(rng, missing):
  logits = rng.standard_normal((B, Z, T, V)) * 2
  targets = rng.integers(0, V, size=(B, Z, T))
  targets[:] = targets[:, :1]  # the same target under every document
  doc_scores = rng.standard_normal((B, Z)) * 3
  mask = np.ones((B, T), np.int32)
  mask[1, 4:] = 0
  mask[3, 2:] = 0
  if missing:
    doc_scores[0, 1:] = -np.inf   # all but one document missing
    doc_scores[2, [1, 3]] = -np.inf
  return logits, targets, doc_scores, mask


def _np_probs(logits, targets, doc_scores):
  """p(y_i | z) [B, Z, T] and p(z) [B, Z] by explicit exponentiation in float64."""
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  p_target = np.take_along_axis(p, targets[..., None], -1)[..., 0]
  w = np.exp(np.where(np.isfinite(doc_scores), doc_scores, -np.inf))
  with np.errstate(invalid="ignore"):  # a row without documents has no p(z): NaN, unused
    return p, p_target, w / w.sum(-1, keepdims=True)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.slow
def test_kernels_against_numpy(rng, missing):
  logits, targets, doc_scores, mask = _setup(rng, missing)
  p, p_target, p_doc = _np_probs(logits, targets, doc_scores)
  lp, smooth = m.target_log_probs(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                  with_smoothing=True)
  np.testing.assert_allclose(lp, np.log(p_target), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(smooth, np.log(p).sum(-1), rtol=1e-5)

  # RAG-Sequence: log sum_z p(z) prod_{i scored} p(y_i|z).
  prod = np.prod(np.where(mask[:, None, :] > 0, p_target, 1.0), axis=-1)
  expected_seq = np.log((p_doc * prod).sum(-1))
  seq = m.rag_sequence_log_likelihood(lp, jnp.asarray(doc_scores, jnp.float32), mask)
  np.testing.assert_allclose(seq, expected_seq, rtol=1e-5)

  # RAG-Token: sum_{i scored} log sum_z p(z) p(y_i|z).
  per_pos = np.log((p_doc[:, :, None] * p_target).sum(1))
  expected_tok = (per_pos * mask).sum(-1)
  tok = m.rag_token_log_likelihood(lp, jnp.asarray(doc_scores, jnp.float32), mask)
  np.testing.assert_allclose(tok, expected_tok, rtol=1e-5)

  # The marginal distribution and HF's RAG-Token smoothing term built on it.
  marginal = np.log((p_doc[:, :, None, None] * p).sum(1))
  ours_marginal = m.rag_token_marginal(jnp.asarray(logits, jnp.float32),
                                       jnp.asarray(doc_scores, jnp.float32))
  np.testing.assert_allclose(ours_marginal, marginal, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.exp(ours_marginal).sum(-1), 1.0, rtol=1e-5)
  smooth_tok = m.rag_token_smoothing(jnp.asarray(logits, jnp.float32),
                                     jnp.asarray(doc_scores, jnp.float32), mask)
  np.testing.assert_allclose(smooth_tok, (marginal.sum(-1) * mask).sum(-1), rtol=1e-5)


def test_one_document_is_plain_likelihood(rng):
  logits, targets, doc_scores, mask = _setup(rng, missing=False)
  lp, _ = m.target_log_probs(jnp.asarray(logits[:, :1], jnp.float32), targets[:, :1])
  plain = (np.asarray(lp[:, 0]) * mask).sum(-1)
  for fn in (m.rag_sequence_log_likelihood, m.rag_token_log_likelihood):
    np.testing.assert_allclose(fn(lp, doc_scores[:, :1], mask), plain, rtol=1e-5)


@pytest.mark.slow
def test_gradients_finite_with_missing_and_empty_rows(rng):
  logits, targets, doc_scores, mask = _setup(rng, missing=True)
  doc_scores[1, :] = -np.inf  # a padding row: no documents
  lp, _ = m.target_log_probs(jnp.asarray(logits, jnp.float32), targets)
  for fn in (m.rag_sequence_log_likelihood, m.rag_token_log_likelihood):
    value = fn(lp, jnp.asarray(doc_scores, jnp.float32), mask)
    assert float(value[1]) == 0.0 and np.isfinite(value).all()
    g_lp, g_s = jax.grad(lambda a, s: fn(a, s, mask).sum(), argnums=(0, 1))(
        lp, jnp.asarray(doc_scores, jnp.float32))
    assert np.isfinite(g_lp).all() and np.isfinite(g_s).all()
    assert not np.any(g_s[1]) and not np.any(g_lp[1])          # the empty row is inert
    assert not np.any(np.asarray(g_lp)[0, 1:])                  # missing docs get no gradient
  # Gradient of RAG-Token w.r.t. the target log-probs is the doc posterior p(z | x, y_i).
  g = jax.grad(lambda a: m.rag_token_log_likelihood(a, doc_scores, mask).sum())(lp)
  _, p_target, p_doc = _np_probs(logits, targets, doc_scores)
  post = p_doc[:, :, None] * p_target
  post = post / post.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(g)[2], (post * mask[:, None, :])[2], rtol=1e-4,
                             atol=1e-6)


def test_soft_retrieval_mix_definition(rng):
  states = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
  masks = np.ones((2, 3, 4), np.int32)
  masks[0, 1, 2:] = 0
  masks[1, 0, 3] = 0
  scores = rng.standard_normal((2, 3)).astype(np.float32)
  scores[1, 2] = -np.inf
  mixed, mixed_mask = m.soft_retrieval_mix(states, masks, scores)
  alpha = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
  for b in range(2):
    for s in range(4):
      w = alpha[b] * masks[b, :, s]
      np.testing.assert_allclose(mixed[b, s], (w[:, None] * states[b, :, s]).sum(0) / w.sum(),
                                 rtol=1e-5)
  assert mixed_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_nan_is_not_hidden(rng):
  logits, targets, doc_scores, mask = _setup(rng, missing=False)
  lp, _ = m.target_log_probs(jnp.asarray(logits, jnp.float32), targets)
  lp = lp.at[2, 0, 0].set(jnp.nan)
  for fn in (m.rag_sequence_log_likelihood, m.rag_token_log_likelihood):
    out = np.asarray(fn(lp, doc_scores, mask))
    assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()
