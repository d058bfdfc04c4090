"""Examples and passages -> token arrays, and the grain iterator over training batches.

Everything is tokenized once, up front, into numpy arrays indexed by example (or passage)
row; a batch is a gather of rows. The iterator yields *global* batches of row numbers (the
same sequence on every host and every mesh), and each host takes its own slice, so a run on
1 device and on 8, or on 1 process and on 2, sees the same batches.

Shapes: N = examples, M = passages, Lq = question tokens, Q = the question's generator
tokens, P = a passage's generator tokens (`ContextFormat.content_length`), T = target tokens.
"""

import dataclasses
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grain
import jax
import numpy as np

from rag_jax import rag as rag_lib
from rag_jax.train import step as step_lib
from rag_jax.data import Example

# Arrays of a split that stay on the host: BM25's retrieval of each example, retrieved once up
# front (experiment.build), which the host reads to gather the passages.
HOST_ONLY = ("bm25_ids", "bm25_scores")


# Stands for the context in a prompt template, to split the template around it.
_MARK = "\x00context\x00"


def context_format(tokenizer, length: int,
                   prompt_format: Optional[Callable[[str], str]] = None,
                   pad_id: Optional[int] = None) -> step_lib.ContextFormat:
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
    prefix, suffix = _frame(tokenizer)
  if length - len(prefix) - len(suffix) < 2:
    raise ValueError(f"contexts of {length} tokens leave no room for a passage and a question "
                     f"besides the prompt's {len(prefix) + len(suffix)} tokens")
  return step_lib.ContextFormat(
      length=length, prefix=tuple(prefix), suffix=tuple(suffix),
      pad_id=tokenizer.pad_token_id if pad_id is None else pad_id,
      keep_question=prompt_format is not None)


def _frame(tokenizer) -> Tuple[List[int], List[int]]:
  """The special tokens the tokenizer puts around a text (BART: [<s>], [</s>])."""
  specials = tokenizer("")["input_ids"]
  if len(specials) != 2:
    raise ValueError(f"the generator tokenizer frames a text with {len(specials)} special "
                     "tokens; RAG's contexts and targets need a start and an end token")
  return specials[:1], specials[1:]


@dataclasses.dataclass(frozen=True)
class TargetFormat:
  """How a target text becomes a label row: start + its tokens + end, then padding."""
  start_id: int
  end_id: int
  pad_id: int

  @classmethod
  def of(cls, tokenizer, generator) -> "TargetFormat":
    """BART: the tokenizer's own framing (<s> target </s>, HF RAG's labels). A decoder-only
    generator: its start token (what follows the prompt, a newline) and its EOS, padded with
    its pad (`DecoderOnlyGenerator`), so the model learns to end its answer."""
    if generator.has_encoder:
      (start,), (end,) = _frame(tokenizer)
      return cls(start, end, tokenizer.pad_token_id)
    return cls(generator.start_token_id, generator.eos_token_id, generator.pad_token_id)


def _content(tokenizer, texts: Sequence[str], max_len: int) -> Tuple[np.ndarray, np.ndarray]:
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


# `rag.format_context`'s string cut into the passage's part and the question's, which join
# into it: `prefix + title / text //` and `" " + question` (HF's layout, whose truncation
# cuts the question), or with `fmt.keep_question` `prefix + title / text` and `// question`,
# so that truncating the passage keeps the separator. A closed-book context is
# `rag.closed_book_context` instead.


def passage_part(title: str, text: str, config: rag_lib.RagConfig,
                 fmt: step_lib.ContextFormat) -> str:
  whole = rag_lib.format_context(title, text, "", config)
  if not fmt.keep_question:
    return whole.rstrip()
  return whole.removesuffix(config.doc_sep.replace("  ", " "))


def question_part(question: str, config: rag_lib.RagConfig,
                  fmt: step_lib.ContextFormat) -> str:
  if not fmt.keep_question:
    return " " + question
  return (config.doc_sep + question).replace("  ", " ")


