"""Rag: question encoder + generator + the RAG config, and RAG's computation on them.

    nll = rag.loss(params, context_input_ids, context_attention_mask, doc_scores, labels,
                   kind="token")                                  # [batch], HF's loss

`Rag` holds the modules and the RAG config, no params; every method is a pure function of a
params pytree `{"question_encoder", "generator"}`, so `jax.jit` and `jax.grad` apply and a
train step owns (and donates) the params. `rag_jax.model.RagModel` is the thin inference
wrapper around it (a checkpoint's params and tokenizers). Layouts follow HF's RAG: contexts are
`[batch * docs, length]`, the docs of example b in rows `b * docs ... b * docs + docs - 1`;
labels are `[batch, T]`, padded with the generator's pad id, fed unshifted to the decoder and
scored shifted left.

The generator is a BART or a decoder-only Llama, reached only through its interface
(rag_jax.models.generator): for a Llama the contexts are the prompts (the same
`title / text // question` strings, `prompt_format` for a chat template), padded on either
side (`contexts.join_contexts` right-pads them), and each label row follows its prompt.

Shapes: B = batch, Z = docs, S = context length, T = target length, D = retrieval dim,
V = vocabulary.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import marginalize
from rag_jax.models import bert as bert_lib
from rag_jax.models import generator as generator_lib

Array = jax.Array
Params = Dict[str, Any]
KINDS = ("token", "sequence", "soft")
# Generation settings a checkpoint may carry (generation_config.json, or the generator's
# config.json as older checkpoints do), and HF's defaults for them.
GENERATION_DEFAULTS = {"max_length": 20, "min_length": 0, "num_beams": 1,
                       "num_return_sequences": 1, "no_repeat_ngram_size": 0,
                       "bad_words_ids": None, "length_penalty": 1.0, "early_stopping": False}


@dataclasses.dataclass(frozen=True)
class RagConfig:
  """RAG's own settings (HF RagConfig's fields that change results)."""
  n_docs: int = 5
  title_sep: str = " / "
  doc_sep: str = " // "
  max_combined_length: int = 300
  prefix: Optional[str] = None
  label_smoothing: float = 0.0
  exclude_bos_score: bool = False
  bos_token_id: Optional[int] = None  # None: the generator's (as HF's get_nll falls back)
  # The token every target starts with (generator.Generator.start_token_id); None: the
  # generator's own (BART: decoder_start_token_id; a decoder-only model: its bos, else eos).
  target_start_token_id: Optional[int] = None

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "RagConfig":
    """From an HF RAG config.json. HF's retriever takes the prefix from the generator's
    config (`config.generator.prefix`), not from the top level."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(f"unknown RAG config field {unknown[0]!r}")
    kwargs = {k: v for k, v in hf.items() if k in fields and v is not None}
    generator_prefix = (hf.get("generator") or {}).get("prefix")
    if generator_prefix is not None:
      kwargs["prefix"] = generator_prefix
    kwargs.update(overrides)
    return cls(**kwargs)


def answer_posteriors(posteriors: np.ndarray, lengths: np.ndarray, kind: str) -> np.ndarray:
  """How much each document counted for a whole answer: [B, Z, T] per-token posteriors
  (`RagModel.doc_posteriors`) of answers `lengths` [B] tokens long -> [B, Z]. RAG-Sequence:
  p(z|x,y), the column of the answer's last token; RAG-Token, where each token has its own
  document: the mean over the answer's tokens of p(z|x,y_i,y_<i). A zero length reads the
  first column."""
  lengths = np.maximum(np.asarray(lengths), 1)
  if kind == "sequence":
    return np.take_along_axis(posteriors, (lengths - 1)[:, None, None], axis=2)[:, :, 0]
  weights = np.arange(posteriors.shape[2])[None, :] < lengths[:, None]               # [B, T]
  return np.einsum("bzt,bt->bz", posteriors, weights / lengths[:, None])


def shift_left(labels: Array, pad_token_id: int) -> Array:
  """HF RAG's targets: labels [B, T] shifted left by one, pad appended."""
  return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], pad_token_id)], axis=1)


