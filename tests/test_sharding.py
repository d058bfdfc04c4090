"""rag_jax.sharding: mesh shapes, logical axis rules over the models' params, and the index
and encoder on a (data, fsdp, model) mesh of 8 fake CPU devices."""

import json
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from conftest import subprocess_env
from rag_jax import sharding
from rag_jax.models import Bart, BartConfig, BertConfig, BertEncoder

# Tiny models as in tests/test_bert.py and tests/test_bart.py, with the pooler and a
# projection (the "embed_out" axis) and an untied LM head (the "vocab" kernel).
BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, pooling="pooler",
            projection_dim=16)
BART = dict(vocab_size=101, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
            decoder_ffn_dim=41, max_position_embeddings=64, tie_word_embeddings=False)
MODELS = pathlib.Path(sharding.__file__).parent / "models"


def _abstract_params(name: str):
  """eval_shape of a tiny model's init: {"params": boxed tree of ShapeDtypeStructs}."""
  ids = np.ones((2, 8), np.int32)
  if name == "bert":
    module, args = BertEncoder(BertConfig(**BERT)), (ids, ids)
  else:
    module, args = Bart(BartConfig(**BART)), (ids, ids, ids)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))


# ------------------------------------------------------------------------------------------
# In this process (one device).


@pytest.mark.parametrize("shape, sizes", [
    (None, (8, 1, 1)),
    ({"data": 2, "fsdp": -1}, (2, 4, 1)),
    ({"fsdp": 4, "data": 2}, (2, 4, 1)),
    ({"model": 2, "data": -1}, (4, 1, 2)),
    ({"data": 2, "fsdp": 2, "model": 2}, (2, 2, 2)),
    (ml_collections.ConfigDict({"data": -1, "fsdp": 2}), (4, 2, 1)),
])
def test_mesh_sizes_fill_the_devices(shape, sizes):
  assert sharding._mesh_sizes({"data": -1} if shape is None else shape, 8) == sizes


@pytest.mark.parametrize("shape, message", [
    ({"data": 3}, r"mesh shape \{'data': 3\} for 8 devices: the axes' product 3 is not"),
    ({"data": 3, "fsdp": -1}, "the other axes' product 3 does not divide 8"),
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"tensor": 2}, r"unknown axes \['tensor'\]"),
    ({"data": 0}, "positive integers or -1"),
    ({"data": 2.0, "fsdp": 4}, "positive integers or -1"),
])
def test_mesh_shape_errors_are_one_line(shape, message):
  with pytest.raises(ValueError, match=message) as error:
    sharding.make_mesh(shape, jax.devices() * 8)
  assert "\n" not in str(error.value)


def test_one_device_mesh_and_its_shardings():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == sharding.MESH_AXES and mesh.devices.shape == (1, 1, 1)
  with pytest.raises(ValueError, match="for 1 devices"):
    sharding.make_mesh({"data": 2})
  assert sharding.batch_sharding(mesh, 3).spec == P(sharding.DATA_AXES, None, None)
  assert sharding.replicated(mesh).spec == P()
  assert sharding.index_axes(mesh) == sharding.MESH_AXES
  assert sharding.data_size(mesh) == 1


def _constraint_names():
  """The logical names of every `with_logical_constraint(x, ("a", "b"))` in rag_jax/models."""
  names = set()
  for path in MODELS.glob("*.py"):
    for axes in re.findall(r"with_logical_constraint\([^,]+,\s*\(([^)]*)\)", path.read_text()):
      names.update(re.findall(r"\"(\w+)\"", axes))
  return names


@pytest.mark.parametrize("fsdp", [False, True])
def test_every_logical_axis_name_has_a_rule(fsdp):
  rules = sharding.logical_rules(fsdp)
  named = {name for name, _ in rules}
  assert named == set(sharding.LOGICAL_AXES)
  used = _constraint_names() | sharding.logical_names(_abstract_params("bert")) | (
      sharding.logical_names(_abstract_params("bart")))
  assert {"batch", "length", "embed", "embed_out", "heads", "kv", "mlp", "vocab"} <= used
  assert used <= named, used - named


def test_spec_for_replicates_what_does_not_divide():
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  rules = sharding.logical_rules(fsdp=True)
  assert sharding.spec_for(mesh, (101, 32), ("vocab", "embed"), rules) == P(None, "fsdp")
  assert sharding.spec_for(mesh, (32, 4, 8), ("embed", "heads", "kv"), rules) == P(
      "fsdp", "model", None)
  # An activation: the batch takes data and fsdp, so embed (asking for fsdp) stays whole.
  assert sharding.spec_for(mesh, (8, 5, 32), ("batch", "length", "embed"), rules) == P(
      ("data", "fsdp"), None, None)
  assert sharding.spec_for(mesh, (6, 5), ("batch", None), rules) == P(None, None)
  with pytest.raises(ValueError, match=r"logical axes \['embd'\] .* have no sharding rule"):
    sharding.spec_for(mesh, (32,), ("embd",), rules)


