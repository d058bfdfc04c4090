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
import numpy as np

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
  bad_words_ids: Tuple[Tuple[int, ...], ...] = ()  # token sequences never to complete

  def __call__(self, scores: Array, sequences: Array, cur_len: Array) -> Array:
    """scores [N, V] log-probs, sequences [N, L] (valid up to cur_len) -> processed scores."""
    v = scores.shape[-1]
    if self.no_repeat_ngram_size > 0:
      scores = jnp.where(_banned_ngram_tokens(sequences, cur_len, self.no_repeat_ngram_size, v),
                         NEG_INF, scores)
    for word in self.bad_words_ids:
      if tuple(word) == (self.eos_token_id,):
        continue  # HF never bans EOS as a bad word
      *prefix, last = word
      hit = cur_len >= len(prefix)
      if prefix:
        tail = jax.lax.dynamic_slice_in_dim(sequences, jnp.maximum(cur_len - len(prefix), 0),
                                            len(prefix), 1)
        hit = hit & jnp.all(tail == jnp.asarray(prefix), axis=1, keepdims=True)
      scores = jnp.where(hit & (jnp.arange(v) == last), NEG_INF, scores)
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
  NoRepeatNGramLogitsProcessor): every window of n - 1 tokens that equals the last n - 1 is
  compared at once, and the tokens that followed them are scattered into the mask."""
  rows, length = sequences.shape
  w = length - n + 1                                                             # windows
  prefix = jax.lax.dynamic_slice_in_dim(sequences, jnp.maximum(cur_len - (n - 1), 0), n - 1, 1)
  windows = jnp.stack([sequences[:, j:j + w] for j in range(n - 1)], axis=-1) if n > 1 else \
      jnp.zeros((rows, w, 0), sequences.dtype)                                   # [N, W, n-1]
  ended = (jnp.arange(w) + n - 1 < cur_len) & (cur_len >= n - 1)                 # [W]
  hit = jnp.all(windows == prefix[:, None, :], axis=-1) & ended[None, :]        # [N, W]
  follow = jnp.where(hit, sequences[:, n - 1:], vocab)  # column V collects the non-hits
  banned = jnp.zeros((rows, vocab + 1), bool).at[jnp.arange(rows)[:, None], follow].set(True)
  return banned[:, :vocab]


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
    encoder_mask: the contexts' mask, one row per encoder row of the cache (the caches of
      `encoder_cache` share them: [B * Z, S] for N = B * beams).
    doc_scores: [N, Z].
  Returns:
    step(tokens [N], cache, cur_len) -> (log-probs [N, V], cache) over a cache of N * Z
    decoder rows (the docs of row n in rows n*Z .. n*Z+Z-1).
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
  cache = encoder_cache(generator, params, context_input_ids, context_attention_mask,
                        processors.max_length - 1, batch=context_input_ids.shape[0])
  step = rag_token_step(generator, params, context_attention_mask, doc_scores)
  return greedy_search(step, cache, batch=doc_scores.shape[0], start_token_id=start_token_id,
                       pad_token_id=pad_token_id, processors=processors)


@flax.struct.dataclass
class BeamState:
  """HF's vectorised beam search state. B = batch, K = beams, L = max_length."""
  cur_len: Array          # int32 scalar
  running_seqs: Array     # [B, K, L] live hypotheses
  running_scores: Array   # [B, K] their summed log-probs (sorted, best first)
  seqs: Array             # [B, K, L] finished hypotheses
  scores: Array           # [B, K] their length-penalised scores
  finished: Array         # [B, K] a slot holds a finished hypothesis
  gen_len: Array          # [B, K] generated tokens of each finished hypothesis
  improvable: Array       # [B, 1] HF's early-stop heuristic is not yet satisfied
  all_hit: Array          # bool scalar: every candidate of the last step ended
  cache: Any


