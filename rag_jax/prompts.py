"""Prompts for a decoder-only generator: RAG's context, `title / text // question`, as the
prompt that the target follows (rag_jax.models.generator.DecoderOnlyGenerator).

Prompts are left-padded to the longest of the batch, so every target starts right after the
padded prompt, at the same column; the generator counts each row's positions from its mask,
so the padding changes no number. A prompt over the length limit loses the end of its
passage text, never the question.
"""

from typing import Callable, Optional, Sequence, Tuple

import numpy as np


def encode_prompts(tokenizer, contexts: Sequence[Tuple[str, str, str]],
                   render: Callable[[str, str, str], str], *, limit: int,
                   pad_token_id: int) -> Tuple[np.ndarray, np.ndarray]:
  """Tokenized, truncated, left-padded prompts.

  Args:
    tokenizer: the generator's HF tokenizer.
    contexts: N (title, text, question) triples.
    render: (title, text, question) -> the prompt string.
    limit: the most tokens a prompt keeps.
    pad_token_id: the id of the padding.
  Returns:
    ids, mask: [N, S] int32, S the longest prompt (<= limit), padded on the left.
  """
  rows = []
  for title, text, question in contexts:
    encode = lambda body: tokenizer(render(title, body, question))["input_ids"]
    ids = encode(text)
    if len(ids) > limit:
      # Shorten the passage by the excess until the prompt fits (the tokens of a prefix of
      # the text need not add up exactly, hence the loop); the question stays whole, and
      # only a question that alone is too long is cut, from the left.
      text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
      keep = len(text_ids)
      while len(ids) > limit and keep > 0:
        keep = max(0, keep - (len(ids) - limit))
        ids = encode(tokenizer.decode(text_ids[:keep]))
    rows.append(ids[-limit:])
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_token_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    if r:
      ids[i, -len(r):], mask[i, -len(r):] = r, 1
  return ids, mask


def chat_prompt(tokenizer, system: Optional[str] = None) -> Callable[[str], str]:
  """A `RagModel.prompt_format` for an instruct model: the RAG context string as the user's
  turn of the tokenizer's chat template, up to where the assistant's answer starts, less a
  final newline: the target's start token (`newline_token`, as `RagModel.from_parts` picks
  it) supplies that newline.

  Args:
    tokenizer: an HF tokenizer with a chat template (SmolLM2-Instruct's GGUF has one).
    system: a system message (None: the template's default, if it has one).
  """
  def fmt(context: str) -> str:
    turns = [{"role": "system", "content": system}] if system else []
    text = tokenizer.apply_chat_template(turns + [{"role": "user", "content": context}],
                                         tokenize=False, add_generation_prompt=True)
    return text[:-1] if text.endswith("\n") else text
  return fmt


def use_chat_template(model, system: Optional[str] = None) -> None:
  """Makes a decoder-only RagModel prompt through its tokenizer's chat template
  (`chat_prompt`), if it has one; nothing otherwise (BART, or a base model).

  Args:
    model: a rag.RagModel (its `prompt_format` is set).
    system: the system message ("" or None: the template's default).
  """
  tokenizer = model.generator_tokenizer
  if not model.rag.gen.has_encoder and tokenizer is not None and tokenizer.chat_template:
    model.prompt_format = chat_prompt(tokenizer, system=system or None)


def newline_token(tokenizer) -> Optional[int]:
  """The id of a newline, if the tokenizer has one token of its own for it; else None."""
  ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
  if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
    return None
  return ids[0]