@dataclasses.dataclass(frozen=True)
class Rag:
  """The RAG computation: question encoder and generator modules, the RAG config, no params.

  Every method is a pure function of `params = {"question_encoder", "generator"}`. The class
  is hashable, so it may be a static argument of `jax.jit`.

  The generator is reached only through its `Generator` interface (`self.gen`), so the same
  code runs over a BART or a decoder-only Llama.

  Attributes:
    question_encoder: BertEncoder producing q(x) [B, D].
    generator: the generator module (a Bart or a Llama), or a `generator.Generator`.
    config: RagConfig.
  """
  question_encoder: bert_lib.BertEncoder
  generator: Any
  config: RagConfig = RagConfig()

  @property
  def gen(self) -> generator_lib.Generator:
    """The generator's interface (rag_jax.models.generator), with the config's start token."""
    return generator_lib.adapt(self.generator, self.config.target_start_token_id)

  def question_vectors(self, params: Params, input_ids: Array,
                       attention_mask: Optional[Array] = None, *, deterministic: bool = True,
                       rngs: Optional[Dict[str, Array]] = None) -> Array:
    """q(x): [B, L] question tokens -> [B, D] float32."""
    return self.question_encoder.apply({"params": params["question_encoder"]}, input_ids,
                                       attention_mask, deterministic=deterministic,
                                       rngs=rngs)[1]

  def doc_scores(self, params: Params, input_ids: Array, attention_mask: Optional[Array],
                 doc_embeds: Array, *, deterministic: bool = True,
                 rngs: Optional[Dict[str, Array]] = None) -> Array:
    """q(x) . d(z) with the document vectors frozen: [B, L], [B, Z, D] -> [B, Z].

    The gradient reaches the question encoder only; the documents receive none.
    """
    q = self.question_vectors(params, input_ids, attention_mask,
                              deterministic=deterministic, rngs=rngs)
    return jnp.einsum("bd,bzd->bz", q, jax.lax.stop_gradient(doc_embeds.astype(jnp.float32)))

  def loss(self, params: Params, context_input_ids: Array, context_attention_mask: Array,
           doc_scores: Array, labels: Array, *, kind: str = "token",
           epsilon: Optional[float] = None, exclude_bos_score: Optional[bool] = None,
           deterministic: bool = True, rngs: Optional[Dict[str, Array]] = None) -> Array:
    """Per-example negative log-likelihood [B], as HF RAG's forward `loss` (reduce_loss=False).

    One deliberate difference: RAG-Sequence always counts log p(z|x). HF adds it to the second
    target position's score, and so loses it when that position is padding (a one-token
    target, or a generated pad there); `tests/test_rag.py` pins the difference.

    Args:
      params: {"question_encoder", "generator"}; only the generator's are used here.
      context_input_ids, context_attention_mask: [B * Z, S] generator inputs (for a
        decoder-only generator the prompts, padded on either side).
      doc_scores: [B, Z] (-inf for a missing document).
      labels: [B, T], padded with the generator's pad id (-100 is read as padding too),
        starting with its start token.
      kind: "token", "sequence" or "soft" (soft retrieval, see marginalize.soft_retrieval_mix;
        generators with an encoder only).
      epsilon: label smoothing, as HF applies it; default: the config's label_smoothing.
      exclude_bos_score: RAG-Sequence only; default from the config.
      deterministic, rngs: dropout.
    """
    return self.nll(params, context_input_ids, context_attention_mask, doc_scores, labels,
                    kind=kind, epsilon=epsilon, exclude_bos_score=exclude_bos_score,
                    deterministic=deterministic, rngs=rngs)

  def nll(self, params: Params, context_input_ids: Optional[Array],
          context_attention_mask: Array, doc_scores: Array, labels: Array, *, kind: str,
          epsilon: Optional[float], exclude_bos_score: Optional[bool],
          deterministic: bool = True, rngs: Optional[Dict[str, Array]] = None,
          drop_first: Optional[Array] = None, prefilled: Any = None) -> Array:
    """`loss` with the two knobs thorough decoding's scoring pass needs.

    Args:
      drop_first: RAG-Sequence only: [B] bool, rows whose first target position is not
        scored, replacing HF's batch-wide BOS rule (thorough decoding scores the candidates
        of each example as HF does, one example per call).
      prefilled: token / sequence only: a `Generator.prefill` cache of B * Z rows, its
        contexts read and nothing decoded yet (then the contexts are not read again and the
        labels are decoded in one cached step: scoring many candidates on the same contexts
        reads them once; `decoding.rag_sequence_thorough` makes one whose candidates share
        them).
    The rest as `loss`.
    """
    if kind not in KINDS:
      raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    g = self.gen
    if kind == "soft" and not g.has_encoder:
      raise ValueError(f"kind='soft' mixes encoder states; the {type(g.module).__name__} "
                       "generator has no encoder")
    if exclude_bos_score is None:
      exclude_bos_score = self.config.exclude_bos_score
    if epsilon is None:
      epsilon = self.config.label_smoothing
    bos = self.bos_token_id
    labels = jnp.where(labels < 0, g.pad_token_id, labels)
    b, z = doc_scores.shape
    t = labels.shape[1]
    gen_params = params["generator"]
    dropout = dict(deterministic=deterministic, rngs=rngs)

    targets = shift_left(labels, g.pad_token_id)                               # [B, T]
    pad_mask = (targets != g.pad_token_id).astype(jnp.int32)                   # [B, T]
    smoothing = epsilon > 0
    if kind == "soft":
      states = g.encode(gen_params, context_input_ids, context_attention_mask, **dropout)
      mixed, mixed_mask = marginalize.soft_retrieval_mix(
          states.reshape(b, z, *states.shape[1:]), context_attention_mask.reshape(b, z, -1),
          doc_scores)
      logits = g.decode(gen_params, labels, mixed.astype(states.dtype), mixed_mask, **dropout)
      lp, smooth = marginalize.target_log_probs(logits, targets, with_smoothing=smoothing)
      scored = pad_mask * jnp.isfinite(doc_scores).any(axis=1, keepdims=True)  # no docs: 0
      ll = jnp.sum(lp * scored, axis=1)
      smooth_ll = jnp.sum(smooth * scored, axis=1) if smoothing else None
    else:
      dec_in = jnp.repeat(labels, z, axis=0)                                   # [BZ, T]
      if prefilled is None:
        logits = g.target_logits(gen_params, context_input_ids, context_attention_mask, dec_in,
                                 **dropout)
      else:
        logits, _ = g.step(gen_params, dec_in, prefilled)
      logits = logits.reshape(b, z, t, -1)                                     # [B, Z, T, V]
      lp, smooth = marginalize.target_log_probs(
          logits, jnp.broadcast_to(targets[:, None], (b, z, t)), with_smoothing=smoothing)
      if kind == "sequence":
        # HF scores the first target position only if it is not a BOS every row starts with.
        if drop_first is None:
          use_bos = jnp.all(targets[:, 0] == bos)
          drop_first = jnp.logical_and(exclude_bos_score, use_bos)
        ll_mask = pad_mask.at[:, 0].set(jnp.where(drop_first, 0, pad_mask[:, 0]))
        ll = marginalize.rag_sequence_log_likelihood(lp, doc_scores, ll_mask)
        smooth_ll = (marginalize.rag_sequence_log_likelihood(
            smooth, doc_scores, pad_mask, prior_weight=g.vocab_size) if smoothing else None)
      else:
        ll = marginalize.rag_token_log_likelihood(lp, doc_scores, pad_mask)
        smooth_ll = (marginalize.rag_token_smoothing(logits, doc_scores, pad_mask)
                     if smoothing else None)
    if not smoothing:
      return -ll
    return (1.0 - epsilon) * -ll + (epsilon / g.vocab_size) * -smooth_ll

  def marginal_log_probs(self, params: Params, context_input_ids: Array,
                         context_attention_mask: Array, doc_scores: Array,
                         decoder_input_ids: Array) -> Array:
    """RAG-Token's marginalised next-token log-probs [B, T, V] (HF's do_marginalize=True)."""
    b, z = doc_scores.shape
    logits = self.gen.target_logits(params["generator"], context_input_ids,
                                    context_attention_mask,
                                    jnp.repeat(decoder_input_ids, z, axis=0))
    return marginalize.rag_token_marginal(logits.reshape(b, z, *logits.shape[1:]), doc_scores)

  def doc_token_log_probs(self, params: Params, context_input_ids: Array,
                          context_attention_mask: Array, sequences: Array) -> Array:
    """log p(y_i | x, z, y_<i) of each token of `sequences` after the first, under each
    document: [B * Z, S], [B * Z, S], [B, T] -> [B, Z, T - 1] float32 (one teacher-forced
    pass; everything RAG's marginals and posteriors need besides the doc scores)."""
    bz = context_input_ids.shape[0]
    b = sequences.shape[0]
    dec_in, targets = sequences[:, :-1], sequences[:, 1:]
    logits = self.gen.target_logits(params["generator"], context_input_ids,
                                    context_attention_mask, jnp.repeat(dec_in, bz // b, axis=0))
    lp, _ = marginalize.target_log_probs(logits.reshape(b, bz // b, *logits.shape[1:]),
                                         jnp.repeat(targets[:, None], bz // b, axis=1))
    return lp

  def posteriors(self, params: Params, context_input_ids: Array, context_attention_mask: Array,
                 doc_scores: Array, sequences: Array, kind: str = "token") -> Array:
    """[B * Z, S], [B * Z, S], [B, Z], [B, T] -> [B, Z, T - 1]: per token of `sequences`
    after the first, the posterior over the documents; see RagModel.doc_posteriors."""
    lp = self.doc_token_log_probs(params, context_input_ids, context_attention_mask, sequences)
    if kind == "sequence":
      lp = jnp.cumsum(lp, axis=2)
    elif kind != "token":
      raise ValueError(f"posteriors: kind must be 'token' or 'sequence', got {kind!r}")
    joint = lp + marginalize.doc_log_probs(doc_scores)[:, :, None]               # [B, Z, T-1]
    return jax.nn.softmax(joint, axis=1)

  @property
  def bos_token_id(self) -> int:
    """The BOS that RAG-Sequence's first-position rule looks for: the RAG config's, else the
    generator's."""
    if self.config.bos_token_id is not None:
      return self.config.bos_token_id
    bos = self.gen.bos_token_id
    return -1 if bos is None else bos  # -1: no token is a BOS
