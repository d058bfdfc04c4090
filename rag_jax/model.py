"""RagModel: a RAG checkpoint for inference: a `rag.Rag`, its params and tokenizers.

    model = RagModel.from_pretrained("path/to/rag-token-nq")     # HF save_pretrained layout
    ids, mask = model.contextualize(questions, hits)              # the generator's inputs
    seqs = model.generate(ids, mask, doc_scores, kind="token")    # HF's generate
    nll = model.loss(ids, mask, doc_scores, labels, kind="token")

Training never holds one: its step is a pure function of the params (`rag.Rag`); evaluation
wraps the params it decodes with in a RagModel (`train.setup.inference_model`).

Shapes: B = batch, Z = docs, S = context length, T = target length, D = retrieval dim.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import contexts
from rag_jax import decoding as decoding_lib
from rag_jax import prompts
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.models import bert as bert_lib
from rag_jax.models import generator as generator_lib
from rag_jax.rag import GENERATION_DEFAULTS, Rag, RagConfig

Array = jax.Array
Params = Dict[str, Any]


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
    tokenizers = [weights.load_tokenizer_if_present(directory / sub)
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
    if isinstance(question_encoder, TextEncoder):
      q_module, q_params = question_encoder.module, question_encoder.params
      q_tokenizer = question_encoder.tokenizer
    else:
      question_encoder = weights.resolve(question_encoder)
      q_module, q_params = weights.load_bert(question_encoder, dtype=dtype)
      q_tokenizer = weights.load_tokenizer_if_present(question_encoder)
    g_module, g_params, g_tokenizer = weights.load_generator(generator, dtype)
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
    if self.question_tokenizer is None:
      raise ValueError("the model has no question tokenizer")
    return TextEncoder(self.question_encoder, self.params["question_encoder"],
                       self.question_tokenizer, batch_size=batch_size,
                       max_length=self.question_encoder.config.max_position_embeddings)

  def context_format(self, tokenizer=None) -> contexts.ContextFormat:
    """How this model's contexts are laid out (`contexts.context_format`): BART's <s> ... </s>,
    or a decoder-only generator's prompt (`prompt_format`) around the passage and question."""
    tokenizer = tokenizer or self.generator_tokenizer
    if tokenizer is None:
      raise ValueError("the model has no generator tokenizer")
    prompt = None if self.rag.gen.has_encoder else self.prompt_format or (lambda c: c)
    return contexts.context_format(tokenizer, self.config.max_combined_length, prompt,
                                   pad_id=self.rag.gen.pad_token_id)

  def contextualize(self, questions: Sequence[str],
                    docs: Optional[Sequence[Sequence[Mapping[str, str]]]], tokenizer=None):
    """Generator inputs for retrieved docs, through the path training and evaluation take:
    each passage and question tokenized apart (`contexts.tokenize_passages`,
    `contexts.question_part`), then joined (`contexts.join_contexts`). The tokens are those of
    HF's RagRetriever tokenizing `title / text // question` whole (for a decoder-only
    generator, through `prompt_format`, the prompt): BART's truncated to max_combined_length,
    the question cut first, as HF; a prompt over max_combined_length loses the end of its
    passage text, never the question (only a question that alone is too long loses its
    end).

    Args:
      questions: B question strings.
      docs: B lists of Z {"title", "text"} passages; None: closed book, the question alone
        is the context (Z = 1; the config's prefix still applies).
      tokenizer: the generator's tokenizer (default: the checkpoint's).
    Returns:
      context_input_ids, context_attention_mask: [B * Z, S] int32 numpy, padded on the right
      (S = max_combined_length for BART, as HF; the longest context for a decoder-only
      generator).
    """
    tokenizer = tokenizer or self.generator_tokenizer
    fmt = self.context_format(tokenizer)
    b = len(questions)
    if docs is None:  # one empty passage each: the context is the question alone
      texts = [contexts.closed_book_context(q, self.config) for q in questions]
      tokens, lengths = np.zeros((b, 1, 1), np.int32), np.zeros((b, 1), np.int32)
    else:
      if b != len(docs):
        raise ValueError(f"{b} questions but {len(docs)} rows of documents")
      if len({len(row) for row in docs}) > 1:
        raise ValueError("every question needs the same number of documents (pad with "
                         "empty passages and give them a -inf doc score)")
      texts = [contexts.question_part(q, self.config, fmt) for q in questions]
      tokens, lengths = contexts.tokenize_passages([d for row in docs for d in row], tokenizer,
                                                   self.config, fmt)
      z = len(docs[0]) if b else 0
      tokens, lengths = tokens.reshape(b, z, -1), lengths.reshape(b, z)
    q_tokens, q_length = contexts.content_tokens(tokenizer, texts, fmt.content_length)
    ids, mask = contexts.join_contexts(tokens, lengths, q_tokens, q_length, fmt)
    ids, mask = np.asarray(ids), np.asarray(mask)
    if not self.rag.gen.has_encoder:  # the longest prompt, not max_combined_length
      width = max(int(mask.sum(axis=1).max()), 1) if len(mask) else 1
      ids, mask = ids[:, :width], mask[:, :width]
    return ids, mask
