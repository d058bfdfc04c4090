"""RagModel: question encoder + generator + the RAG input format and loss.

    model = RagModel.from_pretrained("path/to/rag-token-nq")     # HF save_pretrained layout
    nll = model.loss(context_input_ids, context_attention_mask, doc_scores, labels,
                     kind="token")                                # [batch], HF's loss
    nll = model.rag.loss(params, context_input_ids, ...)          # the same, pure

Two layers. `Rag` is the computation: the modules and the RAG config, no params; every
method is a pure function of a params pytree `{"question_encoder", "generator"}`, so
`jax.jit` and `jax.grad` apply and a train step owns (and donates) the params. `RagModel` is
the thin inference wrapper: a `Rag`, its params and tokenizers, for `generate`, `retrieve`
and scoring with the checkpoint's own params. Layouts follow HF's RAG: contexts are
`[batch * docs, length]`, the docs of example b in rows `b * docs ... b * docs + docs - 1`;
labels are `[batch, T]`, padded with the generator's pad id, fed unshifted to the decoder and
scored shifted left.

The generator is a BART or a decoder-only Llama, reached only through its interface
(rag_jax.models.generator): for a Llama the contexts are the prompts (the same
`title / text // question` strings, `prompt_format` for a chat template), padded on either
side (`contextualize` left-pads them), and each label row follows its prompt.

Shapes: B = batch, Z = docs, S = context length, T = target length, D = retrieval dim,
V = vocabulary.
"""

import dataclasses
import pathlib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import assets
from rag_jax import decoding as decoding_lib
from rag_jax import gguf_file
from rag_jax import marginalize
from rag_jax import prompts
from rag_jax import weights
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


def format_context(title: str, text: str, question: str, config: RagConfig) -> str:
  """HF RagRetriever's generator input: prefix + title / text // question."""
  title = title.removeprefix('"').removesuffix('"')
  return ((config.prefix or "") + title + config.title_sep + text + config.doc_sep +
          question).replace("  ", " ")


def closed_book_context(question: str, config: RagConfig) -> str:
  """A context without a passage: the question alone, after the config's prefix."""
  return (config.prefix or "") + question


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


