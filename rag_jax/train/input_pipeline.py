"""Examples and passages -> token arrays, and the grain iterator over training batches.

Everything is tokenized once, up front, into numpy arrays indexed by example (or passage)
row; a batch is a gather of rows. The iterator yields *global* batches of row numbers (the
same sequence on every host and every mesh), and each host takes its own slice, so a run on
1 device and on 8, or on 1 process and on 2, sees the same batches.

Shapes: N = examples, M = passages, Lq = question tokens, Q = the question's generator
tokens, P = a passage's generator tokens (`ContextFormat.content_length`), T = target tokens.
"""

import dataclasses
from typing import Callable, Dict, List, Tuple

import grain
import jax
import numpy as np

from rag_jax import contexts
from rag_jax import rag as rag_lib
from rag_jax.data import Example

# Arrays of a split that stay on the host: BM25's retrieval of each example, retrieved once up
# front (setup.build), which the host reads to gather the passages.
HOST_ONLY = ("bm25_ids", "bm25_scores")


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
      (start,), (end,) = contexts.frame(tokenizer)
      return cls(start, end, tokenizer.pad_token_id)
    return cls(generator.start_token_id, generator.eos_token_id, generator.pad_token_id)


def tokenize_examples(examples: List[Example], *, question_tokenizer, generator_tokenizer,
                      rag_config: rag_lib.RagConfig, fmt: contexts.ContextFormat,
                      target_format: TargetFormat,
                      max_question_length: int, max_target_length: int,
                      target: Callable[[Example], str], closed_book: bool = False
                      ) -> Dict[str, np.ndarray]:
  """The arrays a batch is gathered from; with `closed_book` the question tokens are the
  whole context (`contexts.closed_book_context`, as `RagModel.contextualize` makes it), to be
  joined with no passage.

  Returns:
    question_ids, question_mask [N, Lq] (query encoder); question_tokens [N, P] and
    question_length [N] (the question's part of the generator input, `question_part`);
    labels [N, T] (the target framed by `target_format`, truncated, padded).
  """
  sources = [e.source for e in examples]
  q = question_tokenizer(sources, max_length=max_question_length, truncation=True,
                         padding="max_length", return_tensors="np")
  question_tokens, question_length = contexts.content_tokens(
      generator_tokenizer, [contexts.closed_book_context(s, rag_config) if closed_book
                            else contexts.question_part(s, rag_config, fmt) for s in sources],
      fmt.content_length)
  t = target_format
  content, lengths = contexts.content_tokens(generator_tokenizer, [target(e) for e in examples],
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


def batch_shapes(batch_size: int, fmt: contexts.ContextFormat, max_question_length: int,
                 max_target_length: int) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
  """The (shape, dtype) of each array of a batch of `tokenize_examples`' rows, as the train
  step gets them (`rag_jax.compile` lowers the step from these)."""
  b, p = batch_size, fmt.content_length
  return {"question_ids": ((b, max_question_length), np.int32),
          "question_mask": ((b, max_question_length), np.int32),
          "question_tokens": ((b, p), np.int32), "question_length": ((b,), np.int32),
          "labels": ((b, max_target_length), np.int32)}


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
