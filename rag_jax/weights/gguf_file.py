"""GGUF files (llama.cpp's format) -> an HF-style config dict and state dict, and a tokenizer.

A GGUF Llama is read into exactly what an HF `LlamaForCausalLM` directory gives
(`config.json` keys, `model.layers.N.self_attn.q_proj.weight` names, [out, in] matrices), so
`rag_jax.weights.llama.load_llama` maps both onto our parameters with the same code. Tensors are
dequantised to float32 one at a time, on access (memory stays at one tensor beyond what the
caller keeps). Needs the `gguf` package (llama.cpp's reader).

llama.cpp's converter permutes the rows of the query and key projections of each head from
HF's rotate_half layout (first half, second half) to interleaved pairs, its own rotary
convention; reading undoes that, as transformers' GGUF loader does.
"""

import contextlib
import hashlib
import importlib
import pathlib
import re
import shutil
import sys
import tempfile
import types
from typing import Any, Dict, Optional, Tuple

import numpy as np

from rag_jax import assets
from rag_jax.errors import first_line
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.state import KeyedState

# What `gguf.quants.dequantize` turns into float32 for us. K-quants and i-quants would too,
# but nothing checks them here; a file with one is refused rather than trusted.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# GGUF tensor names (llama.cpp's) -> HF LlamaForCausalLM names.
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_name(name: str) -> str:
  """A GGUF tensor name -> its HF LlamaForCausalLM name (unknown names are kept, so that the
  loader reports them as unexpected parameters)."""
  if name in GLOBAL_NAMES:
    return GLOBAL_NAMES[name]
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
  if m and m.group(2) in BLOCK_NAMES:
    return f"model.layers.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
  return name


def unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head row permutation of a query or key projection.

  llama.cpp writes `w.reshape(heads, 2, K // 2, ...).swapaxes(1, 2)`: within each head the
  rows of the two halves alternate. This is its inverse.

  Args:
    w: [heads * K, D] weight or [heads * K] bias, as stored in the GGUF.
    heads: the heads of this projection (num_key_value_heads for the key).
  Returns:
    the same shape, rows in HF's order.
  """
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _plain_reader(gguf):
  """`gguf.GGUFReader` over a plain ndarray view of its memory map.

  The reader slices its `np.memmap` once per metadata value and per vocabulary token, and a
  memmap's slice is a memmap, whose finalizer costs more than the slicing; SmolLM2's 49k
  tokens made the parse take three times as long. The view reads the same mapped bytes.
  """

  class Reader(gguf.GGUFReader):
    @property
    def data(self):
      return self._plain_data

    @data.setter
    def data(self, value):
      self._plain_data = value.view(np.ndarray)

  return Reader


class GGUFFile(KeyedState):
  """One GGUF file: its metadata, `config` (the llama.* metadata as an HF `config.json`
  dict), and its tensors under HF names, dequantised on access."""

  def __init__(self, path: pathlib.Path):
    try:
      # Lazy: only GGUF checkpoints need llama.cpp's reader, so other runs do not pay for
      # importing it, and its absence is a one-line error rather than an import failure.
      import gguf  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise WeightsError(f"{path}: reading GGUF files needs the gguf package "
                         "(pip install gguf)") from None
    self._gguf, self.path = gguf, path
    try:
      self._reader = _plain_reader(gguf)(str(path))
    except Exception as e:  # pylint: disable=broad-except  (ValueError, struct errors, OSError)
      raise WeightsError(f"{path}: unreadable GGUF file ({first_line(e)})") from None
    self._tensors = {t.name: t for t in self._reader.tensors}
    for t in self._reader.tensors:
      if t.tensor_type.name not in SUPPORTED_TYPES:
        raise WeightsError(f"{path}: tensor {t.name} has unsupported type {t.tensor_type.name} "
                           f"(supported: {', '.join(SUPPORTED_TYPES)})")
    self._index = {hf_name(n): n for n in self._tensors}
    self.config = self._hf_config()
    # The heads each rotary projection was permuted over (the key's are the kv heads).
    self._heads = {"q_proj": self.config["num_attention_heads"],
                   "k_proj": self.config["num_key_value_heads"]}

  def field(self, key: str, default: Any = None) -> Any:
    """A scalar or string metadata value, or `default` when the key is absent."""
    f = self._reader.fields.get(key)
    if f is None:
      return default
    kind = f.types[0] if f.types else None
    if len(f.data) != 1 or kind == self._gguf.GGUFValueType.ARRAY:
      raise WeightsError(f"{self.path}: metadata {key} is not a single value")
    part = f.parts[f.data[0]]
    if kind == self._gguf.GGUFValueType.STRING:
      return bytes(part).decode("utf-8")
    return part.tolist()[0]

  def require(self, key: str) -> Any:
    value = self.field(key)
    if value is None:
      raise WeightsError(f"{self.path}: missing metadata {key}")
    return value

  def _hf_config(self) -> Dict[str, Any]:
    """The llama.* metadata as an HF `config.json` dict (model_type llama)."""
    arch = self.require("general.architecture")
    if arch != "llama":
      raise WeightsError(f"{self.path}: unsupported architecture {arch!r} (expected llama)")
    scaling = self.field("llama.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in self._tensors:
      raise WeightsError(f"{self.path}: unsupported rope scaling "
                         f"{scaling if scaling != 'none' else 'rope_freqs'} (only unscaled "
                         "rotary embeddings)")
    hidden = self.require("llama.embedding_length")
    heads = self.require("llama.attention.head_count")
    head_dim = self.field("llama.attention.key_length", hidden // heads)
    rotary_dims = self.field("llama.rope.dimension_count", head_dim)
    if rotary_dims != head_dim:
      raise WeightsError(f"{self.path}: rotary embeddings over {rotary_dims} of {head_dim} head "
                         "dimensions are not supported")
    if "token_embd.weight" not in self._tensors:
      raise WeightsError(f"{self.path}: missing tensor token_embd.weight")
    config = {
        "model_type": "llama",
        # The embedding's rows, not llama.vocab_size: the tensor is what the logits span.
        "vocab_size": int(self._tensors["token_embd.weight"].shape[-1]),
        "hidden_size": hidden,
        "intermediate_size": self.require("llama.feed_forward_length"),
        "num_hidden_layers": self.require("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": self.field("llama.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": self.field("llama.context_length", 2048),
        "rms_norm_eps": self.require("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": self.field("llama.rope.freq_base", 10000.0),
        # llama.cpp writes no output matrix when the model reuses its embedding.
        "tie_word_embeddings": "output.weight" not in self._tensors,
        "attention_bias": "blk.0.attn_q.bias" in self._tensors,
        "mlp_bias": "blk.0.ffn_gate.bias" in self._tensors,
        "bos_token_id": self.field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": self.field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": self.field("tokenizer.ggml.padding_token_id"),
    }
    return config

  def __getitem__(self, key: str) -> np.ndarray:
    tensor = self._tensors[self._index[key]]
    try:
      w = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except Exception as e:  # pylint: disable=broad-except
      raise WeightsError(f"{self.path}: tensor {tensor.name} could not be dequantised "
                         f"({first_line(e)})") from None
    w = np.asarray(w, np.float32)
    m = re.fullmatch(r"model\.layers\.\d+\.self_attn\.(q_proj|k_proj)\.(weight|bias)", key)
    if m:
      heads = self._heads[m.group(1)]
      if w.shape[0] % (2 * heads):
        raise WeightsError(f"{self.path}: tensor {tensor.name} has {w.shape[0]} rows, not a "
                           f"multiple of 2 x {heads} heads")
      w = unpermute_rotary(w, heads)
    return w

  def metadata(self) -> Dict[str, Any]:
    """Every metadata key -> its value: a str, a number, or a list of them (arrays)."""
    out = {}
    for key, f in self._reader.fields.items():
      kinds = list(f.types)
      if not kinds:
        continue
      if kinds[0] == self._gguf.GGUFValueType.ARRAY:
        if kinds[-1] == self._gguf.GGUFValueType.STRING:
          out[key] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        else:
          out[key] = [f.parts[i].tolist()[0] for i in f.data]
      else:
        out[key] = self.field(key)
    return out

  def tokenizer(self) -> Optional[Any]:
    """The tokenizer stored in the file (transformers builds it), or None if it has none.

    Building it parses the file's whole vocabulary again, which takes longer than loading
    the weights, so the built tokenizer is saved under `$RAG_JAX_CACHE/tokenizers/` (named
    by the file's path, size and mtime and transformers' version) and loaded from there
    next time.
    """
    if self.field("tokenizer.ggml.model") is None:
      return None
    # Lazy, as in rag_jax.weights.tokenizer: only building a tokenizer needs transformers.
    import transformers  # pylint: disable=import-outside-toplevel
    stat = self.path.stat()
    key = hashlib.sha256(f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|"
                         f"{transformers.__version__}".encode()).hexdigest()[:16]
    cached = assets.cache_dir() / "tokenizers" / f"{self.path.stem}-{key}"
    if cached.is_dir():
      return transformers.AutoTokenizer.from_pretrained(str(cached))
    try:
      with _metadata_reader_without_torch(self) as shimmed:
        if shimmed:  # AutoTokenizer would read the file's config through torch too
          tokenizer = transformers.PreTrainedTokenizerFast(gguf_file=self.path.name,
                                                           name_or_path=str(self.path.parent))
        else:
          tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.path.parent),
                                                                 gguf_file=self.path.name)
    except Exception as e:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
      raise WeightsError(f"{self.path}: no usable tokenizer ({first_line(e)})") from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    tokenizer.save_pretrained(str(partial))
    try:
      partial.rename(cached)  # atomic: a reader sees the whole directory or none
    except OSError:  # another process got there first; theirs is the same
      shutil.rmtree(partial, ignore_errors=True)
    return tokenizer


@contextlib.contextmanager
def _metadata_reader_without_torch(gguf: GGUFFile):
  """transformers builds a GGUF's tokenizer from `read_gguf_metadata`, which needs nothing but
  the file, in a module that imports torch for its tensors; rag_jax does not need torch. Where
  that module cannot be imported, this supplies its `read_gguf_metadata` from the `gguf`
  package's reading of the same file while the tokenizer is built (the metadata's keys and
  values, the tensor names), and removes it afterwards. Yields whether it did."""
  name = "transformers.integrations.gguf.reader"
  try:
    importlib.import_module(name)
  except ImportError:
    pass
  else:
    yield False
    return
  metadata, tensors = gguf.metadata(), tuple(gguf._tensors)  # pylint: disable=protected-access
  shim = types.ModuleType(name)
  shim.read_gguf_metadata = lambda path, *args, **kwargs: (metadata, tensors)
  sys.modules[name] = shim
  try:
    yield True
  finally:
    sys.modules.pop(name, None)


def find_gguf(path: pathlib.Path) -> Optional[pathlib.Path]:
  """`path` if it is a .gguf file; the one .gguf in a directory without config.json (an
  unpacked asset); else None."""
  if path.is_file() and path.suffix == ".gguf":
    return path
  if path.is_dir() and not (path / "config.json").exists():
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
      raise WeightsError(f"{path}: {len(found)} .gguf files; pass one of them")
    if found:
      return found[0]
  return None


def read(path: pathlib.Path) -> Tuple[Dict[str, Any], GGUFFile]:
  """A GGUF Llama -> (HF config dict, state dict under HF names)."""
  state = GGUFFile(path)
  return dict(state.config), state