def test_shardings_for_has_the_unboxed_structure():
  abstract = _abstract_params("bert")
  mesh = sharding.make_mesh()
  shardings = sharding.shardings_for(mesh, {"step": 0, **abstract}, sharding.logical_rules())
  want = jax.tree.structure({"step": 0, **nn.meta.unbox(abstract)})
  assert jax.tree.structure(shardings) == want
  assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings))


# ------------------------------------------------------------------------------------------
# 8 fake CPU devices, in one fresh interpreter (jax fixes the device count when it starts).

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import linen as nn
    from rag_jax import sharding
    from rag_jax.encoder import TextEncoder
    from rag_jax.index import exact
    from rag_jax.models import Bart, BartConfig, BertConfig, BertEncoder

    bert_config, bart_config = (json.loads(a) for a in sys.argv[1:3])
    out = {"devices": len(jax.devices())}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, (8, 12)).astype(np.int32)
    mask = (np.arange(12) < rng.integers(1, 13, (8, 1))).astype(np.int32)

    meshes = {"2x4": sharding.make_mesh({"data": 2, "fsdp": -1}),
              "2x2x2": sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2})}
    out["mesh_shapes"] = {k: list(m.devices.shape) for k, m in meshes.items()}
    out["default_mesh"] = list(sharding.make_mesh().devices.shape)

    models = {"bert": (BertEncoder(BertConfig(**bert_config)), (ids, mask)),
              "bart": (Bart(BartConfig(**bart_config)), (ids, mask, ids[:, :7]))}
    spec_list = lambda spec: [list(a) if isinstance(a, tuple) else a for a in spec]
    out["models"] = {}
    for name, (module, args) in models.items():
      init = lambda key: module.init(key, *args)
      abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
      apply = jax.jit(module.apply)
      values = jax.jit(lambda key: nn.meta.unbox(init(key)))(jax.random.PRNGKey(0))
      want = apply(values, *args)
      boxes = dict(jax.tree_util.tree_flatten_with_path(
          abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0])
      for mesh_name, mesh in meshes.items():
        for fsdp in (False, True):
          rules = sharding.logical_rules(fsdp)
          shardings = sharding.shardings_for(mesh, abstract, rules)
          # Placed as training places them (setup: device_put); on the 3-axis FSDP mesh,
          # made in place by the sharded init of rag_jax.sharding's docstring instead.
          if mesh_name == "2x2x2" and fsdp:
            params = jax.jit(lambda key: nn.meta.unbox(init(key)), out_shardings=shardings)(
                jax.random.PRNGKey(0))
          else:
            params = jax.device_put(values, shardings)
          inputs = jax.device_put(args, sharding.batch_sharding(mesh, 2))
          with sharding.axis_rules(mesh, rules):
            got = apply(params, *inputs)
          leaves = {}
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            leaves[jax.tree_util.keystr(path)] = {
                "names": list(boxes[path].names), "shape": list(x.shape),
                "spec": spec_list(x.sharding.spec),
                "shard": list(x.addressable_shards[0].data.shape)}
          out["models"][f"{name}/{mesh_name}/{fsdp}"] = {
              "same_structure": jax.tree.structure(shardings) == jax.tree.structure(params),
              "error": max(float(jnp.max(jnp.abs(a - b)))
                           for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))),
              "params": leaves}

    # The index split over every device of a (data, fsdp, model) mesh, against one device.
    mesh = meshes["2x4"]
    emb = rng.standard_normal((1003, 16)).astype(np.float32)
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    one = exact.ExactSearch(emb, chunk_size=50).search(queries, 10)
    out["search"] = {"one": [a.tolist() for a in one]}
    for label, axes in (("all", sharding.index_axes(mesh)), ("default", "data")):
      index = exact.ExactSearch(emb, chunk_size=50, mesh=mesh, axis_name=axes)
      scores, found = index.search(queries, 10)
      out["search"][label] = {"shards": index.num_shards, "rows": index.rows_per_shard,
                              "scores": scores.tolist(), "ids": found.tolist(),
                              "params": index.params()}
    index = exact.ExactSearch(emb, chunk_size=50, mesh=mesh, axis_name=sharding.index_axes(mesh))
    step = jax.jit(lambda q, arrays: index.top_k(2.0 * q, arrays, 10))
    scores, found = step(jax.device_put(queries / 2, sharding.batch_sharding(mesh, 2)),
                         index.device_arrays)
    out["search"]["in_jit"] = {"scores": np.asarray(scores).tolist(),
                               "ids": np.asarray(found).tolist(), "dtype": str(found.dtype)}
    # Shard s holds rows [s * rows_per_shard, ...): the first chunk's block on shard s
    # starts with embedding row s * rows_per_shard.
    first = index.device_arrays[0]
    out["search"]["layout"] = all(
        np.array_equal(np.asarray(first)[s * 50], emb[s * index.rows_per_shard])
        for s in range(8) if s * index.rows_per_shard < len(emb))
    rebuilt = exact.ExactSearch(emb, mesh=mesh, **json.loads(json.dumps(index.params())))
    out["search"]["rebuilt_shards"] = rebuilt.num_shards

    # The text encoder, data parallel over a mesh.
    bert = models["bert"][0]
    params = nn.meta.unbox(bert.init(jax.random.PRNGKey(1), ids, mask))["params"]
    encoder = TextEncoder(bert, params, tokenizer=None, batch_size=6)
    want = encoder.encode_tokens(ids, mask)
    out["encoder"] = {}
    for label, split in (("default", encoder.data_parallel()),
                         ("2x4", encoder.data_parallel(mesh=mesh))):
      out["encoder"][label] = {
          "mesh": list(split.data_sharding.mesh.devices.shape),
          "spec": spec_list(split.data_sharding.spec), "batch": split.batch_size,
          "same": split.data_parallel(mesh=split.data_sharding.mesh) is split,
          "error": float(np.max(np.abs(split.encode_tokens(ids, mask) - want)))}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight():
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(BERT), json.dumps(BART)],
                        env=subprocess_env(devices=8), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8
  return out


