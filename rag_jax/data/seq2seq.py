"""The layout of HF transformers' RAG fine-tuning example (examples/research_projects/rag):
a directory with `{split}.source` and `{split}.target`, line i of one paired with line i of
the other. Every task can be written this way (question -> answer, claim -> label word).
"""

import os
import pathlib
from typing import List

from rag_jax.data.core import DataError, Example, line_error, read_lines

SOURCE = ("the layout of HF transformers' RAG example: {split}.source and {split}.target, "
          "one example per line")


def read_seq2seq(directory: str | os.PathLike, split: str) -> List[Example]:
  """The examples of `split` in `directory`.

  Args:
    directory: holds `{split}.source` (one question or claim a line) and `{split}.target`
      (its answer on the same line).
    split: e.g. "train", "val", "test".

  Returns:
    Example(id=f"{split}:{line}", source, targets=(target,)) for each line, in file order;
    surrounding whitespace stripped.

  Raises:
    DataError: a missing file, an empty line, or files of different lengths (both named,
      with their line counts).
  """
  directory = pathlib.Path(directory)
  source_path = directory / f"{split}.source"
  target_path = directory / f"{split}.target"
  sources = _lines(source_path)
  targets = _lines(target_path)
  if len(sources) != len(targets):
    raise DataError(f"{source_path} has {len(sources)} lines but {target_path} has "
                    f"{len(targets)}; line i of each is one example")
  return [Example(id=f"{split}:{i}", source=s, targets=(t,))
          for i, (s, t) in enumerate(zip(sources, targets), 1)]


def _lines(path: pathlib.Path) -> List[str]:
  lines = []
  for line_no, line in read_lines(path, SOURCE):
    # An empty line would shift every later pairing if someone "fixed" it by deleting it;
    # better to stop at it.
    if not line.strip():
      raise line_error(path, line_no, "empty line")
    lines.append(line.strip())
  return lines
