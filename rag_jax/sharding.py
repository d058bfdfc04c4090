"""Meshes, logical axis rules and NamedShardings: the one place the project builds them.

Every mesh has the three axes of MESH_AXES, in that order, size-1 axes included:

  data   pure data parallelism: each group holds whole params and its own rows of the batch;
  fsdp   the batch is split over it too, and (with `logical_rules(fsdp=True)`) the params'
         `embed` dimension, so that each device holds 1/fsdp of every big kernel;
  model  tensor parallelism over heads, mlp and vocab (size 1 unless asked for).

Models only name their axes (LOGICAL_AXES: `batch, docs, length, layers, embed, embed_out,
heads, kv, mlp, vocab`); `logical_rules` maps those names onto the mesh and `shardings_for`
turns an abstract param or train-state tree into NamedShardings:

    mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
    rules = sharding.logical_rules(fsdp=True)
    abstract = jax.eval_shape(init_fn, rng)                  # leaves may be nn.Partitioned
    shardings = sharding.shardings_for(mesh, abstract, rules)  # the unboxed tree's structure
    state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(rng)
    with sharding.axis_rules(mesh, rules):                   # activations' logical constraints
      loss = jax.jit(loss_fn)(state, batch)

The retrieval index is split by rows over `index_axes(mesh)` (all of MESH_AXES) and queries
over `batch_sharding(mesh)`; see `rag_jax.index.exact.ExactSearch`.
"""

import contextlib
import math
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
DATA_AXES = ("data", "fsdp")  # the batch is split over both

MeshAxes = Union[None, str, Tuple[str, ...]]
Rules = Tuple[Tuple[str, MeshAxes], ...]

# The logical axis names that rag_jax.models use, each with a rule in `logical_rules`;
# a name outside this set in a param tree is an error in `shardings_for`.
LOGICAL_AXES = ("batch", "docs", "length", "layers", "embed", "embed_out", "heads", "kv", "mlp",
                "vocab")


