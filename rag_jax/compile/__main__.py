"""Ahead-of-time compilation of the RAG train step for a machine you do not have.

    python -m rag_jax.compile --config experiments/fever.py --topology v5e:4x4 \\
        --mesh data=8,model=2 --config.retrieval.dtype=bfloat16
    python -m rag_jax.compile --config experiments/fever.py --topology gpu:8xH100 --json

Compiles `rag_jax.train.step.train_step` (through `step.make_steps`) exactly as
`rag_jax.train` runs it (the config's model, optimizer, k, lengths and batch size; `device` retrieval over an index of `--passages` rows
on the mesh, with its pre-tokenized passages) for the target's devices, from shapes alone:
no weights, no data, no accelerator. It reports the compiled program's memory per device
(`compiled.memory_analysis()`), the device's memory and whether the step fits, and exits 0
whether it fits or not (2 for bad input). The idea of MaxText's `train_compile.py`.

Targets (`--topology`):
  TPU: JAX's topology names, `v5e:4x4`, `v5e:16x16`, `v4:2x2x4`, `v5p:2x2x2`, `v6e:4x4`, ...
    (`jax.experimental.topologies.get_topology_desc(platform="tpu")`). Needs libtpu
    (`pip install 'jax[tpu]==<the installed jax version>'`), which compiles on a machine
    without a TPU.
  GPU: `gpu:[HOSTSx]GPUSx<H100|H200|A100>`, e.g. `gpu:8xH100`, `gpu:2x8xH100`: the devices of
    `get_topology_desc(platform="cuda", topology=..., target_config=<the card's
    GpuTargetConfigProto>)`. Needs JAX's CUDA plugin (`pip install jax-cuda12-plugin
    jax-cuda12-pjrt` at the installed jax version; no CUDA libraries and no GPU are needed to
    compile). Without it the report says why nothing compiled and gives the per-device
    memory computed from the sharded shapes instead (params, optimizer state, batch and
    index exactly; activations as a labelled estimate).

The models' shapes come from the config's hub names (ARCHITECTURES: their HF config.json
fields), from a local checkpoint directory's config.json, or, for `model.tiny`, from
rag_jax.weights.tiny. `--mesh data=..,fsdp=..,model=..` overrides the config's `mesh`; `fsdp`
shards params only with `--config.fsdp=true`, as in training.
"""

import json
import os
import re
from typing import Any, Dict

from absl import flags
import jax
from ml_collections import config_flags

from rag_jax import cli
from rag_jax import sharding
from rag_jax.compile import report as report_lib
from rag_jax.compile import targets
from rag_jax.compile.targets import InputError

# The flags, defined when this module runs as the program (`define_flags`), so that importing
# it (tests, other tools) claims no flag names, `config` among them.
_FLAGS: Dict[str, Any] = {}


def define_flags() -> None:
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Training config, e.g. experiments/fever.py; fields override with "
      "--config.field=value (e.g. --config.retrieval.dtype=bfloat16).", lock_config=True)
  _FLAGS["topology"] = flags.DEFINE_string(
      "topology", None, "The target: a JAX TPU topology name (v5e:4x4, v5e:16x16, v4:2x2x4, "
      "v5p:2x2x2, ...) or a GPU mesh gpu:[HOSTSx]GPUSx<H100|H200|A100> (gpu:8xH100).")
  _FLAGS["mesh"] = flags.DEFINE_string(
      "mesh", None, "data=..,fsdp=..,model=.. (one may be -1); default: the config's mesh.")
  _FLAGS["batch_size"] = flags.DEFINE_integer(
      "batch-size", None, "Global batch; default: the config's.")
  _FLAGS["passages"] = flags.DEFINE_integer(
      "passages", report_lib.PSGS_W100, "Rows of the index on the mesh (default: the paper's "
      "21,015,300 Wikipedia passages).")
  _FLAGS["json"] = flags.DEFINE_boolean("json", False, "Print the report as one JSON line.")


def parse_mesh(text: str) -> Dict[str, int]:
  """'data=2,fsdp=-1' -> {"data": 2, "fsdp": -1}."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, eq, value = part.partition("=")
    if not eq or not re.fullmatch(r"-?\d+", value.strip()):
      raise InputError(f"--mesh {text}: expected NAME=SIZE,... such as data=8,model=2")
    if name.strip() not in sharding.MESH_AXES:
      raise InputError(f"--mesh {text}: unknown axis {name.strip()!r}; the axes are "
                       f"{', '.join(sharding.MESH_AXES)}")
    out[name.strip()] = int(value)
  if not out:
    raise InputError(f"--mesh {text!r}: expected NAME=SIZE,... such as data=8,model=2")
  return out


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])}", status=2)
  value = {name: holder.value for name, holder in _FLAGS.items()}
  with targets.captured_stderr():  # plugins found here log to stderr when they have no device
    jax.devices()
  config = cli.config(_FLAGS["config"], "experiments/fever.py")
  if not value["topology"]:
    cli.fail("--topology is required, e.g. --topology v5e:4x4 or --topology gpu:8xH100",
             status=2)
  try:
    mesh_shape = parse_mesh(value["mesh"]) if value["mesh"] else dict(config.mesh)
    batch_size = config.batch_size if value["batch_size"] is None else value["batch_size"]
    if batch_size < 1 or value["passages"] < 1:
      raise InputError("--batch-size and --passages must be positive")
    name = config_flags.get_config_filename(flags.FLAGS["config"]) or ""
    report = report_lib.compile_report(config, targets.target(value["topology"]), mesh_shape,
                                       batch_size,
                                       value["passages"], name)
  except InputError as e:
    cli.fail(str(e), status=2)
  print(json.dumps(report) if value["json"] else report_lib.table(report))


def _cpu_only() -> None:
  """This process compiles for another machine: its own accelerators (a TPU or GPU plugin
  that is installed but has no device here, which would warn or fail at start) stay unused
  unless JAX_PLATFORMS says otherwise."""
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  # libtpu takes /tmp/libtpu_lockfile for the process that drives the chips; this one only
  # compiles, so it may run beside a training job or another compile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


if __name__ == "__main__":
  _cpu_only()
  define_flags()
  cli.run(main)
