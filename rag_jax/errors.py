"""One line of an exception's message, for the one-line errors every entry point prints, and
`UsageError`, the errors they exit 2 on.

A leaf: imports nothing of rag_jax, so that any module may use it. Two choices of line, named
for what they keep, because the libraries we wrap put the useful line in different places.
"""

import re


class UsageError(ValueError):
  """A flag or config value that cannot be run, found before the work starts: every entry
  point exits 2 on it, as on argparse's and absl's own usage errors."""

_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _lines(e: BaseException) -> list:
  """The non-empty lines of an exception's message, stripped, without terminal colour codes."""
  text = _ANSI_COLOUR.sub("", str(e))
  return [line.strip() for line in text.splitlines() if line.strip()]


def first_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message (its type's name if it has none).

  The first line is the summary for our own errors and for those of the readers we call
  (safetensors, torch, gguf, tokenizers), which add detail below it; some colour it, hence
  the stripping.
  """
  lines = _lines(e)
  return lines[0] if lines else type(e).__name__


def last_line(e: BaseException) -> str:
  """The last non-empty line of an exception's message (its type's name if it has none).

  ml_collections wraps a config file's load error in a message whose last line is the cause
  ("[Errno 2] No such file ...").
  """
  lines = _lines(e)
  return lines[-1] if lines else type(e).__name__
