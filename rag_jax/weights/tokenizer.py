"""A checkpoint's tokenizer, through `transformers.AutoTokenizer`."""

import pathlib

from rag_jax.errors import first_line
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import resolve

# The files whose presence says a directory has a tokenizer of its own.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt",
                   "vocab.json")


def load_tokenizer(path_or_name):
  """The checkpoint's tokenizer through `transformers.AutoTokenizer`."""
  directory = resolve(path_or_name)
  # Lazy: importing transformers costs more than importing the rest of rag_jax, and only
  # loading a tokenizer needs it.
  import transformers  # pylint: disable=import-outside-toplevel
  try:
    return transformers.AutoTokenizer.from_pretrained(str(directory))
  except Exception as e:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
    raise WeightsError(f"{directory}: no usable tokenizer ({first_line(e)})") from None


def load_tokenizer_if_present(path):
  """The tokenizer in a directory, or None when it has none (a bare checkpoint)."""
  path = pathlib.Path(str(path))
  if not path.is_dir() or not any((path / f).exists() for f in TOKENIZER_FILES):
    return None
  return load_tokenizer(path)