def beam_search(step: Callable, cache: Any, *, batch: int, num_beams: int,
                start_token_id: int, pad_token_id: int, processors: Processors,
                length_penalty: float = 1.0, early_stopping: Any = False,
                reorder_cache: Callable[[Any, Array], Any]) -> Tuple[Array, Array, Array]:
  """Beam search exactly as HF's `GenerationMixin._beam_search` (v5), under `lax.while_loop`.

  Args:
    step: (tokens [B * K], cache, cur_len) -> (log-probs [B * K, V], cache).
    cache: the step's state for B * K rows (beam-major within each example).
    reorder_cache: (cache, rows [B * K]) -> the cache with row i taken from rows[i].
    length_penalty, early_stopping: as HF's generation config (early_stopping True, False or
      "never").
  Returns:
    sequences [B, K, L] best first, their scores [B, K], and the generated length of each.
  """
  k, length, eos = num_beams, processors.max_length, processors.eos_token_id
  keep = 2 * k  # HF keeps (1 + #eos tokens) * beams candidates so that K can continue
  fill = pad_token_id if pad_token_id else eos  # HF: `pad_token_id or eos_token_id`
  seqs = jnp.full((batch, k, length), fill, jnp.int32).at[:, :, 0].set(start_token_id)
  big = jnp.float32(1e9)
  state = BeamState(
      cur_len=jnp.ones((), jnp.int32), running_seqs=seqs,
      running_scores=jnp.zeros((batch, k)).at[:, 1:].set(-big), seqs=seqs,
      scores=jnp.full((batch, k), -big), finished=jnp.zeros((batch, k), bool),
      gen_len=jnp.zeros((batch, k), jnp.int32), improvable=jnp.ones((batch, 1), bool),
      all_hit=jnp.zeros((), bool), cache=cache)
  top_mask = jnp.arange(keep) < k

  def cond(s: BeamState):
    open_beam = ~(jnp.all(s.finished) & (early_stopping is True))
    return jnp.any(s.improvable) & open_beam & ~s.all_hit

  def body(s: BeamState):
    tokens = s.running_seqs[:, :, s.cur_len - 1].reshape(-1)                   # [B*K]
    logprobs, cache = step(tokens, s.cache, s.cur_len)
    logprobs = jax.nn.log_softmax(logprobs.astype(jnp.float32), axis=-1)
    logprobs = processors(logprobs, s.running_seqs.reshape(batch * k, length), s.cur_len)
    v = logprobs.shape[-1]
    acc = (logprobs.reshape(batch, k, v) + s.running_scores[:, :, None]).reshape(batch, k * v)
    top_lp, top_idx = jax.lax.top_k(acc, keep)                                 # [B, 2K]
    src_beam, token = top_idx // v, (top_idx % v).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(s.running_seqs, src_beam[:, :, None], axis=1)
    top_seqs = jax.lax.dynamic_update_index_in_dim(top_seqs, token, s.cur_len, 2)
    hits = (token == eos) | (s.cur_len + 1 >= length)                          # [B, 2K]

    # The K best candidates that did not end continue.
    live_lp = top_lp - hits * big
    live_lp, nxt = jax.lax.top_k(live_lp, k)
    running_seqs = jnp.take_along_axis(top_seqs, nxt[:, :, None], axis=1)
    parent = jnp.take_along_axis(src_beam, nxt, axis=1)                        # [B, K]

    # Ended candidates among the top K join the finished ones if they are better.
    gen = (s.cur_len + 1 - 1).astype(jnp.float32)
    final = top_lp / gen ** length_penalty
    full = jnp.all(s.finished, axis=-1, keepdims=True) & (early_stopping is True)
    final = final - full * big - (~s.improvable) * big - (~(hits & top_mask)) * big
    merged_scores = jnp.concatenate([s.scores, final], axis=1)
    best = jax.lax.top_k(merged_scores, k)[1]
    pick = lambda a, b: jnp.take_along_axis(jnp.concatenate([a, b], axis=1),
                                            best if a.ndim == 2 else best[:, :, None], axis=1)
    seqs_out = pick(s.seqs, top_seqs)
    scores = jnp.take_along_axis(merged_scores, best, axis=1)
    finished = pick(s.finished, hits & top_mask)
    gen_len = pick(s.gen_len, jnp.full((batch, keep), s.cur_len, jnp.int32))

    rows = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
    cache = reorder_cache(cache, rows)
    cur_len = s.cur_len + 1
    if early_stopping == "never" and length_penalty > 0.0:
      hyp_len = jnp.float32(length - 1)
    else:
      hyp_len = (cur_len - 1).astype(jnp.float32)
    best_running = live_lp[:, :1] / hyp_len ** length_penalty
    worst_done = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -big)
    improvable = s.improvable & jnp.any(best_running > worst_done, axis=-1, keepdims=True)
    return BeamState(cur_len, running_seqs, live_lp, seqs_out, scores, finished, gen_len,
                     improvable, jnp.all(hits), cache)

  final = jax.lax.while_loop(cond, body, state)
  return final.seqs, final.scores, final.gen_len


