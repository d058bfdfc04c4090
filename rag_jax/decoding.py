"""Decoding: a jitted greedy search over a `lax.while_loop`, HF's logits processors, and the
RAG-Token step that marginalises the next-token distribution over the retrieved documents.

    step(tokens [N], cache, cur_len) -> (log-probs [N, V], cache)

is all the search needs; `rag_token_step` builds one from a BART with one KV cache per
(example, document) pair, the encoder run once per document. Everything runs on device: no
per-step host round trip.

Lengths follow HF: a sequence starts with the decoder start token, `cur_len` counts the tokens
so far (start token included), `max_length` bounds the whole sequence.

Shapes: N = batch (x beams), Z = documents, L = max_length, V = vocabulary.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Tuple

import flax
import jax
import jax.numpy as jnp

from rag_jax import marginalize
from rag_jax.models import bart as bart_lib

Array = jax.Array
NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Processors:
  """The logits processors HF's `generate` builds from a generation config (those that RAG
  checkpoints set), applied in HF's order."""
  eos_token_id: int
  max_length: int
  min_length: int = 0
  no_repeat_ngram_size: int = 0
  forced_bos_token_id: Optional[int] = None
  forced_eos_token_id: Optional[int] = None

  def __call__(self, scores: Array, sequences: Array, cur_len: Array) -> Array:
    """scores [N, V] log-probs, sequences [N, L] (valid up to cur_len) -> processed scores."""
    v = scores.shape[-1]
    if self.no_repeat_ngram_size > 0:
      scores = jnp.where(_banned_ngram_tokens(sequences, cur_len, self.no_repeat_ngram_size, v),
                         NEG_INF, scores)
    if self.min_length > 0:
      eos = jnp.arange(v) == self.eos_token_id
      scores = jnp.where(jnp.logical_and(cur_len < self.min_length, eos), NEG_INF, scores)
    for token, when in ((self.forced_bos_token_id, 1),
                        (self.forced_eos_token_id, self.max_length - 1)):
      if token is not None:
        only = jnp.where(jnp.arange(v) == token, 0.0, NEG_INF)
        scores = jnp.where(cur_len == when, only, scores)
    return scores


def _banned_ngram_tokens(sequences: Array, cur_len: Array, n: int, vocab: int) -> Array:
  """[N, V] True for tokens that would repeat an n-gram of sequences[:, :cur_len] (HF's
  NoRepeatNGramLogitsProcessor)."""
  length = sequences.shape[1]
  zero = jnp.zeros((), jnp.int32)
  prefix = jax.lax.dynamic_slice_in_dim(sequences, jnp.maximum(cur_len - (n - 1), 0), n - 1, 1)
  banned = jnp.zeros((sequences.shape[0], vocab), bool)
  for i in range(length - n + 1):  # every n-gram that ends before cur_len
    window = sequences[:, i:i + n - 1]
    hit = jnp.all(window == prefix, axis=1) & (i + n - 1 < cur_len) & (cur_len >= n - 1 + zero)
    banned = banned | (hit[:, None] & (jnp.arange(vocab)[None, :] == sequences[:, i + n - 1,
                                                                               None]))
  return banned


@flax.struct.dataclass
class GreedyState:
  cur_len: Array      # int32 scalar: tokens so far (start token included)
  sequences: Array    # [N, L] int32, pad after the end
  finished: Array     # [N] bool
  cache: Any


def greedy_search(step: Callable, cache: Any, *, batch: int, start_token_id: int,
                  pad_token_id: int, processors: Processors) -> Tuple[Array, Array]:
  """Greedy decoding under `lax.while_loop`, stopping when every sequence has ended.

  Args:
    step: (tokens [N], cache, cur_len) -> (log-probs [N, V], cache).
    cache: the step's initial state.
    batch: N.
    start_token_id, pad_token_id: as HF's generation config.
    processors: the logits processors (their max_length is L).
  Returns:
    sequences [N, L] (pad after EOS) and the number of valid columns (HF returns only those).
  """
  length = processors.max_length
  eos = processors.eos_token_id
  sequences = jnp.full((batch, length), pad_token_id, jnp.int32).at[:, 0].set(start_token_id)
  state = GreedyState(jnp.ones((), jnp.int32), sequences, jnp.zeros((batch,), bool), cache)

  def cond(s: GreedyState):
    return (s.cur_len < length) & ~jnp.all(s.finished)

  def body(s: GreedyState):
    tokens = jax.lax.dynamic_index_in_dim(s.sequences, s.cur_len - 1, 1, keepdims=False)
    logprobs, cache = step(tokens, s.cache, s.cur_len)
    scores = processors(logprobs, s.sequences, s.cur_len)
    nxt = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    nxt = jnp.where(s.finished, pad_token_id, nxt)
    seqs = jax.lax.dynamic_update_index_in_dim(s.sequences, nxt, s.cur_len, 1)
    return GreedyState(s.cur_len + 1, seqs, s.finished | (nxt == eos), cache)

  final = jax.lax.while_loop(cond, body, state)
  return final.sequences, final.cur_len


def rag_token_step(generator: bart_lib.Bart, params, encoder_mask: Array, doc_scores: Array):
  """The RAG-Token step: next-token log-dist = logsumexp_z [log p(z|x) + log_softmax(logits_z)].

  Args:
    generator, params: the BART and its params.
    encoder_mask: [N * Z, S] the contexts' mask (the docs of row n in rows n*Z .. n*Z+Z-1).
    doc_scores: [N, Z].
  Returns:
    step(tokens [N], cache, cur_len) -> (log-probs [N, V], cache) over a cache of N * Z rows.
  """
  n, z = doc_scores.shape

  def step(tokens, cache, cur_len):
    del cur_len
    ids = jnp.repeat(tokens, z)[:, None]                                       # [N*Z, 1]
    logits, cache = generator.apply({"params": params}, ids, cache, encoder_mask,
                                    method=bart_lib.Bart.decode_step)
    marginal = marginalize.rag_token_marginal(logits.reshape(n, z, 1, -1), doc_scores)
    return marginal[:, 0], cache                                               # [N, V]
  return step


@functools.partial(jax.jit, static_argnames=("generator", "processors", "start_token_id",
                                             "pad_token_id"))
def rag_token_greedy(generator: bart_lib.Bart, params, context_input_ids: Array,
                     context_attention_mask: Array, doc_scores: Array, *,
                     processors: Processors, start_token_id: int, pad_token_id: int):
  """RAG-Token greedy decoding: [B * Z, S] contexts, [B, Z] doc scores -> ([B, L], length)."""
  states = generator.apply({"params": params}, context_input_ids, context_attention_mask,
                           method=bart_lib.Bart.encode)
  cache = generator.apply({"params": params}, states, processors.max_length - 1,
                          method=bart_lib.Bart.init_cache)
  step = rag_token_step(generator, params, context_attention_mask, doc_scores)
  return greedy_search(step, cache, batch=doc_scores.shape[0], start_token_id=start_token_id,
                       pad_token_id=pad_token_id, processors=processors)
