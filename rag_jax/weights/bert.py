"""BERT encoders (BertModel, DPRQuestionEncoder, DPRContextEncoder, sentence-transformers BERT
models such as all-MiniLM-L6-v2) -> (BertEncoder, params): the HF name map and the loader."""

import pathlib
import re
from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp

from rag_jax.models import bert as bert_lib
from rag_jax.weights import state as state_lib
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import read_json, resolve

# Where a BERT sits inside the checkpoints we read: bare, BertForX, DPR's question and context
# encoders, sentence-transformers exports.
BERT_PREFIXES = ("", "bert.", "question_encoder.bert_model.", "ctx_encoder.bert_model.",
                 "model.", "bert_model.")


def bert_names(path: Tuple[str, ...]) -> Tuple[str, ...]:
  """Our BertEncoder param path -> candidate HF names (relative to the BERT prefix)."""
  p, leaf = "/".join(path[:-1]), path[-1]
  simple = {"word_embeddings": "embeddings.word_embeddings",
            "position_embeddings": "embeddings.position_embeddings",
            "token_type_embeddings": "embeddings.token_type_embeddings"}
  if p in simple:
    return (f"{simple[p]}.weight",)
  if p == "embeddings_norm":
    return tuple(f"embeddings.LayerNorm.{n}" for n in state_lib.norm_names(leaf))
  if p == "pooler":
    return tuple(f"pooler.dense.{n}" for n in state_lib.linear_names(leaf))
  m = re.fullmatch(r"layers_(\d+)/(.+)", p)
  if m:
    i, sub = m.groups()
    base = f"encoder.layer.{i}."
    linears = {"attention/query": "attention.self.query", "attention/key": "attention.self.key",
               "attention/value": "attention.self.value",
               "attention/out": "attention.output.dense", "mlp/wi": "intermediate.dense",
               "mlp/wo": "output.dense"}
    norms = {"attention_norm": "attention.output.LayerNorm", "mlp_norm": "output.LayerNorm"}
    if sub in linears:
      return tuple(base + f"{linears[sub]}.{n}" for n in state_lib.linear_names(leaf))
    if sub in norms:
      return tuple(base + f"{norms[sub]}.{n}" for n in state_lib.norm_names(leaf))
  raise KeyError(path)


def _sentence_transformers_head(directory: pathlib.Path) -> Dict[str, Any]:
  """Pooling / normalisation of a sentence-transformers directory (modules.json), if any."""
  modules_file = directory / "modules.json"
  if not modules_file.is_file():
    return {}
  out: Dict[str, Any] = {"normalize": False}
  for module in read_json(modules_file):
    kind = module.get("type", "").rsplit(".", 1)[-1]
    if kind == "Transformer" and module.get("path", "") not in ("", "."):
      raise WeightsError(f"{modules_file}: Transformer module in subfolder {module['path']!r}; "
                         "pass that subfolder")
    elif kind == "Pooling":
      cfg = read_json(directory / module["path"] / "config.json")
      modes = [m for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                           "weightedmean_tokens", "lasttoken") if cfg.get(f"pooling_mode_{m}")]
      if modes not in (["cls_token"], ["mean_tokens"]):
        raise WeightsError(f"{directory / module['path']}: unsupported pooling {modes} "
                           "(supported: cls_token, mean_tokens)")
      out["pooling"] = "cls" if modes == ["cls_token"] else "mean"
    elif kind == "Normalize":
      out["normalize"] = True
    elif kind not in ("Transformer",):
      raise WeightsError(f"{modules_file}: unsupported sentence-transformers module {kind}")
  return out


def load_bert(path_or_name, *, pooling: Optional[str] = None, normalize: Optional[bool] = None,
              dtype=jnp.float32, prefix: Optional[str] = None, config: Optional[dict] = None,
              state: Optional[state_lib.StateDict] = None
              ) -> Tuple[bert_lib.BertEncoder, state_lib.Params]:
  """Loads a BERT / DPR / sentence-transformers encoder.

  Pooling defaults by kind: DPR -> "cls" (+ `encode_proj` if `projection_dim`), a
  sentence-transformers directory -> what its modules.json says, plain BERT -> "pooler".

  Args:
    path_or_name: checkpoint directory or hub name.
    pooling, normalize: override the defaults above.
    dtype: computation dtype.
    prefix, config, state: for checkpoints nested in another (RAG's question encoder).
  Returns:
    (BertEncoder, params).
  """
  directory = resolve(path_or_name) if state is None else pathlib.Path(str(path_or_name))
  hf = config if config is not None else read_json(directory / "config.json")
  model_type = hf.get("model_type")
  if model_type not in ("bert", "dpr"):
    raise WeightsError(f"{directory}: unsupported architecture {model_type!r} for a BERT "
                       "encoder (expected bert or dpr)")
  head = _sentence_transformers_head(directory) if state is None else {}
  defaults = {"pooling": "cls" if model_type == "dpr" else head.get("pooling", "pooler"),
              "normalize": head.get("normalize", False)}
  overrides = {"pooling": pooling or defaults["pooling"],
               "normalize": defaults["normalize"] if normalize is None else normalize}
  try:
    cfg = bert_lib.BertConfig.from_hf(hf, **overrides)
  except (TypeError, ValueError) as e:
    raise WeightsError(f"{directory / 'config.json'}: {e}") from None
  if state is None:
    state = state_lib.read_state_dict(directory)
  if prefix is None:
    prefix = state_lib.find_prefix(state, "embeddings.word_embeddings.weight", BERT_PREFIXES,
                                   str(directory))
  module = bert_lib.BertEncoder(cfg, dtype=dtype)
  abstract = state_lib.abstract_params(module, jnp.zeros((1, 2), jnp.int32))
  # DPR's projection sits beside the BERT: "question_encoder.encode_proj" next to
  # "question_encoder.bert_model.".
  scope = prefix[:-len("bert_model.")] if prefix.endswith("bert_model.") else prefix

  def names(path):
    if path[0] == "projection":
      return tuple(f"{scope}encode_proj.{n}" for n in state_lib.linear_names(path[-1]))
    return tuple(prefix + n for n in bert_names(path))

  ignore = [r"(.*\.)?embeddings\.position_ids"]
  if cfg.pooling != "pooler":
    ignore.append(r"(.*\.)?pooler\.dense\.(weight|bias)")
  params = state_lib.convert_state_dict(state, abstract, names, scope=scope, ignore=ignore,
                                        source=str(directory))
  return module, params
