"""rag_jax.compile: the train step compiled ahead of time for a TPU topology from shapes alone,
one-line errors for bad input, the fit arithmetic, and the estimate where nothing compiles."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from conftest import run_commands, subprocess_env
from experiments import fever
from rag_jax import sharding
from rag_jax.compile import __main__ as compile_main
from rag_jax.compile import architectures, targets
from rag_jax.compile import report as report_lib
from rag_jax.index import device as device_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _env():
  env = dict(subprocess_env(), ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  # The command as a user runs it: its own platform choice, and XLA's default optimisation
  # (the suite's -O0 is for its CPU programs, not the TPU compiler under test).
  env.pop("JAX_PLATFORMS", None)
  env.pop("XLA_FLAGS", None)
  return env


def _run(*args):
  return subprocess.run([sys.executable, "-m", "rag_jax.compile", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install 'jax[tpu]', the test "
                    "extra)")
@pytest.mark.slow
def test_tiny_step_compiles_for_a_tpu_topology_without_a_tpu():
  proc = _run("--config", "experiments/fever.py:tiny", "--topology", "v5e:2x2",
              "--passages", "1000", "--json")
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["compiled"] is True and report["reason"] is None, report
  assert report["platform"] == "tpu" and report["devices"] == 4
  assert report["device_kind"] == "TPU v5 lite"
  assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
  memory = report["memory_gib"]
  assert memory["total"] > 0 and memory["argument"] > 0 and memory["temp"] > 0
  # The donated state comes back in place of the old one.
  assert 0 < memory["alias"] <= memory["output"]
  # HBM as the compiler says it (v5e: 15.75 of its 16 GiB).
  assert 15 < report["hbm_gib"] <= 16 and report["fits"] is True
  assert report["fits_by"] == "compiled memory_analysis"
  # Arguments: params + Adam moments + step/rng, the batch and 1/4 of the index per device
  # (TPU layouts pad small arrays: at least that much; GiB are rounded to 3 decimals).
  est = report["estimate_gib"]
  stored = est["params"] + est["opt_state"] + est["batch"] + est["index"]
  assert stored - 2e-3 <= memory["argument"] <= 4 * stored + 2e-3


BAD = [
    (("--topology", "v5e:bogus"), "error: --topology v5e:bogus: "),
    (("--topology", "nonsense"), "error: --topology nonsense: "),
    (("--topology", "gpu:8xK80"), "error: --topology gpu:8xK80: unknown GPU 'K80'"),
    (("--topology", "gpu:8xH100", "--mesh", "data=3"), "error: mesh shape {'data': 3} for 8"),
    (("--topology", "gpu:8xH100", "--mesh", "dp=8"), "error: --mesh dp=8: unknown axis 'dp'"),
    (("--topology", "gpu:8xH100", "--config.model.generator=acme/unknown-lm"),
     "error: unknown generator architecture 'acme/unknown-lm'"),
]


@pytest.fixture(scope="module")
def bad_runs():
  """Every case of BAD through `python -m rag_jax.compile`, each its own process."""
  runs = run_commands("rag_jax.compile", [("--config", "experiments/fever.py", *args)
                                          for args, _ in BAD], env=_env())
  return {args: run for (args, _), run in zip(BAD, runs)}


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line_with_status_2(bad_runs, args, message):
  proc = bad_runs[args]
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(message), lines[0]
  assert proc.stdout == ""


def test_memory_total_and_fit():
  stats = types.SimpleNamespace(argument_size_in_bytes=10 * targets.GIB,
                                output_size_in_bytes=4 * targets.GIB,
                                alias_size_in_bytes=4 * targets.GIB,
                                temp_size_in_bytes=3 * targets.GIB,
                                generated_code_size_in_bytes=targets.GIB // 2)
  m = report_lib.memory(stats)
  assert m["total"] == int(13.5 * targets.GIB)
  assert report_lib.fits(m["total"], 16 * targets.GIB) is True
  assert report_lib.fits(m["total"], int(13.4 * targets.GIB)) is False
  assert report_lib.fits(m["total"], 16 * targets.GIB, usable_fraction=0.75) is False  # 12 GiB usable
  assert report_lib.fits(m["total"], None) is None
  assert report_lib.fits(m["total"], 13.5 * targets.GIB) is True  # exactly full still fits
  # XLA:TPU's out-of-memory messages, in both forms it uses.
  oom = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (2.00T) exceeds available HBM (15.75G).")
  assert targets.hbm_capacity(oom) == int(15.75 * targets.GIB) and targets.hbm_needed(oom) == 2 * 2**40
  old = "Ran out of memory in memory space hbm. Used 20.50G of 15.75G hbm. Exceeded by 4.75G."
  assert targets.hbm_needed(old) == int(20.5 * targets.GIB)
  assert targets.hbm_capacity(old) == int(15.75 * targets.GIB)
  assert targets.hbm_capacity("INTERNAL: something else") is None


def _tiny_config(**overrides):
  config = fever.get_config("tiny")
  with config.unlocked():
    config.update(overrides)
  return config


def _gpu_without_plugin(count=8):
  return targets.Target("gpu:8xH100", "gpu", count, "NVIDIA H100 80GB HBM3",
                        targets.GPUS["H100"]["memory"], 0.75, devices=None, reason="no CUDA plugin")


def test_without_devices_the_report_is_the_sharded_shapes_and_an_estimate():
  config = _tiny_config()
  report = report_lib.compile_report(config, _gpu_without_plugin(), {"data": -1}, 8, 1000)
  assert report["compiled"] is False and report["reason"] == "no CUDA plugin"
  assert report["memory_gib"] is None and report["fits_by"] == "estimate"
  assert report["mesh"] == {"data": 8, "fsdp": 1, "model": 1}
  est = report["estimate_gib"]
  # Replicated float32 params, two Adam moments; the index split by rows over 8 devices:
  # 125 rows of a 32-d float32 vector, 46 passage tokens and a length each.
  assert est["params"] == pytest.approx(report["params"] * 4 / targets.GIB, abs=1e-3)
  assert est["opt_state"] == pytest.approx(2 * est["params"], abs=1e-3)
  assert est["index"] == pytest.approx(125 * (32 * 4 + 46 * 4 + 4) / targets.GIB, abs=1e-3)
  assert est["activations_estimate"] > 0
  assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"),
                                       abs=1e-2)
  assert report["fits"] is True and report["usable_gib"] == pytest.approx(
      0.75 * report["hbm_gib"], abs=1e-3)
  text = report_lib.table(report)
  assert "compiled: no: no CUDA plugin" in text and "ESTIMATE" in text and "fits: yes" in text
  # fsdp shards the params' embed dimension: less per device.
  sharded = report_lib.compile_report(_tiny_config(fsdp=True), _gpu_without_plugin(), {"fsdp": 8}, 8,
                                      1000)
  assert sharded["estimate_gib"]["params"] < est["params"]


def test_a_batch_that_does_not_split_over_the_mesh_names_the_fixes():
  with pytest.raises(targets.InputError, match=r"batch size 8 does not split over the 16 data "
                     r"shards .* --batch-size .* --mesh data=8,model=2"):
    report_lib.compile_report(_tiny_config(), _gpu_without_plugin(16), {"data": -1}, 8, 1000)


def test_known_architectures_and_the_gpu_target_spec():
  q, g = architectures.architectures(fever.get_config())
  assert (q["hidden_size"], q["num_hidden_layers"], q["vocab_size"]) == (768, 12, 30522)
  assert (g["d_model"], g["encoder_layers"], g["decoder_layers"], g["vocab_size"],
          g["encoder_ffn_dim"], g["encoder_attention_heads"]) == (1024, 12, 12, 50265, 4096, 16)
  config = fever.get_config()
  with config.unlocked():
    config.model.rag_checkpoint = "facebook/rag-token-nq"
  assert architectures.architectures(config) == (q, g)
  with pytest.raises(targets.InputError, match="unknown question encoder architecture 'x/y'"):
    with config.unlocked():
      config.model.rag_checkpoint, config.model.question_encoder = "", "x/y"
    architectures.architectures(config)
  text = targets.gpu_target_config(targets.GPUS["H100"])
  assert "core_count: 132" in text and "major: 9 minor: 0" in text
  assert compile_main.parse_mesh("data=2, fsdp=-1") == {"data": 2, "fsdp": -1}
  assert jax.default_backend() == "cpu"  # nothing here touched an accelerator


def test_abstract_device_index_lowers_to_the_same_program_as_a_placed_one():
  """DeviceIndex.abstract: create's shapes, shardings and search, with no rows behind it."""
  mesh = sharding.make_mesh({"data": -1})
  rng = np.random.default_rng(0)
  real = device_lib.DeviceIndex.create(mesh, rng.standard_normal((37, 8)).astype(np.float32),
                                       rng.integers(0, 9, (37, 5)).astype(np.int32),
                                       np.full(37, 5, np.int32), dtype="bfloat16")
  abstract = device_lib.DeviceIndex.abstract(mesh, 37, 8, 5, dtype="bfloat16")
  for got, want in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
    assert isinstance(got, jax.ShapeDtypeStruct)
    assert (got.shape, got.dtype, got.sharding) == (want.shape, want.dtype, want.sharding)
  assert abstract.rows_per_shard == real.rows_per_shard and abstract.axes == real.axes

  def retrieve(index, q):
    _, ids = index.search(q, 3)
    return index.gather(ids)
  q = jax.ShapeDtypeStruct((4, 8), np.float32)
  lowered = [jax.jit(retrieve).lower(index, q).as_text() for index in (abstract, real)]
  assert lowered[0] == lowered[1]