def tokenize_passages(passages, tokenizer, config: rag_lib.RagConfig,
                      fmt: step_lib.ContextFormat, chunk: int = 4096
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """Each passage's part of the generator input (`passage_part`).

  Args:
    passages: a sequence of objects with `title` and `text` (a PassageStore).
  Returns:
    tokens [M, P] int32 and lengths [M] int32.
  """
  parts = []
  for start in range(0, len(passages), chunk):
    rows = [passages[i] for i in range(start, min(start + chunk, len(passages)))]
    texts = [passage_part(p["title"], p["text"], config, fmt) for p in rows]
    parts.append(_content(tokenizer, texts, fmt.content_length))
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def tokenize_examples(examples: List[Example], *, question_tokenizer, generator_tokenizer,
                      rag_config: rag_lib.RagConfig, fmt: step_lib.ContextFormat,
                      target_format: TargetFormat,
                      max_question_length: int, max_target_length: int,
                      target: Callable[[Example], str], closed_book: bool = False
                      ) -> Dict[str, np.ndarray]:
  """The arrays a batch is gathered from; with `closed_book` the question tokens are the
  whole context (`rag.closed_book_context`, as `RagModel.contextualize` makes it), to be
  joined with no passage.

  Returns:
    question_ids, question_mask [N, Lq] (query encoder); question_tokens [N, P] and
    question_length [N] (the question's part of the generator input, `question_part`);
    labels [N, T] (the target framed by `target_format`, truncated, padded).
  """
  sources = [e.source for e in examples]
  q = question_tokenizer(sources, max_length=max_question_length, truncation=True,
                         padding="max_length", return_tensors="np")
  question_tokens, question_length = _content(
      generator_tokenizer, [rag_lib.closed_book_context(s, rag_config) if closed_book
                            else question_part(s, rag_config, fmt) for s in sources],
      fmt.content_length)
  t = target_format
  content, lengths = _content(generator_tokenizer, [target(e) for e in examples],
                              max_target_length - 2)
  labels = np.full((len(examples), max_target_length), t.pad_id, np.int32)
  labels[:, 0] = t.start_id
  for i, n in enumerate(lengths):
    labels[i, 1:n + 1] = content[i, :n]
    labels[i, n + 1] = t.end_id
  return {"question_ids": q["input_ids"].astype(np.int32),
          "question_mask": q["attention_mask"].astype(np.int32),
          "question_tokens": question_tokens, "question_length": question_length,
          "labels": labels}


def train_batches(num_examples: int, batch_size: int, seed: int) -> grain.MapDataset:
  """Global batches of example rows: `batches[s]` is step s's [batch_size] rows, in a new
  order every epoch (grain's shuffle of a repeated dataset; batches run across epoch ends).

  Random access by step makes the data position the train state's step: a checkpoint needs
  no iterator state, and restores on any number of processes."""
  if num_examples < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
  return grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat().batch(batch_size)


def host_rows(rows: np.ndarray) -> np.ndarray:
  """This process's contiguous share of a global batch of rows."""
  n, count = len(rows), jax.process_count()
  if n % count:
    raise ValueError(f"batch {n} does not split over {count} processes")
  share = n // count
  return rows[jax.process_index() * share:(jax.process_index() + 1) * share]


def gather(arrays: Dict[str, np.ndarray], rows: np.ndarray) -> Dict[str, np.ndarray]:
  return {k: v[rows] for k, v in arrays.items()}


def iterate_eval(num: int, batch_size: int) -> Iterator[np.ndarray]:
  """Eval rows in order, the last batch padded by repeating row 0 (its results dropped)."""
  for start in range(0, num, batch_size):
    rows = np.arange(start, min(start + batch_size, num))
    yield np.concatenate([rows, np.zeros(batch_size - len(rows), rows.dtype)])