def make_mesh(shape: Optional[Mapping[str, int]] = None,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A mesh with axes MESH_AXES over `devices`.

  Args:
    shape: {"data": int, "fsdp": int, "model": int} (a mapping or an ml_collections
      ConfigDict); missing axes are 1, and at most one -1 takes the devices left over.
      Default {"data": -1}: all devices data parallel.
    devices: default `jax.devices()` (all processes' devices in a multi-host job).
  Returns:
    A Mesh of shape (data, fsdp, model), the devices ordered by `jax.make_mesh` so that
    neighbouring ranks of the last axes are close on TPU / GPU. Its axis types are Auto,
    not jax.make_mesh's default Explicit (under which every jnp op carries shardings in its
    types): the models' logical constraints and jit's in / out shardings place the arrays.
  Raises:
    ValueError: an unknown axis, a size that is not a positive int or -1, more than one -1,
      or sizes whose product does not match (or, with -1, divide) the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = _mesh_sizes({"data": -1} if shape is None else shape, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(sizes, MESH_AXES, auto, devices=devices)
  except (ValueError, NotImplementedError):
    # jax finds no layout for some device sets (a subset of a TPU slice, several slices);
    # the sizes were checked above, so the given order is the one thing left to lose.
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def _mesh_sizes(shape, count: int) -> Tuple[int, ...]:
  """{"data": 2, "fsdp": -1} and a device count -> sizes in MESH_AXES order, checked."""
  given = dict(shape.to_dict() if hasattr(shape, "to_dict") else shape)
  where = f"mesh shape {given} for {count} devices"
  unknown = sorted(set(given) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"{where}: unknown axes {unknown}; the axes are {MESH_AXES}")
  sizes = [given.get(axis, 1) for axis in MESH_AXES]
  if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not (s == -1 or s >= 1)
         for s in sizes):
    raise ValueError(f"{where}: sizes must be positive integers or -1")
  if sizes.count(-1) > 1:
    raise ValueError(f"{where}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if count % known:
      raise ValueError(f"{where}: the other axes' product {known} does not divide {count}")
    sizes[sizes.index(-1)] = count // known
  elif known != count:
    raise ValueError(f"{where}: the axes' product {known} is not the device count {count}")
  return tuple(int(s) for s in sizes)


def logical_rules(fsdp: bool = False) -> Rules:
  """Logical axis name -> mesh axes, for `flax.linen.logical_to_mesh_*` and `shardings_for`.

  `batch` goes over DATA_AXES; `heads`, `mlp` and `vocab` over "model" (tensor parallel);
  `embed` over "fsdp" when `fsdp`, else replicated; `kv` (the head dim, which shares kernels
  with `heads`), `docs`, `length`, `layers` (the stacked dimension of scanned layers) and
  `embed_out` (pooled / projected vectors) are replicated.
  Flax gives each mesh axis to the first rule that claims it within an array, so `batch`
  comes first: an activation [batch, length, embed] keeps fsdp for its rows, and only params
  (which have no batch dimension) put `embed` over fsdp.

  Args:
    fsdp: split the params' `embed` dimension over the "fsdp" axis.
  Returns:
    ((name, mesh axes or None), ...) with a rule for every name in LOGICAL_AXES.
  """
  return (
      ("batch", DATA_AXES),
      ("docs", None),
      ("length", None),
      ("layers", None),
      ("heads", "model"),
      ("kv", None),
      ("mlp", "model"),
      ("vocab", "model"),
      ("embed", "fsdp" if fsdp else None),
      ("embed_out", None),
  )


def axes_size(mesh: Mesh, axes: MeshAxes) -> int:
  """How many shards mesh axes (None, a name or a tuple of names) split a dimension into."""
  if axes is None:
    return 1
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def spec_for(mesh: Mesh, shape: Sequence[int], names: Sequence[Optional[str]],
             rules: Rules) -> P:
  """The PartitionSpec of one array from its logical axis names.

  Args:
    mesh: the mesh the spec is for.
    shape: the array's shape.
    names: one logical name (or None, replicated) per dimension.
    rules: from `logical_rules`.
  Returns:
    The spec, with every dimension whose size the mapped mesh axes do not divide
    replicated instead (a vocab of 101 over a model axis of 8).
  Raises:
    ValueError: a name with no rule in `rules` (a typo would otherwise replicate silently),
      or as many names as dimensions missing.
  """
  if len(names) != len(shape):
    raise ValueError(f"{len(names)} axis names {tuple(names)} for an array of shape "
                     f"{tuple(shape)}")
  known = {name for name, _ in rules}
  unknown = [n for n in names if n is not None and n not in known]
  if unknown:
    raise ValueError(f"logical axes {unknown} of an array of shape {tuple(shape)} have no "
                     f"sharding rule; rules exist for {sorted(known)}")
  spec = nn.logical_to_mesh_axes(tuple(names), rules)
  return P(*(axes if size % axes_size(mesh, axes) == 0 else None
             for size, axes in zip(shape, spec)))


def shardings_for(mesh: Mesh, abstract_tree: Any, rules: Rules) -> Any:
  """NamedShardings for every leaf of an (abstract) param or train-state tree.

  Args:
    mesh: the mesh.
    abstract_tree: e.g. `jax.eval_shape(init_fn, ...)`; leaves are `nn.Partitioned` boxes
      (logical names, as the models' `with_logical_partitioning` makes them) or arrays /
      ShapeDtypeStructs / scalars without names, which are replicated.
    rules: from `logical_rules`.
  Returns:
    A tree of NamedSharding with the structure of `nn.meta.unbox(abstract_tree)`.
  """
  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      shape = leaf.value.shape
      return NamedSharding(mesh, spec_for(mesh, shape, leaf.names, rules))
    return replicated(mesh)

  return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def logical_names(abstract_tree: Any) -> frozenset:
  """Every logical axis name (not None) of the nn.Partitioned boxes in a tree."""
  boxes = jax.tree.leaves(abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return frozenset(n for b in boxes if isinstance(b, nn.Partitioned)
                   for n in b.names if n is not None)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Arrays [batch, ...] of `ndim` dimensions with their rows split over DATA_AXES."""
  return NamedSharding(mesh, P(DATA_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def index_axes(mesh: Mesh) -> Tuple[str, ...]:
  """The mesh axes the retrieval index's passages are split over: all of them, so that
  every device holds 1/size of the rows (the mesh's axes, MESH_AXES for `make_mesh`)."""
  return tuple(mesh.axis_names)


def data_size(mesh: Mesh) -> int:
  """Into how many shards `batch_sharding` splits the rows; a global batch must be a
  multiple of it."""
  return axes_size(mesh, DATA_AXES)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Within it, the models' `nn.with_logical_constraint` calls constrain activations on
  `mesh` (outside any mesh context they do nothing); trace (call) jitted functions in it."""
  set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh
  with set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
