"""Any supported checkpoint -> (module, params): dispatch on what the checkpoint is."""

import pathlib
from typing import Any, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rag_jax import assets
from rag_jax.weights import gguf_file
from rag_jax.weights.bart import load_bart
from rag_jax.weights.bert import load_bert
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import read_json, resolve
from rag_jax.weights.llama import load_llama
from rag_jax.weights.state import Params
from rag_jax.weights.tokenizer import load_tokenizer_if_present


def load(path_or_name, **kwargs) -> Tuple[nn.Module, Params]:
  """Loads any supported checkpoint directory, dispatching on `model_type` in its
  config.json (bert, dpr, bart, llama); `kwargs` go to that architecture's loader."""
  directory = resolve(path_or_name)
  model_type = read_json(directory / "config.json").get("model_type")
  if model_type in ("bert", "dpr"):
    return load_bert(directory, **kwargs)
  if model_type == "bart":
    return load_bart(directory, **kwargs)
  if model_type == "llama":
    module, params, _ = load_llama(directory, **kwargs)
    return module, params
  raise WeightsError(f"{directory}: unsupported architecture {model_type!r} "
                     "(supported: bert, dpr, bart, llama)")


def load_generator(spec, dtype=jnp.float32) -> Tuple[nn.Module, Params, Any]:
  """A generator checkpoint: a Llama (a GGUF, or an HF directory of model_type llama), or
  else a BART.

  Args:
    spec: a directory, a `.gguf` file, `asset:NAME`, or a hub name.
    dtype: computation dtype.
  Returns:
    (module, params, tokenizer or None when the checkpoint has none).
  """
  local = pathlib.Path(assets.resolve_spec(spec)).expanduser()
  if local.exists() and gguf_file.find_gguf(local) is not None:
    return load_llama(local, dtype=dtype)
  directory = resolve(local if local.exists() else spec)
  config = directory / "config.json"
  if config.is_file() and read_json(config).get("model_type") == "llama":
    return load_llama(directory, dtype=dtype)
  module, params = load_bart(directory, dtype=dtype)
  return module, params, load_tokenizer_if_present(directory)
