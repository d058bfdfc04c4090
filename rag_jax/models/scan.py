"""A stack of identical layers as a loop or as one `flax.linen.scan` (`scan_layers=True`).

Unrolled, XLA compiles every layer of a 12- or 24-layer model separately: compile time and
program size grow with depth. Scanned (as big_vision and MaxText do), the layers run as one
`lax.scan` over ONE layer module whose params are stacked on a new leading axis: the layer is
compiled once. Its params carry the logical axis name LAYER_AXIS on that axis.

Param layouts of a stack named `layers` with N layers (BERT: `layers`; BART: `encoder_layers`
and `decoder_layers`):

  unscanned  {"layers_0": P, ..., "layers_{N-1}": P}   (HF weight loading writes this one)
  scanned    {"layers": P'}, every leaf of P' the N leaves of the layers stacked: [N, ...]

`stack_layers(params, module)` and `unstack_layers(params, module)` convert between them;
`module.layer_stacks` ({stack name: N}) says which stacks a model has. A training run loads
the unscanned weights, stacks them for the scanned train step and unstacks them for cached
decoding (BART's `init_cache` / `decode_step` run unscanned only).
"""

from typing import Any, Callable, List, Mapping, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rag_jax.models import layers

Array = jax.Array
Stack = Union[nn.Module, Sequence[nn.Module]]

LAYER_AXIS = "layers"  # the logical axis name of the stacked layer dimension


def make_stack(make: Callable[[str], nn.Module], name: str, length: int,
               scanned: bool) -> Stack:
  """The layer modules of a stack: one module `name` if scanned, else `name_0` .. `name_{N-1}`.

  Args:
    make: name -> a new layer module (called inside the parent's `setup` or compact method).
    name: the stack's name, its key in the param tree.
    length: N, the number of layers.
    scanned: build the one module that `apply_stack` scans.
  """
  return make(name) if scanned else [make(f"{name}_{i}") for i in range(length)]


def _checkpoint(fn: Callable, policy: str) -> Callable:
  """layers.remat for a scan body: XLA's scan already keeps the recomputation from being
  merged with the forward pass, so jax.checkpoint's own CSE barriers would only cost time."""
  if policy not in layers.REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; expected one of "
                     f"{list(layers.REMAT_POLICIES)}")
  if policy == "none":
    return fn
  return nn.checkpoint(fn, policy=layers.REMAT_POLICIES[policy], prevent_cse=False)


def apply_stack(fn: Callable[..., Array], stack: Stack, x: Array, *args: Any, remat: str,
                length: int) -> Array:
  """Runs x through every layer of a stack from `make_stack`: x = fn(layer, x, *args).

  Args:
    fn: (layer module, x, *args) -> new x of x's shape. Python values it closes over (such
      as `deterministic`) stay static: they are neither scanned nor traced.
    stack: a list of modules (run in a loop) or one module (scanned `length` times, its
      params stacked on a leading LAYER_AXIS axis, 'params' and 'dropout' rngs split per
      layer).
    x: the carry, e.g. hidden states [B, T, D].
    *args: the same for every layer (masks, encoder states): broadcast, not scanned.
    remat: a layers.REMAT_POLICIES name, applied to each layer (inside the scan body).
    length: N, the number of layers.
  Returns:
    x after the last layer.
  """
  if not isinstance(stack, nn.Module):
    run = layers.remat(fn, remat)
    for layer in stack:
      x = run(layer, x, *args)
    return x
  body = _checkpoint(lambda layer, x, *args: (fn(layer, x, *args), None), remat)
  scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast,) * len(args), length=length,
                    metadata_params={nn.PARTITION_NAME: LAYER_AXIS})
  x, _ = scanned(stack, x, *args)
  return x


def _stack_leaves(*leaves):
  """N leaves of one param -> [N, ...] (numpy stays numpy; a ShapeDtypeStruct stays one)."""
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype)
  if any(isinstance(leaf, jax.Array) for leaf in leaves):
    return jnp.stack(leaves)
  return np.stack(leaves)


def _unstack_leaf(leaf, length: int) -> List[Any]:
  """[N, ...] -> N leaves."""
  if leaf.shape[:1] != (length,):
    raise ValueError(f"a stacked param of shape {leaf.shape} has no leading axis of {length}")
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return [jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)] * length
  return [leaf[i] for i in range(length)]


def stack_layers(params: Mapping[str, Any], module: nn.Module) -> dict:
  """Unscanned params -> the layout of `module` with `scan_layers=True`.

  Args:
    params: the 'params' collection of a BertEncoder or Bart (unboxed), with the layers
      under `{stack}_{i}`; leaves numpy arrays, jax arrays (tracers too: this jits) or
      jax.ShapeDtypeStruct.
    module: the model (scanned or not): its `layer_stacks` name the stacks and their sizes.
  Returns:
    A new dict: each stack's `{stack}_{i}` replaced by `{stack}`, leaves [N, ...]; the other
    entries are the same objects.
  Raises:
    ValueError: a layer of a stack is missing, or a stack is already stacked.
  """
  out = dict(params)
  for name, length in module.layer_stacks.items():
    keys = [f"{name}_{i}" for i in range(length)]
    missing = [k for k in keys if k not in out]
    if missing or name in out:
      raise ValueError(f"stack_layers: expected unscanned params {keys[0]} .. {keys[-1]}; "
                       f"missing {missing}" + (f", and {name!r} is present" if name in out else ""))
    out[name] = jax.tree.map(_stack_leaves, *[out.pop(k) for k in keys])
  return out


def unstack_layers(params: Mapping[str, Any], module: nn.Module) -> dict:
  """Scanned params -> the unscanned layout (`scan_layers=False`: cached decoding, saving in
  the layout of rag_jax.weights). The inverse of `stack_layers`, exactly.

  Args:
    params: the 'params' collection of a BertEncoder or Bart with `scan_layers=True`.
    module: the model (scanned or not).
  Returns:
    A new dict with `{stack}` replaced by `{stack}_0` .. `{stack}_{N-1}`.
  Raises:
    ValueError: a stack is missing, or its leaves do not have N rows.
  """
  out = dict(params)
  for name, length in module.layer_stacks.items():
    if name not in out:
      raise ValueError(f"unstack_layers: expected scanned params {name!r}; got {sorted(out)}")
    leaves, treedef = jax.tree.flatten(out.pop(name))
    rows = [_unstack_leaf(leaf, length) for leaf in leaves]
    for i in range(length):
      out[f"{name}_{i}"] = treedef.unflatten([r[i] for r in rows])
  return out