def expand_rows(tree: Any, batch: int, copies: int, group: int = 1) -> Any:
  """Repeats rows for beams or candidates: every leaf with a leading axis of batch * group
  rows (example-major, `group` rows per example) -> batch * copies * group rows, ordered
  (example, copy, row of the group). Scalars and None pass through."""
  def expand(x):
    if x is None or x.ndim == 0:
      return x
    x = x.reshape(batch, 1, group, *x.shape[1:])
    return jnp.repeat(x, copies, axis=1).reshape(batch * copies * group, *x.shape[3:])
  return jax.tree.map(expand, tree, is_leaf=lambda x: x is None)


def encoder_cache(generator: bart_lib.Bart, params, input_ids: Array,
                  attention_mask: Optional[Array], length: int, *, batch: int, copies: int = 1,
                  group: int = 1) -> bart_lib.DecoderCache:
  """An empty decoding cache of `length` positions over [batch * group, S] inputs, for
  batch * copies * group decoder rows ordered as `expand_rows` orders them (a copy per beam
  or candidate). The encoder runs and the cross-attention keys and values are projected once
  per input, and every copy attends to them there (`DecoderCache.cross_copies`): decoding
  steps take the inputs' [batch * group, S] mask as they are."""
  states = generator.apply({"params": params}, input_ids, attention_mask,
                           method=bart_lib.Bart.encode)
  cache = generator.apply({"params": params}, states, length, method=bart_lib.Bart.init_cache)
  return cache.replace(self_attn=expand_rows(cache.self_attn, batch, copies, group),
                       cross_copies=copies, cross_group=group)


def reorder_decoder_cache(cache: bart_lib.DecoderCache, rows: Array,
                          group: int = 1) -> bart_lib.DecoderCache:
  """Beam reordering of a BART cache: only the self-attention buffers move. The projected
  encoder states are one per source, shared by all the beams of its example (beams never
  change example), so they stay as they are."""
  return cache.replace(self_attn=reorder_rows(cache.self_attn, rows, group))


def reorder_rows(cache: Any, rows: Array, group: int = 1) -> Any:
  """Gathers cache rows: row i of the result is `rows[i]`, each row spanning `group` rows of
  every leaf with a leading batch axis (the Z documents of a beam, for RAG-Token).

  Not for a whole `DecoderCache`, whose encoder states have fewer rows than its decoder rows
  (an out-of-range gather would be clamped silently): use `reorder_decoder_cache`.
  """
  if isinstance(cache, bart_lib.DecoderCache):
    raise TypeError("reorder_rows: a DecoderCache is reordered by reorder_decoder_cache")
  idx = (rows[:, None] * group + jnp.arange(group)[None, :]).reshape(-1)

  def take(x):
    return x[idx] if x.ndim > 0 else x
  return jax.tree.map(take, cache)


@functools.partial(jax.jit, static_argnames=("generator", "processors", "start_token_id",
                                             "pad_token_id", "num_beams", "length_penalty",
                                             "early_stopping"))
