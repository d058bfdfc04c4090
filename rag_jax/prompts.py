"""Prompts for a decoder-only generator: RAG's context, `title / text // question`, as the
prompt that the target follows (rag_jax.models.generator.DecoderOnlyGenerator), through an
instruct model's chat template. `contexts.context_format` splits the prompt around the
context into the tokens before and after it.
"""

from typing import Callable, Optional


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
    model: a model.RagModel (its `prompt_format` is set).
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
