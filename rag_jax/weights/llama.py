"""Llama-architecture decoders (SmolLM2, Llama 2, ...) from HF LlamaForCausalLM directories and
GGUF files -> (Llama, params, tokenizer): the HF name map and the loader."""

import pathlib
import re
from typing import Any, Optional, Tuple

import jax.numpy as jnp

from rag_jax import assets
from rag_jax.models import llama as llama_lib
from rag_jax.weights import gguf_file
from rag_jax.weights import state as state_lib
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import read_json, resolve
from rag_jax.weights.tokenizer import load_tokenizer_if_present


def llama_names(path: Tuple[str, ...]) -> Tuple[str, ...]:
  """Our Llama param path -> its HF name (LlamaForCausalLM; GGUF files are read under the
  same names, `rag_jax.weights.gguf_file`)."""
  p, leaf = "/".join(path[:-1]), path[-1]
  simple = {"embed_tokens": "model.embed_tokens.weight", "norm": "model.norm.weight",
            "lm_head": "lm_head.weight"}
  if p in simple:
    return (simple[p],)
  m = re.fullmatch(r"layers_(\d+)/(.+)", p)
  if m:
    i, sub = m.groups()
    base = f"model.layers.{i}."
    norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    linears = {"attn/query": "self_attn.q_proj", "attn/key": "self_attn.k_proj",
               "attn/value": "self_attn.v_proj", "attn/out": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    if sub in norms:
      return (base + f"{norms[sub]}.weight",)
    if sub in linears:
      return tuple(base + f"{linears[sub]}.{n}" for n in state_lib.linear_names(leaf))
  raise KeyError(path)


def load_llama(path_or_name, *, dtype=jnp.float32
               ) -> Tuple[llama_lib.Llama, state_lib.Params, Optional[Any]]:
  """Loads a Llama-architecture decoder (SmolLM2, Llama 2, ...) and its tokenizer.

  Args:
    path_or_name: an HF `LlamaForCausalLM` directory (config.json + safetensors), a `.gguf`
      file, a directory holding one `.gguf` and no config.json, `asset:NAME`, or a hub name.
    dtype: computation dtype (parameters are float32, quantised GGUF tensors dequantised).
  Returns:
    (Llama, params, tokenizer): the tokenizer from the GGUF or the directory, or None when
    there is none (a bare checkpoint).
  """
  local = pathlib.Path(assets.resolve_spec(path_or_name)).expanduser()
  if local.suffix == ".gguf" and not local.is_file():
    raise WeightsError(f"{local}: no such file")
  gguf_path = gguf_file.find_gguf(local) if local.exists() else None
  if gguf_path is not None:
    hf, state = gguf_file.read(gguf_path)
    source = str(gguf_path)
  else:
    directory = resolve(local if local.exists() else path_or_name)
    hf, source = read_json(directory / "config.json"), str(directory)
    if hf.get("model_type") != "llama":
      raise WeightsError(f"{directory}: unsupported architecture {hf.get('model_type')!r} for a "
                         "Llama generator (expected llama)")
  try:
    cfg = llama_lib.LlamaConfig.from_hf(hf)
  except (TypeError, ValueError) as e:
    raise WeightsError(f"{source}: {e}") from None
  if gguf_path is None:
    state = state_lib.read_state_dict(directory)
  module = llama_lib.Llama(cfg, dtype=dtype)
  abstract = state_lib.abstract_params(module, jnp.zeros((1, 2), jnp.int32))
  ignore = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]  # older HF checkpoints
  if cfg.tie_word_embeddings:
    ignore.append(r"lm_head\.weight")
  params = state_lib.convert_state_dict(state, abstract, llama_names, ignore=ignore,
                                        source=source)
  if gguf_path is not None:
    return module, params, state.tokenizer()
  return module, params, load_tokenizer_if_present(directory)
