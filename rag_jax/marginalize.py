"""RAG's marginalisation over the retrieved documents, as vmapped log-sum-exp kernels.

    RAG-Sequence  log p(y|x) = logsumexp_z [ log p(z|x) + sum_i log p(y_i | x, z, y_<i) ]
    RAG-Token     log p(y|x) = sum_i logsumexp_z [ log p(z|x) + log p(y_i | x, z, y_<i) ]

The kernels take the *target token's* log-probability per document, `[batch, docs, length]`,
never a `[batch, docs, length, vocab]` log-softmax: `target_log_probs` reduces the generator's
logits to `logit[y] - logsumexp(logits)` (plus, for label smoothing, `sum_v log p_v`), which XLA
computes as fused reductions over the vocabulary.

Missing documents carry a doc score of -inf (fewer than k retrieved, padding): they get zero
weight, and the values and gradients stay finite, also when only one document is left. A row
with no document at all contributes 0 (a padding example).

Every per-example kernel is written for one example and `jax.vmap`ped over the batch.
Shapes: B = batch, Z = documents, T = target length, V = vocabulary.
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def target_log_probs(logits: Array, targets: Array, *, with_smoothing: bool = False
                     ) -> Tuple[Array, Optional[Array]]:
  """Per-position log-probability of the target token, from logits, without a log-softmax.

  Args:
    logits: [..., T, V] (any float dtype; reduced in float32).
    targets: [..., T] int token ids.
    with_smoothing: also return sum_v log p_v, the label-smoothing term.
  Returns:
    log p(target) [..., T] and, if asked, sum_v log p_v [..., T] (else None); float32.
  """
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)                                        # [..., T]
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), -1)[..., 0]
  smooth = jnp.sum(logits - lse[..., None], axis=-1) if with_smoothing else None
  return picked - lse, smooth


def doc_log_probs(doc_scores: Array) -> Array:
  """log p(z|x) = log_softmax over the retrieved documents; -inf scores stay -inf.

  Args:
    doc_scores: [B, Z] retrieval scores (q . d), -inf for missing documents.
  Returns:
    [B, Z] float32. A row with no finite score gives all -inf.
  """
  scores = doc_scores.astype(jnp.float32)
  has_doc = jnp.isfinite(scores).any(axis=-1, keepdims=True)
  # The double-where keeps the gradient finite for all-missing rows.
  safe = jnp.where(has_doc, scores, 0.0)
  return jnp.where(has_doc, jax.nn.log_softmax(safe, axis=-1), -jnp.inf)


def _safe_logsumexp(x: Array, axis: int) -> Array:
  """logsumexp over `axis` that returns -inf (with zero gradient) where every input is -inf;
  a NaN input gives NaN.

  Over any axis but the last (the documents, here) it is an elementwise max and sum of the
  slices, which XLA fuses into one pass: XLA:CPU reduces a non-minor axis several times
  slower (benchmarks/RESULTS.md has the figures of a decoding step's marginal).
  """
  axis = axis % x.ndim
  if axis == x.ndim - 1:
    top = jnp.max(x, axis=-1)
    total = lambda m: jnp.sum(jnp.exp(x - m[..., None]), axis=-1)
  else:
    parts = [jax.lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]
    top = functools.reduce(jnp.maximum, parts)
    total = lambda m: functools.reduce(jnp.add, [jnp.exp(p - m) for p in parts])
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  summed = total(shift)
  empty = summed == 0.0  # every input -inf: log 0, kept out of the gradient
  return jnp.where(empty, -jnp.inf, shift + jnp.log(jnp.where(empty, 1.0, summed)))


def _zero_without_docs(x: Array, doc_scores: Array) -> Array:
  """x [B], with 0 for rows that have no document (padding examples). A NaN or inf from
  anywhere else passes through: a diverging batch must show, not train as a zero loss."""
  has_doc = jnp.isfinite(doc_scores).any(axis=-1)
  return jnp.where(has_doc, x, 0.0)


# ------------------------------------------------------------------------------------------
# Per-example kernels (one example: [Z, T] / [Z]); vmapped below.


def _sequence_ll(token_lp: Array, doc_lp: Array, mask: Array) -> Array:
  """RAG-Sequence log-likelihood of one example.

  token_lp [Z, T] target log-probs per document, doc_lp [Z], mask [T] (1 = scored).
  """
  per_doc = jnp.sum(jnp.where(mask[None, :] > 0, token_lp, 0.0), axis=1) + doc_lp  # [Z]
  return _safe_logsumexp(per_doc, axis=0)


def _token_ll(token_lp: Array, doc_lp: Array, mask: Array) -> Array:
  """RAG-Token log-likelihood of one example (same arguments as `_sequence_ll`)."""
  per_position = _safe_logsumexp(token_lp + doc_lp[:, None], axis=0)                 # [T]
  return jnp.sum(jnp.where(mask > 0, per_position, 0.0))


_sequence_ll_batch = jax.vmap(_sequence_ll)
_token_ll_batch = jax.vmap(_token_ll)


def rag_sequence_log_likelihood(token_lp: Array, doc_scores: Array, mask: Array, *,
                                prior_weight: float = 1.0) -> Array:
  """log p(y|x) under RAG-Sequence.

  Args:
    token_lp: [B, Z, T] log p(y_i | x, z, y_<i) of the target tokens.
    doc_scores: [B, Z] retrieval scores; -inf marks a missing document.
    mask: [B, T] 1 where a target position counts (not padding, not an excluded BOS).
    prior_weight: log p(z|x) enters multiplied by this. 1 for the likelihood; HF's
      label-smoothing objective feeds sum_v log p_v as `token_lp` and weight V (its prior
      is added to every one of the V entries before the sum).
  Returns:
    [B] float32; 0 for a row without documents.
  """
  doc_lp = doc_log_probs(doc_scores)
  return _zero_without_docs(_sequence_ll_batch(token_lp, doc_lp * prior_weight, mask),
                            doc_scores)


def rag_token_log_likelihood(token_lp: Array, doc_scores: Array, mask: Array) -> Array:
  """log p(y|x) under RAG-Token (arguments as `rag_sequence_log_likelihood`)."""
  return _zero_without_docs(_token_ll_batch(token_lp, doc_log_probs(doc_scores), mask),
                            doc_scores)


def rag_token_marginal(logits: Array, doc_scores: Array) -> Array:
  """The marginal next-token distribution log sum_z p(z|x) p(v | x, z, y_<i), [B, T, V].

  HF's `RagTokenForGeneration(..., do_marginalize=True).logits`. This one does hold the
  full-vocabulary tensor: it is the output. logits [B, Z, T, V], doc_scores [B, Z].
  """
  logits = logits.astype(jnp.float32)
  # log_softmax written out, so that it fuses into the sum over documents.
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)                  # [B, Z, T, 1]
  doc_lp = doc_log_probs(doc_scores)[:, :, None, None]
  return _safe_logsumexp(logits - lse + doc_lp, axis=1)


def rag_token_smoothing(logits: Array, doc_scores: Array, mask: Array) -> Array:
  """HF RAG-Token's label-smoothing objective: sum_i sum_v log p_marginal(v), [B].

  Needs the marginal of every vocabulary entry; XLA fuses the per-(i, v) logsumexp over
  documents into the reduction over v, so no [B, Z, T, V] log-softmax is kept for backward
  beyond the logits themselves. logits [B, Z, T, V], doc_scores [B, Z], mask [B, T].
  """
  def one(logits_1, doc_lp_1, mask_1):                        # [Z, T, V], [Z], [T]
    logits_1 = logits_1.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits_1, axis=-1, keepdims=True)  # [Z, T, 1]
    per_vocab = _safe_logsumexp(logits_1 - lse + doc_lp_1[:, None, None], axis=0)  # [T, V]
    return jnp.sum(jnp.where(mask_1 > 0, per_vocab.sum(-1), 0.0))
  return _zero_without_docs(jax.vmap(one)(logits, doc_log_probs(doc_scores), mask), doc_scores)


def soft_retrieval_mix(states: Array, masks: Array, doc_scores: Array) -> Tuple[Array, Array]:
  """Soft retrieval (the ablation beside hard top-k marginalisation).

  Exact formulation. With alpha_z = softmax_z(doc_scores) over the retrieved documents
  (missing ones weigh 0), the generator's encoder states of the k (question, document_z)
  inputs H_z [S, D] are read as one attention-weighted memory

      H[s] = sum_z alpha_z * m_z[s] * H_z[s] / sum_z alpha_z * m_z[s]
      m[s] = 1 if sum_z alpha_z * m_z[s] > 0 else 0

  (m_z is document z's attention mask; the per-position renormalisation keeps the padding of
  one document from diluting the others), and the decoder runs once, cross-attending to H
  under mask m:
  log p(y|x) = sum_i log p_theta(y_i | H, y_<i). The gradient reaches the question encoder
  through alpha: this is the paper notes' read vector r = sum_i softmax(q . k_i) v_i
  (../shared/seed), with the k retrieved documents as memory and their encoder states as v_i.

  Args:
    states: [B, Z, S, D] encoder states per document.
    masks: [B, Z, S] their attention masks.
    doc_scores: [B, Z].
  Returns:
    mixed states [B, S, D] (float32) and mixed mask [B, S].
  """
  alpha = jnp.exp(doc_log_probs(doc_scores))                              # [B, Z]
  weight = alpha[:, :, None] * masks.astype(jnp.float32)                  # [B, Z, S]
  total = weight.sum(axis=1)                                              # [B, S]
  mixed = jnp.einsum("bzs,bzsd->bsd", weight, states.astype(jnp.float32))
  present = total > 0  # some document with weight has a token at s
  mixed = mixed / jnp.where(present, total, 1.0)[..., None]
  return mixed, present.astype(masks.dtype)
