"""Decoding: jitted greedy and beam search over a `lax.while_loop`, HF's logits processors,
and RAG's decoders on top of them, over any generator (rag_jax.models.generator).

    step(tokens [N], cache, cur_len) -> (log-probs [N, V], cache)

is all the search needs. `rag_token_step` builds one that marginalises the next-token
distribution over the retrieved documents: one cache row per (beam, document), each document
read once (`Generator.prefill`) and shared by its beams. RAG-Sequence runs a beam search per
document (`generator_beam`), then *thorough* decoding scores every candidate under every
document in one batched forced-decoding pass, and *fast* decoding sums the beams' own scores.
Everything but the candidates' bookkeeping runs on device: no per-step host round trip.

Lengths follow HF: a sequence starts with the generator's start token, `cur_len` counts the
tokens so far (start token included), `max_length` bounds the whole sequence.

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
from rag_jax.models import generator as generator_lib
from rag_jax.models import layers

Array = jax.Array
Generator = generator_lib.Generator
NEG_INF = -jnp.inf
# Decoder rows per call of thorough decoding's scoring pass (candidates x documents): it bounds
# the [rows, T, vocab] logits that pass holds (128 x 21 x 50,265 float32: 0.5 GB).
THOROUGH_SCORE_ROWS = 128


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


def rag_token_step(gen: Generator, params, doc_scores: Array):
  """The RAG-Token step: next-token log-dist = logsumexp_z [log p(z|x) + log_softmax(logits_z)].

  Args:
    gen, params: the generator and its params.
    doc_scores: [N, Z].
  Returns:
    step(tokens [N], cache, cur_len) -> (log-probs [N, V], cache) over a cache of N * Z
    rows (the docs of row n in rows n*Z .. n*Z+Z-1).
  """
  n, z = doc_scores.shape

  def step(tokens, cache, cur_len):
    del cur_len
    logits, cache = gen.step(params, jnp.repeat(tokens, z)[:, None], cache)   # [N*Z, 1, V]
    marginal = marginalize.rag_token_marginal(logits.reshape(n, z, 1, -1), doc_scores)
    return marginal[:, 0], cache                                               # [N, V]
  return step


@functools.partial(jax.jit, static_argnames=("gen", "processors"))
def rag_token_greedy(gen: Generator, params, context_input_ids: Array,
                     context_attention_mask: Array, doc_scores: Array, *,
                     processors: Processors):
  """RAG-Token greedy decoding: [B * Z, S] contexts, [B, Z] doc scores -> ([B, L], length)."""
  cache = gen.prefill(params, context_input_ids, context_attention_mask,
                      processors.max_length - 1)
  step = rag_token_step(gen, params, doc_scores)
  return greedy_search(step, cache, batch=doc_scores.shape[0],
                       start_token_id=gen.start_token_id, pad_token_id=gen.pad_token_id,
                       processors=processors)


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


def reorder_rows(cache: Any, rows: Array, group: int = 1) -> Any:
  """Beam reordering of a plain pytree cache (every leaf with a leading row axis; see
  layers.take_rows).

  Not for a generator's cache, whose shared rows (encoder states, prompts) are fewer than its
  decoder rows (an out-of-range gather would be clamped silently): `Generator.reorder`.
  """
  if isinstance(cache, generator_lib.CACHES):
    raise TypeError(f"reorder_rows: a {type(cache).__name__} is reordered by its "
                    "Generator.reorder")
  return layers.take_rows(cache, rows, group)


@functools.partial(jax.jit, static_argnames=("gen", "processors", "num_beams", "length_penalty",
                                             "early_stopping"))
def rag_token_beam(gen: Generator, params, context_input_ids: Array,
                   context_attention_mask: Array, doc_scores: Array, *, num_beams: int,
                   processors: Processors, length_penalty: float = 1.0,
                   early_stopping: Any = False):
  """RAG-Token beam search: each beam keeps one cache row per document; each document is read
  once and shared by its beams. [B * Z, S] contexts, [B, Z] doc scores -> (sequences
  [B, K, L], scores, lengths)."""
  b, z = doc_scores.shape
  cache = gen.prefill(params, context_input_ids, context_attention_mask,
                      processors.max_length - 1, copies=num_beams, group=z)
  step = rag_token_step(gen, params, jnp.repeat(doc_scores, num_beams, axis=0))
  return beam_search(step, cache, batch=b, num_beams=num_beams,
                     start_token_id=gen.start_token_id, pad_token_id=gen.pad_token_id,
                     processors=processors, length_penalty=length_penalty,
                     early_stopping=early_stopping,
                     reorder_cache=functools.partial(gen.reorder, group=z))


def generator_step(gen: Generator, params):
  """The plain generator step: (tokens [N], cache, cur_len) -> (log-probs [N, V], cache)."""
  def step(tokens, cache, cur_len):
    del cur_len
    logits, cache = gen.step(params, tokens[:, None], cache)
    return jax.nn.log_softmax(logits[:, 0], axis=-1), cache
  return step


@functools.partial(jax.jit, static_argnames=("gen", "processors", "num_beams", "length_penalty",
                                             "early_stopping"))
def generator_beam(gen: Generator, params, context_input_ids: Array,
                   context_attention_mask: Optional[Array], *, num_beams: int,
                   processors: Processors, length_penalty: float = 1.0,
                   early_stopping: Any = False):
  """Beam search with the generator alone, one per context (RAG-Sequence's per-document
  search): [N, S] contexts and their mask -> ([N, K, L], scores, lengths)."""
  n = context_input_ids.shape[0]
  cache = gen.prefill(params, context_input_ids, context_attention_mask,
                      processors.max_length - 1, copies=num_beams)
  return beam_search(generator_step(gen, params), cache, batch=n, num_beams=num_beams,
                     start_token_id=gen.start_token_id, pad_token_id=gen.pad_token_id,
                     processors=processors, length_penalty=length_penalty,
                     early_stopping=early_stopping, reorder_cache=gen.reorder)


@functools.partial(jax.jit, static_argnames=("gen", "length", "copies", "group"))
def prefill(gen: Generator, params, context_input_ids: Array, context_attention_mask: Array, *,
            length: int, copies: int = 1, group: int = 1) -> Any:
  """`Generator.prefill`, jitted."""
  return gen.prefill(params, context_input_ids, context_attention_mask, length, copies=copies,
                     group=group)


def rag_sequence_fast(gen: Generator, params, context_input_ids, context_attention_mask,
                      doc_scores, *, num_beams: int, num_return_sequences: int,
                      processors: Processors, length_penalty: float = 1.0,
                      early_stopping: Any = False) -> np.ndarray:
  """RAG-Sequence *fast* decoding: beam search under every document, then `fast_select`: no
  forced-decoding pass. [B * Z, S] contexts, [B, Z] doc scores -> [B * returns, T] ids."""
  b, z = np.shape(doc_scores)
  seqs, scores, gen_len = generator_beam(
      gen, params, jnp.asarray(context_input_ids), jnp.asarray(context_attention_mask),
      num_beams=num_beams, processors=processors, length_penalty=length_penalty,
      early_stopping=early_stopping)
  gen_len = np.asarray(gen_len)
  # Undo the length penalty: the beam's score is sum(log p) / generated ** penalty.
  log_probs = np.asarray(scores, np.float64) * np.maximum(gen_len, 1) ** length_penalty
  doc_lp = np.asarray(marginalize.doc_log_probs(jnp.asarray(doc_scores, jnp.float32)))
  shape = (b, z, num_beams)
  picks = fast_select(np.asarray(seqs).reshape(*shape, -1), log_probs.reshape(shape), doc_lp,
                      (gen_len + 1).reshape(shape), num_return_sequences)
  return pad_rows([np.asarray(y) for row in picks for y, _ in row], gen.pad_token_id)


def rag_sequence_thorough(gen: Generator, params, context_input_ids, context_attention_mask,
                          doc_scores, *, score: Callable[..., Array], bos_token_id: int,
                          num_beams: int, num_return_sequences: int, processors: Processors,
                          length_penalty: float = 1.0, early_stopping: Any = False
                          ) -> np.ndarray:
  """RAG-Sequence *thorough* decoding, batched: beam search under every document (with the
  contexts' mask), the candidates of each example deduplicated, each scored under all its
  documents in one forced-decoding pass (RAG-Sequence likelihood), the best kept.

  HF runs the per-document beam search of a BART without the contexts' mask (its RAG passes
  attention_mask=None to `generate`); here it has it, as the scoring pass does. The two
  agree where no context is padded.

  Args:
    gen, params: the generator and its params.
    context_input_ids, context_attention_mask: [B * Z, S]; doc_scores: [B, Z].
    score: (cache, labels [B * c, T], doc_scores [B * c, Z], drop_first [B * c]) -> RAG-Sequence
      NLL [B * c] of c candidates per example, decoded in one step over `cache`, which
      `prefill` made for them (`Rag.nll` with `prefilled`).
    bos_token_id: the BOS of RAG-Sequence's first-position rule.
    The rest as `generator_beam`.
  Returns:
    [B * num_return_sequences, T] int32 ids, right-padded.
  """
  b, z = np.shape(doc_scores)
  ctx, mask = jnp.asarray(context_input_ids), jnp.asarray(context_attention_mask)
  seqs, _, gen_len = generator_beam(gen, params, ctx, mask, num_beams=num_beams,
                                    processors=processors, length_penalty=length_penalty,
                                    early_stopping=early_stopping)
  seqs = np.asarray(seqs).reshape(b, z * num_beams, -1)         # [B, Z * beams, L], doc-major
  gen_len = np.asarray(gen_len).reshape(b, z * num_beams)
  length = 1 + int(gen_len.max())
  # HF's per-example truncation, then deduplication keeping first occurrences: only the
  # distinct candidates are scored (beams under different documents often agree).
  uniques = []
  for i in range(b):
    first = {}
    for j, row in enumerate(seqs[i, :, :1 + int(gen_len[i].max())]):
      first.setdefault(tuple(row), j)
    uniques.append(list(first.values()))
  # Candidates per example, padded with repeats of the first to C, scored `chunk` per example
  # at a time: one call holds [B * chunk * Z, T, vocab] logits, at most THOROUGH_SCORE_ROWS
  # decoder rows (or one candidate per example), however many candidates there are. Both
  # are powers of two (C at most Z * beams, unless that is not a multiple of the chunk), so
  # few shapes are compiled.
  c = min(z * num_beams, 1 << (max(map(len, uniques)) - 1).bit_length())
  chunk = min(c, 1 << max(0, (THOROUGH_SCORE_ROWS // (b * z)).bit_length() - 1))
  c = -(-c // chunk) * chunk
  picked = np.array([u + u[:1] * (c - len(u)) for u in uniques])           # [B, C]
  cands = np.take_along_axis(seqs[:, :, :length], picked[:, :, None], axis=1)  # [B, C, T]
  drop_first = jnp.asarray(np.repeat([np.all(seqs[i, :, 1] == bos_token_id) for i in range(b)],
                                     chunk))
  # The contexts are read once (BART: encoder and cross-attention keys/values; a decoder-only
  # model: the prompts' KV cache); every chunk of candidates reuses that reading (chunk * Z
  # rows per example sharing its Z).
  cache = prefill(gen, params, ctx, mask, length=length, copies=chunk, group=z)
  scores = jnp.asarray(np.repeat(np.asarray(doc_scores, np.float32), chunk, axis=0))
  nll = np.empty((b, c), np.float32)
  for start in range(0, c, chunk):
    labels = jnp.asarray(cands[:, start:start + chunk].reshape(b * chunk, length))
    nll[:, start:start + chunk] = np.asarray(score(cache, labels, scores,
                                                   drop_first)).reshape(b, chunk)
  hypos = []
  for i in range(b):
    n = len(uniques[i])  # the distinct candidates, in first-occurrence order
    order = sorted(range(n), key=lambda j: nll[i, j])[:num_return_sequences]
    hypos.extend(cands[i, j, :1 + int(gen_len[i].max())] for j in order)
  return pad_rows(hypos, gen.pad_token_id)


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


def pad_rows(rows, pad_token_id: int) -> np.ndarray:
  """Token id rows of different lengths -> [N, longest] int32, right-padded."""
  out = np.full((len(rows), max(len(r) for r in rows)), pad_token_id, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out
