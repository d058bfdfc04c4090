"""Generator contexts: a passage and a question joined into one generator input, the one path
from retrieved passage rows to what the generator reads, for ask, evaluation and training.

A passage is tokenized once (`tokenize_passages`: its part of the input, `passage_part`), a
question once (`question_part`); `join_contexts` joins the token rows of the passages a
retriever found with the question's, on the device and under jit, as HF's RagRetriever
tokenizes `prefix + title / text // question` whole (the docstring of `ContextFormat` says why
the two are the same tokens).

Shapes: B = questions, Z = docs per question, P = a passage's tokens (`content_length`),
Q = the question's tokens, C = content tokens (`ContextFormat.content_length`), L = context
length, M = passages.
"""

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import rag as rag_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ContextFormat:
  """How a passage and a question join into one generator input: `prefix` + passage +
  question + `suffix`, truncated to `length`, then padded on the right. What truncation cuts
  first is the question, as in HF, or with `keep_question` the passage (a decoder-only
  generator's prompt, as `RagModel.contextualize` makes it: the answer follows the question).

  BART's is HF RagRetriever's tokenization of `prefix + title / text // question`: prefix
  (<s>,), suffix (</s>,). A decoder-only generator's is its prompt: with a chat template,
  the prefix is the template up to the user's text (system turn included) and the suffix
  the end of that turn and the assistant's header, so the target follows the prompt.

  Passages are pre-tokenized without special tokens (`prefix + title / text //`), questions
  as `" " + question` without special tokens, so that joining the token lists is the
  tokenization of the whole string wherever the tokenizer splits at spaces and newlines
  (WordPiece, and byte-level BPE with its leading-space tokens).
  """
  length: int                # L, HF's max_combined_length
  prefix: Tuple[int, ...]    # tokens before the passage
  suffix: Tuple[int, ...]    # tokens after the question
  pad_id: int
  keep_question: bool = False

  @property
  def content_length(self) -> int:
    """The most passage + question tokens an input holds."""
    return self.length - len(self.prefix) - len(self.suffix)


def join_contexts(passages: Array, passage_length: Array, question: Array,
                  question_length: Array, fmt: ContextFormat) -> Tuple[Array, Array]:
  """Joins each example's Z passages with its question (HF's layout, example-major).

  Args:
    passages: [B, Z, P] int32 content tokens; passage_length: [B, Z].
    question: [B, Q] int32 content tokens; question_length: [B].
    fmt: the ContextFormat.
  Returns:
    context ids [B * Z, L] int32 and their attention mask [B * Z, L] int32.
  """
  b, z, p = passages.shape
  pre, suf, c = len(fmt.prefix), len(fmt.suffix), fmt.content_length
  pos = jnp.arange(c)                                                        # [C]
  lp = passage_length[:, :, None]                                            # [B, Z, 1]
  if fmt.keep_question:
    lp = jnp.minimum(lp, c - jnp.minimum(question_length, c)[:, None, None])
  from_passage = jnp.take_along_axis(passages, jnp.clip(pos, 0, p - 1)[None, None].repeat(
      b, 0).repeat(z, 1), axis=2)                                            # [B, Z, C]
  q_pos = jnp.clip(pos[None, None] - lp, 0, question.shape[1] - 1)          # [B, Z, C]
  from_question = jnp.take_along_axis(question[:, None].repeat(z, 1), q_pos, axis=2)
  content = jnp.where(pos < lp, from_passage, from_question)
  n = jnp.minimum(lp + question_length[:, None, None], c)                   # [B, Z, 1]
  content = jnp.where(pos < n, content, fmt.pad_id).astype(jnp.int32)
  ids = jnp.pad(content, ((0, 0), (0, 0), (pre, suf)), constant_values=fmt.pad_id)  # [B, Z, L]
  full = jnp.arange(fmt.length)[None, None]                                  # [1, 1, L]
  if pre:
    prefix = jnp.asarray(fmt.prefix + (fmt.pad_id,) * (fmt.length - pre), jnp.int32)
    ids = jnp.where(full < pre, prefix, ids)
  if suf:
    at = full - pre - n                                                      # [B, Z, L]
    suffix = jnp.asarray(fmt.suffix, jnp.int32)[jnp.clip(at, 0, suf - 1)]
    ids = jnp.where((at >= 0) & (at < suf), suffix, ids)
  mask = (full < pre + n + suf).astype(jnp.int32)
  return ids.reshape(b * z, fmt.length), mask.reshape(b * z, fmt.length)


# Stands for the context in a prompt template, to split the template around it.
_MARK = "\x00context\x00"


