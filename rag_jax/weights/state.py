"""State dicts (HF name -> numpy array) read from checkpoint files, and converted to our params.

`read_state_dict` reads `model.safetensors` (or a sharded `model.safetensors.index.json`)
lazily, tensor by tensor, or a legacy `pytorch_model.bin` through
`torch.load(weights_only=True)` when torch is installed. `convert_state_dict` then looks up
every parameter of our module under its HF name (the architecture's name map) and reshapes it
to our layout (`nn.Linear` weights [out, in] become kernels [in, ...]); a missing parameter,
one whose shape does not fit, or a parameter of the checkpoint that our module has no place
for is a `WeightsError` naming it: a checkpoint never loads half-right.
"""

import json
import pathlib
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open

from rag_jax.errors import first_line
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import read_json

Params = Dict[str, Any]
StateDict = Mapping[str, np.ndarray]


class KeyedState(Mapping[str, np.ndarray]):
  """A read-only state dict whose keys are those of `self._index`; subclasses say how a
  tensor is read (safetensors, a renaming, a GGUF file)."""
  _index: Dict[str, Any]

  def __iter__(self):
    return iter(self._index)

  def __len__(self) -> int:
    return len(self._index)

  def __contains__(self, key) -> bool:
    return key in self._index


class LazySafetensors(KeyedState):
  """The tensors of safetensors files, read one at a time on access (memory stays at one
  tensor beyond what the caller keeps)."""

  def __init__(self, files):
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
      raise WeightsError(f"{f}: unreadable tensor {key} ({first_line(e)})") from None

  @staticmethod
  def _read_bfloat16(f, key: str) -> np.ndarray:
    with open(f, "rb") as fh:
      header_len = int.from_bytes(fh.read(8), "little")
      entry = json.loads(fh.read(header_len))[key]
      if entry["dtype"] != "BF16":
        raise WeightsError(f"{f}: unsupported dtype {entry['dtype']} of tensor {key}")
      start, end = entry["data_offsets"]
      fh.seek(8 + header_len + start)
      raw = fh.read(end - start)
    return np.frombuffer(raw, ml_dtypes.bfloat16).reshape(entry["shape"]).astype(np.float32)


class RenamedState(KeyedState):
  """A state dict seen under other names ({new name: old name}), still read lazily."""

  def __init__(self, state: StateDict, names: Mapping[str, str]):
    self._state, self._index = state, dict(names)

  def __getitem__(self, key: str) -> np.ndarray:
    return self._state[self._index[key]]


def read_state_dict(directory: pathlib.Path) -> StateDict:
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
    return read_torch_bin(directory / "pytorch_model.bin")
  raise WeightsError(f"{directory}: missing file: no model.safetensors, "
                     "model.safetensors.index.json or pytorch_model.bin")


def read_torch_bin(path: pathlib.Path) -> StateDict:
  """A legacy `pytorch_model.bin` as numpy arrays (floating tensors as float32), through
  `torch.load(weights_only=True)`: no pickled code runs."""
  try:
    # Lazy: torch is optional (the test extra); only a legacy .bin checkpoint needs it.
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise WeightsError(f"{path}: reading pytorch_model.bin needs torch; convert the checkpoint "
                       "to safetensors or install torch") from None
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{path}: unreadable torch checkpoint ({type(e).__name__}: "
                       f"{first_line(e)})") from None
  if not isinstance(state, dict):
    raise WeightsError(f"{path}: not a state dict (a {type(state).__name__})")
  out = {}
  for k, v in state.items():
    if not isinstance(v, torch.Tensor):
      raise WeightsError(f"{path}: entry {k} is a {type(v).__name__}, not a tensor")
    out[k] = v.detach().float().numpy() if v.is_floating_point() else v.numpy()
  return out


# ------------------------------------------------------------------------------------------
# What every architecture's name map shares.


def norm_names(leaf: str) -> Tuple[str, ...]:
  """LayerNorm leaf -> its HF names (current and pre-2019 TF-style)."""
  return ("weight", "gamma") if leaf == "scale" else ("bias", "beta")


def linear_names(leaf: str) -> Tuple[str, ...]:
  """Dense leaf (kernel, bias) -> its `nn.Linear` name."""
  return ("weight",) if leaf == "kernel" else ("bias",)


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


def convert_state_dict(state: StateDict, abstract_params: Params,
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


def abstract_params(module: nn.Module, *args, method=None) -> Params:
  """The shapes of `module`'s params (unboxed), from `module.init(rng, *args)`, computing
  nothing."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, method=method))
  return nn.meta.unbox(shapes["params"])


def find_prefix(state: StateDict, anchor: str, prefixes: Iterable[str], source: str) -> str:
  """The first of `prefixes` under which `state` has `anchor` (where a model sits inside a
  larger checkpoint)."""
  for p in prefixes:
    if p + anchor in state:
      return p
  raise WeightsError(f"{source}: missing parameter {anchor} (tried prefixes "
                     f"{', '.join(repr(p) for p in prefixes)})")
