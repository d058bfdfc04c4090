"""BART generators (BartForConditionalGeneration, BartModel) -> (Bart, params): the HF name
map and the loader."""

import pathlib
import re
from typing import Optional, Tuple

import jax.numpy as jnp
import numpy as np

from rag_jax.models import bart as bart_lib
from rag_jax.weights import state as state_lib
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import read_json, resolve


def bart_names(path: Tuple[str, ...]) -> Tuple[str, ...]:
  """Our Bart param path -> candidate HF names (relative to BartForConditionalGeneration)."""
  p, leaf = "/".join(path[:-1]), path[-1]
  if p == "" and leaf == "final_logits_bias":
    return ("final_logits_bias",)
  if p == "shared":
    return ("model.shared.weight", "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight")
  if p == "lm_head":
    return ("lm_head.weight",)
  m = re.fullmatch(r"(encoder|decoder)_embed_tokens", p)
  if m:  # Untied embeddings; checkpoints written before HF v5 only stored model.shared.
    return (f"model.{m.group(1)}.embed_tokens.weight", "model.shared.weight")
  m = re.fullmatch(r"(encoder|decoder)_(positions|embed_norm)", p)
  if m:
    side, what = m.groups()
    if what == "positions":
      return (f"model.{side}.embed_positions.weight",)
    return tuple(f"model.{side}.layernorm_embedding.{n}" for n in state_lib.norm_names(leaf))
  m = re.fullmatch(r"(encoder|decoder)_layers_(\d+)/(.+)", p)
  if m:
    side, i, sub = m.groups()
    base = f"model.{side}.layers.{i}."
    attn = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
    m2 = re.fullmatch(r"(self_attn|cross_attn)/(query|key|value|out)", sub)
    if m2:
      module = "self_attn" if m2.group(1) == "self_attn" else "encoder_attn"
      return tuple(base + f"{module}.{attn[m2.group(2)]}.{n}"
                   for n in state_lib.linear_names(leaf))
    norms = {"self_attn_norm": "self_attn_layer_norm",
             "cross_attn_norm": "encoder_attn_layer_norm", "mlp_norm": "final_layer_norm"}
    if sub in norms:
      return tuple(base + f"{norms[sub]}.{n}" for n in state_lib.norm_names(leaf))
    if sub in ("mlp/wi", "mlp/wo"):
      return tuple(base + f"{'fc1' if sub == 'mlp/wi' else 'fc2'}.{n}"
                   for n in state_lib.linear_names(leaf))
  raise KeyError(path)


def load_bart(path_or_name, *, dtype=jnp.float32, prefix: str = "", config: Optional[dict] = None,
              state: Optional[state_lib.StateDict] = None
              ) -> Tuple[bart_lib.Bart, state_lib.Params]:
  """Loads a BART (BartForConditionalGeneration or BartModel layout).

  Args:
    path_or_name: checkpoint directory or hub name.
    dtype: computation dtype.
    prefix, config, state: for checkpoints nested in another (RAG's generator: "rag.generator.").
  Returns:
    (Bart, params).
  """
  directory = resolve(path_or_name) if state is None else pathlib.Path(str(path_or_name))
  hf = config if config is not None else read_json(directory / "config.json")
  if hf.get("model_type") != "bart":
    raise WeightsError(f"{directory}: unsupported architecture {hf.get('model_type')!r} for a "
                       "BART generator (expected bart)")
  try:
    cfg = bart_lib.BartConfig.from_hf(hf)
  except (TypeError, ValueError) as e:
    raise WeightsError(f"{directory / 'config.json'}: {e}") from None
  if state is None:
    state = state_lib.read_state_dict(directory)
  if not any(k.startswith(prefix + "model.") for k in state):
    # BartModel checkpoints have no "model." level; nest them like the LM.
    state = state_lib.RenamedState(state, {(prefix + "model." + k[len(prefix):]
                                            if k.startswith(prefix) else k): k for k in state})
  module = bart_lib.Bart(cfg, dtype=dtype)
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = state_lib.abstract_params(module, ids, None, ids)
  ignore = [r"model\.(encoder|decoder)\.embed_tokens\.weight", r"model\.shared\.weight"]
  if cfg.tie_word_embeddings:
    ignore.append(r"lm_head\.weight")
  params = state_lib.convert_state_dict(
      state, abstract, lambda path: tuple(prefix + n for n in bart_names(path)), scope=prefix,
      source=str(directory), ignore=ignore,
      optional={prefix + "final_logits_bias": lambda shape: np.zeros(shape, np.float32)})
  return module, params