def context_format(tokenizer, length: int,
                   prompt_format: Optional[Callable[[str], str]] = None,
                   pad_id: Optional[int] = None) -> ContextFormat:
  """The tokens around the passage + question of one generator input of `length` tokens.

  Args:
    tokenizer: the generator's tokenizer.
    length: L.
    prompt_format: a decoder-only generator's prompt for a context string
      (`RagModel.prompt_format`, e.g. `prompts.chat_prompt`); the prefix and suffix are its
      text before and after the context. None: the tokenizer's own special tokens (BART's
      <s> ... </s>). With a prompt format, truncation keeps the question (`ContextFormat`).
    pad_id: what pads a context (None: the tokenizer's pad token).
  """
  if prompt_format is not None:
    parts = prompt_format(_MARK).split(_MARK)
    if len(parts) != 2:
      raise ValueError(f"the prompt format holds the context {len(parts) - 1} times; RAG's "
                       "contexts need it once")
    prefix = tokenizer(parts[0])["input_ids"]
    suffix = tokenizer(parts[1], add_special_tokens=False)["input_ids"]
  else:
    prefix, suffix = frame(tokenizer)
  if length - len(prefix) - len(suffix) < 2:
    raise ValueError(f"contexts of {length} tokens leave no room for a passage and a question "
                     f"besides the prompt's {len(prefix) + len(suffix)} tokens")
  return ContextFormat(
      length=length, prefix=tuple(prefix), suffix=tuple(suffix),
      pad_id=tokenizer.pad_token_id if pad_id is None else pad_id,
      keep_question=prompt_format is not None)


def frame(tokenizer) -> Tuple[List[int], List[int]]:
  """The special tokens the tokenizer puts around a text (BART: [<s>], [</s>])."""
  specials = tokenizer("")["input_ids"]
  if len(specials) != 2:
    raise ValueError(f"the generator tokenizer frames a text with {len(specials)} special "
                     "tokens; RAG's contexts and targets need a start and an end token")
  return specials[:1], specials[1:]


def content_tokens(tokenizer, texts: Sequence[str], max_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """Token ids without special tokens, truncated to max_len: [n, max_len] int32 (padded with
  0; only the first `lengths` count) and lengths [n] int32."""
  ids = tokenizer(list(texts), add_special_tokens=False, truncation=True,
                  max_length=max_len)["input_ids"] if texts else []
  out = np.zeros((len(ids), max_len), np.int32)
  lengths = np.zeros(len(ids), np.int32)
  for i, row in enumerate(ids):
    out[i, :len(row)] = row
    lengths[i] = len(row)
  return out, lengths


def format_context(title: str, text: str, question: str, config: rag_lib.RagConfig) -> str:
  """HF RagRetriever's generator input: prefix + title / text // question."""
  title = title.removeprefix('"').removesuffix('"')
  return ((config.prefix or "") + title + config.title_sep + text + config.doc_sep +
          question).replace("  ", " ")


def closed_book_context(question: str, config: rag_lib.RagConfig) -> str:
  """A context without a passage: the question alone, after the config's prefix."""
  return (config.prefix or "") + question


# `format_context`'s string cut into the passage's part and the question's, which join
# into it: `prefix + title / text //` and `" " + question` (HF's layout, whose truncation
# cuts the question), or with `fmt.keep_question` `prefix + title / text` and `// question`,
# so that truncating the passage keeps the separator. A closed-book context is
# `closed_book_context` instead.


def passage_part(title: str, text: str, config: rag_lib.RagConfig,
                 fmt: ContextFormat) -> str:
  whole = format_context(title, text, "", config)
  if not fmt.keep_question:
    return whole.rstrip()
  return whole.removesuffix(config.doc_sep.replace("  ", " "))


def question_part(question: str, config: rag_lib.RagConfig,
                  fmt: ContextFormat) -> str:
  if not fmt.keep_question:
    return (" " + question).replace("  ", " ")  # as format_context's whole string
  return (config.doc_sep + question).replace("  ", " ")


def tokenize_passages(passages, tokenizer, config: rag_lib.RagConfig,
                      fmt: ContextFormat, chunk: int = 4096
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """Each passage's part of the generator input (`passage_part`).

  Args:
    passages: a sequence of objects with `title` and `text` (a PassageStore).
  Returns:
    tokens [M, P] int32 and lengths [M] int32.
  """
  parts = [(np.zeros((0, fmt.content_length), np.int32), np.zeros((0,), np.int32))]
  for start in range(0, len(passages), chunk):
    rows = [passages[i] for i in range(start, min(start + chunk, len(passages)))]
    texts = [passage_part(p["title"], p["text"], config, fmt) for p in rows]
    parts.append(content_tokens(tokenizer, texts, fmt.content_length))
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