def rag_token_beam(generator: bart_lib.Bart, params, context_input_ids: Array,
                   context_attention_mask: Array, doc_scores: Array, *, num_beams: int,
                   processors: Processors, start_token_id: int, pad_token_id: int,
                   length_penalty: float = 1.0, early_stopping: Any = False):
  """RAG-Token beam search: each beam keeps one cache per document; the encoder runs once per
  document. [B * Z, S] contexts, [B, Z] doc scores -> (sequences [B, K, L], scores, lengths)."""
  b, z = doc_scores.shape
  cache = encoder_cache(generator, params, context_input_ids, context_attention_mask,
                        processors.max_length - 1, batch=b, copies=num_beams, group=z)
  step = rag_token_step(generator, params, context_attention_mask,
                        jnp.repeat(doc_scores, num_beams, axis=0))
  return beam_search(step, cache, batch=b, num_beams=num_beams, start_token_id=start_token_id,
                     pad_token_id=pad_token_id, processors=processors,
                     length_penalty=length_penalty, early_stopping=early_stopping,
                     reorder_cache=functools.partial(reorder_decoder_cache, group=z))


def bart_step(generator: bart_lib.Bart, params, encoder_mask: Optional[Array]):
  """The plain generator step: (tokens [N], cache, cur_len) -> (log-probs [N, V], cache)."""
  def step(tokens, cache, cur_len):
    del cur_len
    logits, cache = generator.apply({"params": params}, tokens[:, None], cache, encoder_mask,
                                    method=bart_lib.Bart.decode_step)
    return jax.nn.log_softmax(logits[:, 0], axis=-1), cache
  return step


@functools.partial(jax.jit, static_argnames=("generator", "processors", "start_token_id",
                                             "pad_token_id", "num_beams", "length_penalty",
                                             "early_stopping"))
def bart_beam(generator: bart_lib.Bart, params, input_ids: Array,
              attention_mask: Optional[Array], *, num_beams: int, processors: Processors,
              start_token_id: int, pad_token_id: int, length_penalty: float = 1.0,
              early_stopping: Any = False):
  """Beam search with the generator alone: [N, S] inputs -> ([N, K, L], scores, lengths)."""
  n = input_ids.shape[0]
  cache = encoder_cache(generator, params, input_ids, attention_mask, processors.max_length - 1,
                        batch=n, copies=num_beams)
  return beam_search(bart_step(generator, params, attention_mask), cache, batch=n,
                     num_beams=num_beams, start_token_id=start_token_id, pad_token_id=pad_token_id,
                     processors=processors, length_penalty=length_penalty,
                     early_stopping=early_stopping, reorder_cache=reorder_decoder_cache)


def fast_select(sequences, log_probs, doc_log_probs, lengths, num_return: int):
  """RAG-Sequence *fast* decoding's choice, given the beams of every document.

  p(y|x) ~ sum_z p(z|x) p(y|x,z), where p(y|x,z) is the probability of y in document z's
  beam, and 0 where z's beam did not produce y (the paper's approximation: no extra forward
  passes).

  Args:
    sequences: [B, Z, K, L] the beams of every (example, document), padded.
    log_probs: [B, Z, K] log p(y|x,z) of each beam (summed token log-probs).
    doc_log_probs: [B, Z] log p(z|x).
    lengths: [B, Z, K] tokens of each beam (start token included).
    num_return: hypotheses kept per example.
  Returns:
    B lists of (tokens, log p(y|x)) pairs, best first.
  """
  out = []
  for b in range(sequences.shape[0]):
    scores = {}
    for z in range(sequences.shape[1]):
      for k in range(sequences.shape[2]):
        y = tuple(int(t) for t in sequences[b, z, k, :lengths[b, z, k]])
        term = float(doc_log_probs[b, z]) + float(log_probs[b, z, k])
        scores[y] = np.logaddexp(scores[y], term) if y in scores else term
    ranked = sorted(scores.items(), key=lambda item: -item[1])[:num_return]
    out.append(ranked)
  return out