@pytest.mark.slow
def test_make_mesh_on_eight_devices(eight):
  assert eight["mesh_shapes"] == {"2x4": [2, 4, 1], "2x2x2": [2, 2, 2]}
  assert eight["default_mesh"] == [8, 1, 1]


@pytest.mark.parametrize("model", ["bert", "bart"])
@pytest.mark.parametrize("mesh", ["2x4", "2x2x2"])
@pytest.mark.parametrize("fsdp", [False, True])
@pytest.mark.slow
def test_sharded_params_give_the_one_device_outputs(eight, model, mesh, fsdp):
  got = eight["models"][f"{model}/{mesh}/{fsdp}"]
  assert got["same_structure"]
  assert got["error"] < 1e-5
  sizes = dict(zip(sharding.MESH_AXES, eight["mesh_shapes"][mesh]))
  for path, p in got["params"].items():
    for dim, (name, size, spec, shard) in enumerate(zip(p["names"], p["shape"], p["spec"],
                                                        p["shard"])):
      want = {"embed": "fsdp" if fsdp else None, "heads": "model", "mlp": "model",
              "vocab": "model"}.get(name)
      if want is not None and size % sizes[want]:  # e.g. vocab 101 over model 2
        want = None
      if want is not None and sizes[want] == 1:  # a size-1 axis may be named or not
        assert shard == size, (path, dim)
        continue
      assert spec == want, (path, dim, p)
      assert shard == (size // sizes[want] if want else size), (path, dim, p)


@pytest.mark.slow
def test_fsdp_splits_every_big_kernel(eight):
  params = eight["models"]["bert/2x4/True"]["params"]
  kernels = {k: p for k, p in params.items() if re.search(r"'(kernel|embedding)'", k)}
  # Every kernel and embedding table of a BERT has a hidden-size (embed) side: each device
  # holds a quarter of each.
  assert all("fsdp" in p["spec"] for p in kernels.values())
  assert all(np.prod(p["shard"]) * 4 == np.prod(p["shape"]) for p in kernels.values())
  assert any("word_embeddings" in k for k in kernels) and any("projection" in k for k in kernels)


@pytest.mark.slow
def test_index_over_all_mesh_axes_equals_one_device(eight):
  result = eight["search"]
  one_scores, one_ids = (np.array(a) for a in result["one"])
  assert result["all"]["shards"] == 8 and result["all"]["rows"] == 126  # ceil(1003 / 8)
  assert result["default"]["shards"] == 2  # "data" only, as before
  for label in ("all", "default", "in_jit"):
    np.testing.assert_array_equal(np.array(result[label]["ids"]), one_ids, err_msg=label)
    np.testing.assert_allclose(np.array(result[label]["scores"]), one_scores, rtol=1e-5,
                               atol=1e-5, err_msg=label)
  assert result["in_jit"]["dtype"] == "int32"
  assert result["layout"]
  assert result["all"]["params"]["axis_name"] == ["data", "fsdp", "model"]
  assert result["rebuilt_shards"] == 8  # params() -> JSON -> the same split


@pytest.mark.slow
def test_encoder_data_parallel_over_a_mesh(eight):
  got = eight["encoder"]
  assert got["default"]["mesh"] == [8, 1, 1] and got["2x4"]["mesh"] == [2, 4, 1]
  for label in ("default", "2x4"):
    assert got[label]["spec"] == [["data", "fsdp"]]
    assert got[label]["batch"] == 8  # 6 rounded up to the 8 data shards
    assert got[label]["same"]
    assert got[label]["error"] < 1e-5, label