@dataclasses.dataclass
class RagModel:
  """A RAG model for inference: a `Rag`, its params and tokenizers.

  Attributes:
    rag: the computation (modules and RAG config).
    params: {"question_encoder": ..., "generator": ...}.
    question_tokenizer, generator_tokenizer: HF tokenizers, when the checkpoint has them.
    generation_defaults: the checkpoint's generation settings.
    prompt_format: a decoder-only generator's prompt for a context string (`title / text //
      question`); None: the string itself. `prompts.chat_prompt(tokenizer)` makes one for an
      instruct model's chat template.
  """
  rag: Rag
  params: Params
  question_tokenizer: Any = None
  generator_tokenizer: Any = None
  generation_defaults: Dict[str, Any] = dataclasses.field(default_factory=dict)
  prompt_format: Optional[Callable[[str], str]] = None

  def __post_init__(self):
    self._loss = jax.jit(self.rag.nll, static_argnames=("kind", "epsilon", "exclude_bos_score"))
    self._posteriors = jax.jit(self.rag.posteriors, static_argnames="kind")
    self._doc_token_log_probs = jax.jit(self.rag.doc_token_log_probs)

  # ----------------------------------------------------------------------------------------
  # Loading.

  @classmethod
  def from_pretrained(cls, path_or_name, *, dtype=jnp.float32, **overrides) -> "RagModel":
    """Loads an HF RAG checkpoint (`RagTokenForGeneration` / `RagSequenceForGeneration`
    `.save_pretrained` layout: one config.json with `question_encoder` and `generator`
    sub-configs, weights under `rag.question_encoder.` and `rag.generator.`)."""
    directory = weights.resolve(path_or_name)
    hf = weights.read_json(directory / "config.json")
    if hf.get("model_type") != "rag":
      raise weights.WeightsError(f"{directory}: unsupported architecture "
                                 f"{hf.get('model_type')!r} for RagModel (expected rag)")
    for part in ("question_encoder", "generator"):
      if not isinstance(hf.get(part), dict):
        raise weights.WeightsError(f"{directory / 'config.json'}: no {part} config")
    try:
      config = RagConfig.from_hf(hf, **overrides)
    except (TypeError, ValueError) as e:
      raise weights.WeightsError(f"{directory / 'config.json'}: {e}") from None
    state = weights.read_state_dict(directory)
    q_module, q_params = weights.load_bert(
        directory, config=hf["question_encoder"], state=state, dtype=dtype,
        prefix="rag.question_encoder.question_encoder.bert_model.")
    g_module, g_params = weights.load_bart(directory, config=hf["generator"], state=state,
                                           dtype=dtype, prefix="rag.generator.")
    known = ("rag.question_encoder.question_encoder.", "rag.generator.")
    stray = sorted(k for k in state if not k.startswith(known))
    if stray:
      raise weights.WeightsError(f"{directory}: unexpected parameter {stray[0]}")
    tokenizers = [_optional_tokenizer(directory / sub)
                  for sub in ("question_encoder_tokenizer", "generator_tokenizer")]
    generation = dict(hf["generator"])
    if (directory / "generation_config.json").is_file():
      generation.update(weights.read_json(directory / "generation_config.json"))
    defaults = {k: generation[k] for k in GENERATION_DEFAULTS if generation.get(k) is not None}
    return cls(Rag(q_module, g_module, config),
               {"question_encoder": q_params, "generator": g_params}, *tokenizers,
               generation_defaults=defaults)

  @classmethod
  def from_parts(cls, question_encoder, generator, *, dtype=jnp.float32,
                 **config) -> "RagModel":
    """Builds a RAG model from a question encoder and a generator, each a directory, a hub
    name or `asset:NAME`; the question encoder may also be a loaded `TextEncoder` (e.g. a
    retriever's), whose module, params and tokenizer are then shared.

    The question encoder is a DPR (or sentence-transformers) BERT checkpoint; the generator
    an HF BART checkpoint (facebook/bart-large), or a decoder-only Llama: an HF
    LlamaForCausalLM directory, a `.gguf` file or a directory holding one
    (`asset:smollm2-135m-instruct`). For a decoder-only generator with a tokenizer, targets
    start with a newline unless `target_start_token_id` says otherwise, so the answer
    follows the prompt on its own line (`prompt_format` for a chat template).

    Args:
      question_encoder, generator: the two checkpoints.
      dtype: computation dtype (of what is loaded here).
      **config: RagConfig fields.
    """
    from rag_jax.encoder import TextEncoder  # pylint: disable=import-outside-toplevel
    if isinstance(question_encoder, TextEncoder):
      q_module, q_params = question_encoder.module, question_encoder.params
      q_tokenizer = question_encoder.tokenizer
    else:
      question_encoder = weights.resolve(question_encoder)
      q_module, q_params = weights.load_bert(question_encoder, dtype=dtype)
      q_tokenizer = _optional_tokenizer(question_encoder)
    g_module, g_params, g_tokenizer = _load_generator(generator, dtype)
    if not generator_lib.adapt(g_module).has_encoder and g_tokenizer is not None:
      config.setdefault("target_start_token_id", prompts.newline_token(g_tokenizer))
    return cls(Rag(q_module, g_module, RagConfig(**config)),
               {"question_encoder": q_params, "generator": g_params}, q_tokenizer, g_tokenizer)

  @property
  def question_encoder(self) -> bert_lib.BertEncoder:
    return self.rag.question_encoder

  @property
  def generator(self):
    """The generator module (a Bart or a Llama); `self.rag.gen` is its interface."""
    return self.rag.generator

  @property
  def config(self) -> RagConfig:
    return self.rag.config

  # ----------------------------------------------------------------------------------------
  # Conveniences with the model's own params.

  def loss(self, context_input_ids, context_attention_mask, doc_scores, labels, *,
           kind: str = "token", epsilon: Optional[float] = None,
           exclude_bos_score: Optional[bool] = None) -> Array:
    """`Rag.loss` with the model's params, jitted; [B] per-example NLL."""
    return self._loss(self.params, jnp.asarray(context_input_ids),
                      jnp.asarray(context_attention_mask), jnp.asarray(doc_scores),
                      jnp.asarray(labels), kind=kind, epsilon=epsilon,
                      exclude_bos_score=exclude_bos_score)

  def generate(self, context_input_ids, context_attention_mask, doc_scores, *,
               kind: str = "token", decoding: Optional[str] = None, **options) -> np.ndarray:
    """Generates from precomputed contexts, as HF's RAG `generate` does given
    `context_input_ids`, `context_attention_mask` and `doc_scores`.

    Args:
      context_input_ids, context_attention_mask: [B * Z, S]; doc_scores: [B, Z].
      kind: "token" (RAG-Token) or "sequence" (RAG-Sequence).
      decoding: "greedy" or "beam" for RAG-Token, "thorough" or "fast" for RAG-Sequence;
        default: beam (token, if num_beams > 1, else greedy) and thorough (sequence).
      **options: num_beams, num_return_sequences, max_length, min_length,
        no_repeat_ngram_size, bad_words_ids, length_penalty, early_stopping; defaults from
        the checkpoint's generation settings, then HF's. Forced BOS / EOS come from the
        generator's config, as HF takes them.
    Returns:
      [B * num_return_sequences, T] int32 token ids (HF's layout: the returns of example b in
      consecutive rows), start token first, padded after EOS, T <= max_length.
    """
    unknown = sorted(set(options) - set(GENERATION_DEFAULTS))
    if unknown:
      raise TypeError(f"generate() got an unexpected option {unknown[0]!r}")
    o = {**GENERATION_DEFAULTS, **self.generation_defaults, **options}
    if decoding is None:
      decoding = ("beam" if o["num_beams"] > 1 else "greedy") if kind == "token" else "thorough"
    return self._generate(context_input_ids, context_attention_mask, doc_scores, kind=kind,
                          decoding=decoding, **o)

  def _generate(self, context_input_ids, context_attention_mask, doc_scores, *, kind, decoding,
                num_beams, num_return_sequences, max_length, min_length, no_repeat_ngram_size,
                bad_words_ids, length_penalty, early_stopping) -> np.ndarray:
    supported = {("token", "greedy"), ("token", "beam"), ("sequence", "thorough"),
                 ("sequence", "fast")}
    if (kind, decoding) not in supported:
      raise ValueError(f"generate supports {sorted(supported)} so far, not "
                       f"kind={kind!r} decoding={decoding!r}")
    if decoding == "greedy" and (num_beams != 1 or num_return_sequences != 1):
      raise ValueError("greedy decoding returns one sequence per input; use decoding='beam'")
    if not 1 <= num_return_sequences <= num_beams:
      raise ValueError(f"num_return_sequences {num_return_sequences} must be in 1..num_beams "
                       f"({num_beams})")
    gen = self.rag.gen
    processors = decoding_lib.Processors(
        eos_token_id=gen.eos_token_id, max_length=max_length, min_length=min_length,
        no_repeat_ngram_size=no_repeat_ngram_size, forced_bos_token_id=gen.forced_bos_token_id,
        forced_eos_token_id=gen.forced_eos_token_id,
        bad_words_ids=tuple(tuple(w) for w in bad_words_ids or ()))
    args = (gen, self.params["generator"], jnp.asarray(context_input_ids),
            jnp.asarray(context_attention_mask), jnp.asarray(doc_scores, jnp.float32))
    if decoding == "greedy":
      sequences, length = decoding_lib.rag_token_greedy(*args, processors=processors)
      return np.asarray(sequences)[:, :int(length)]
    beams = dict(num_beams=num_beams, processors=processors, length_penalty=length_penalty,
                 early_stopping=early_stopping)
    if decoding == "fast":
      return decoding_lib.rag_sequence_fast(*args, num_return_sequences=num_return_sequences,
                                            **beams)
    if decoding == "thorough":
      return decoding_lib.rag_sequence_thorough(
          *args, score=self._score_candidates, bos_token_id=self.rag.bos_token_id,
          num_return_sequences=num_return_sequences, **beams)
    sequences, _, gen_len = decoding_lib.rag_token_beam(*args, **beams)
    sequences = np.asarray(sequences)[:, :num_return_sequences]
    length = 1 + int(np.asarray(gen_len)[:, :num_return_sequences].max())
    return sequences.reshape(-1, sequences.shape[-1])[:, :length]

  def _score_candidates(self, cache, labels, doc_scores, drop_first) -> Array:
    """Thorough decoding's scoring pass: RAG-Sequence NLL [N] of candidates [N, T] decoded in
    one step over a prefilled cache of their contexts (HF's scoring: exclude_bos_score)."""
    return self._loss(self.params, None, None, doc_scores, labels, kind="sequence",
                      epsilon=self.config.label_smoothing, exclude_bos_score=True,
                      drop_first=drop_first, prefilled=cache)

  def doc_posteriors(self, context_input_ids, context_attention_mask, doc_scores,
                     sequences, kind: str = "token") -> np.ndarray:
    """Per generated token, the posterior over the retrieved documents (paper, Figure 2).

    RAG-Token draws a document per token, so the posterior of token i is
        p(z | x, y_i, y_<i) = p(z|x) p(y_i | x, z, y_<i) / sum_z' p(z'|x) p(y_i | x, z', y_<i);
    RAG-Sequence (`kind="sequence"`) draws one for the whole answer, so after token i it is
        p(z | x, y_<=i) = p(z|x) p(y_<=i | x, z) / sum_z' p(z'|x) p(y_<=i | x, z'),
    and the last column is p(z | x, y), the posterior given the whole answer.

    Args:
      context_input_ids, context_attention_mask: [B * Z, S]; doc_scores: [B, Z].
      sequences: [B, T] generated ids, start token first (as `generate` returns them).
      kind: "token" or "sequence".
    Returns:
      [B, Z, T - 1] float32: column i is the posterior at token sequences[:, i + 1] (columns
      past a row's EOS mean nothing).
    """
    return np.asarray(self._posteriors(self.params, jnp.asarray(context_input_ids),
                                       jnp.asarray(context_attention_mask),
                                       jnp.asarray(doc_scores, jnp.float32),
                                       jnp.asarray(sequences), kind=kind))

  def doc_token_log_probs(self, context_input_ids, context_attention_mask, sequences
                          ) -> np.ndarray:
    """`Rag.doc_token_log_probs` with the model's params: [B, Z, T - 1] float32."""
    return np.asarray(self._doc_token_log_probs(self.params, jnp.asarray(context_input_ids),
                                                jnp.asarray(context_attention_mask),
                                                jnp.asarray(sequences)))

  def question_text_encoder(self, batch_size: int = 64):
    """The question encoder as a TextEncoder (for a Retriever), sharing this model's params."""
    from rag_jax.encoder import TextEncoder  # pylint: disable=import-outside-toplevel
    if self.question_tokenizer is None:
      raise ValueError("the model has no question tokenizer")
    return TextEncoder(self.question_encoder, self.params["question_encoder"],
                       self.question_tokenizer, batch_size=batch_size,
                       max_length=self.question_encoder.config.max_position_embeddings)

  def retrieve(self, questions: Sequence[str], retriever, k: Optional[int] = None
               ) -> Dict[str, Any]:
    """Retrieves k docs per question through `retriever` (whatever index it holds now) and
    builds the generator's inputs.

    Returns:
      {"context_input_ids", "context_attention_mask": [B * k, max_combined_length],
       "doc_scores": [B, k] (q . d from the index), "doc_embeds": [B, k, D] (the frozen d(z),
       for `Rag.doc_scores` under grad), "hits": the passages, "index": who answered}.
    """
    k = k or self.config.n_docs
    results = retriever.retrieve(list(questions), k)
    ids, mask = self.contextualize(questions, [r["hits"] for r in results])
    return {"context_input_ids": ids, "context_attention_mask": mask,
            "doc_scores": np.array([[h["score"] for h in r["hits"]] for r in results],
                                   np.float32),
            "doc_embeds": np.stack([r["vectors"] for r in results]).astype(np.float32),
            "hits": [r["hits"] for r in results], "index": results[0]["index"]}

  def contextualize(self, questions: Sequence[str],
                    docs: Optional[Sequence[Sequence[Mapping[str, str]]]], tokenizer=None):
    """Generator inputs for retrieved docs, as HF's RagRetriever builds them.

    For BART: `title / text // question`, right-padded and truncated to max_combined_length
    (as HF). For a decoder-only generator the same string, through `prompt_format`, is the
    prompt: left-padded to the longest prompt of the batch, so that every target starts
    right after it, and a prompt over max_combined_length tokens loses the end of its
    passage text, never the question (only a question that alone is too long is cut, from
    the left).

    Args:
      questions: B question strings.
      docs: B lists of Z {"title", "text"} passages; None: closed book, the question alone
        is the context (Z = 1; the config's prefix still applies).
      tokenizer: the generator's tokenizer (default: the checkpoint's).
    Returns:
      context_input_ids, context_attention_mask: [B * Z, S] int32 numpy (S =
      max_combined_length for BART, the longest prompt for a decoder-only generator).
    """
    tokenizer = tokenizer or self.generator_tokenizer
    if tokenizer is None:
      raise ValueError("contextualize needs the generator's tokenizer")
    if docs is None:
      triples = [("", "", q) for q in questions]
      join = lambda title, text, question: closed_book_context(question, self.config)
    else:
      if len(questions) != len(docs):
        raise ValueError(f"{len(questions)} questions but {len(docs)} rows of documents")
      if len({len(row) for row in docs}) > 1:
        raise ValueError("every question needs the same number of documents (pad with "
                         "empty passages and give them a -inf doc score)")
      triples = [(d["title"], d["text"], q) for q, row in zip(questions, docs) for d in row]
      join = lambda *context: format_context(*context, self.config)
    if not self.rag.gen.has_encoder:
      fmt = self.prompt_format or (lambda context: context)
      return prompts.encode_prompts(tokenizer, triples, lambda *c: fmt(join(*c)),
                                    limit=self.config.max_combined_length,
                                    pad_token_id=self.rag.gen.pad_token_id)
    enc = tokenizer([join(*c) for c in triples], max_length=self.config.max_combined_length,
                    padding="max_length", truncation=True, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def _load_generator(spec, dtype) -> Tuple[Any, Params, Any]:
  """(module, params, tokenizer or None) of a generator checkpoint: a Llama (GGUF, or an HF
  directory of model_type llama) or else a BART."""
  local = pathlib.Path(assets.resolve_spec(spec)).expanduser()
  if local.exists() and gguf_file.find_gguf(local) is not None:
    return weights.load_llama(local, dtype=dtype)
  directory = weights.resolve(local if local.exists() else spec)
  config = directory / "config.json"
  if config.is_file() and weights.read_json(config).get("model_type") == "llama":
    return weights.load_llama(directory, dtype=dtype)
  module, params = weights.load_bart(directory, dtype=dtype)
  return module, params, _optional_tokenizer(directory)


def _optional_tokenizer(path):
  """The tokenizer in a directory, or None when it has none."""
  path = pathlib.Path(str(path))
  if not path.is_dir() or not any((path / f).exists() for f in (
      "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")):
    return None
  return weights.load_tokenizer(path)
