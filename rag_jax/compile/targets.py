"""What `rag_jax.compile` compiles for: TPU topologies (through libtpu) and GPU meshes (through
JAX's CUDA plugin), their devices and memory, made on a machine that has neither.

The tables are the hardware's published figures (a GPU's as XLA's GpuTargetConfigProto
describes it: what the GPU compiler needs to compile without the card).
"""

import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
from typing import Optional

import jax
from jax.experimental import topologies
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

GIB = 2**30

# HBM per JAX device of libtpu's topologies, by device_kind: the fallback when the compiler
# does not say (`probe_hbm`). A device is a chip, except on v2, v3 and v4, where libtpu's
# topologies give one device per TensorCore (v4:2x2x1 has 8), each with half the chip's HBM.
TPU_HBM_GIB = {"TPU v2": 8, "TPU v3": 16, "TPU v4": 16, "TPU v5 lite": 16, "TPU v5": 96,
               "TPU v6 lite": 32}
# GPUs as XLA's GpuTargetConfigProto describes them (xla/backends/gpu/target_config/specs):
# what the GPU compiler needs to compile without the card.
GPUS = {
    "H100": dict(name="NVIDIA H100 80GB HBM3", memory=84942979072, cores=132, cc=(9, 0),
                 bandwidth=3352320000000, l2=52428800, clock=1.98, smem_core=233472,
                 smem_optin=232448, fpus=128),
    "H200": dict(name="NVIDIA H200 141GB HBM3e", memory=151397597184, cores=132, cc=(9, 0),
                 bandwidth=4800000000000, l2=52428800, clock=1.98, smem_core=233472,
                 smem_optin=232448, fpus=128),
    "A100": dict(name="NVIDIA A100-SXM4-80GB", memory=85100068864, cores=108, cc=(8, 0),
                 bandwidth=2039040000000, l2=41943040, clock=1.41, smem_core=167936,
                 smem_optin=166912, fpus=64),
}
GPU_MEM_FRACTION = 0.75  # JAX's default XLA_PYTHON_CLIENT_MEM_FRACTION
# XLA options of the compile, by platform. GPU: without a card XLA cannot autotune, and its
# Triton GEMM fusions may then fail to compile ("Couldn't find output tile sizes that satisfy
# hlo: ... dot"; benchmarks/RESULTS.md has the case); with them off the dots are cuBLAS
# calls, as on a card where the autotuner prefers cuBLAS.
COMPILER_OPTIONS = {"gpu": {"xla_gpu_enable_triton_gemm": False}}
CUDA_PLUGIN_REASON = (
    "JAX compiles for NVIDIA GPUs only through its CUDA PJRT plugin (jax-cuda12-plugin + "
    "jax-cuda12-pjrt, or the cuda13 ones), which is not installed here: `pip install "
    "jax-cuda12-plugin=={v} jax-cuda12-pjrt=={v}` (no GPU and no CUDA libraries are needed "
    "to compile)")


class InputError(ValueError):
  """Bad input (topology, mesh, config): a one-line error, exit status 2."""


@dataclasses.dataclass
class Target:
  """What to compile for: the devices (None when JAX cannot make them here, `reason` says
  why), their kind and memory."""
  name: str
  platform: str                    # "tpu" | "gpu"
  count: int
  device_kind: Optional[str]
  hbm_bytes: Optional[int]         # per device
  usable_fraction: float = 1.0     # of hbm_bytes that JAX lets the program use
  devices: Optional[list] = None
  reason: Optional[str] = None     # why there are no devices to compile for


@contextlib.contextmanager
def captured_stderr():
  """Collects what C++ libraries write to file descriptor 2 (libtpu's warnings about TPU
  hostnames on a machine without one, XLA's logs) instead of showing it; yields a list that
  holds the text afterwards."""
  out = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out.append(tmp.read().decode("utf-8", "replace"))


def jax_error_line(e: BaseException) -> str:
  """The informative line of a JAX runtime error (its status line, without the status code
  and source locations)."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  line = lines[0] if lines else type(e).__name__
  return re.sub(r"^[A-Z_]+: ", "", line)


def gpu_target_config(spec: dict) -> str:
  """A GpuTargetConfigProto (text format) for one of GPUS."""
  major, minor = spec["cc"]
  return "\n".join([
      "gpu_device_info {",
      "  threads_per_block_limit: 1024", "  threads_per_warp: 32",
      "  shared_memory_per_block: 49152", f"  shared_memory_per_core: {spec['smem_core']}",
      "  threads_per_core_limit: 2048", f"  core_count: {spec['cores']}",
      f"  fpus_per_core: {spec['fpus']}", "  block_dim_limit_x: 2147483647",
      "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
      f"  memory_bandwidth: {spec['bandwidth']}", f"  l2_cache_size: {spec['l2']}",
      f"  clock_rate_ghz: {spec['clock']}", f"  device_memory_size: {spec['memory']}",
      f"  shared_memory_per_block_optin: {spec['smem_optin']}",
      f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
      "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
      "}", 'platform_name: "CUDA"', "dnn_version_info { major: 9 minor: 1 }",
      f'device_description_str: "{spec["name"]}"', ""])


def _gpu_fraction() -> float:
  value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
  try:
    return float(value) if value else GPU_MEM_FRACTION
  except ValueError:
    return GPU_MEM_FRACTION


def gpu_target(name: str) -> Target:
  """`gpu:[HOSTSx]GPUSx<MODEL>` -> the target, with devices when the CUDA plugin is here."""
  match = re.fullmatch(r"gpu:(?:(\d+)x)?(?:(\d+)x)?([A-Za-z0-9]+)", name)
  if not match:
    raise InputError(f"--topology {name}: a GPU target is gpu:[HOSTSx]GPUSx<MODEL>, e.g. "
                     f"gpu:8xH100 or gpu:2x8xH100 (models: {', '.join(GPUS)})")
  first, second, model = match.groups()
  hosts, per_host = (int(first), int(second)) if second else (1, int(first or 1))
  spec = GPUS.get(model.upper())
  if spec is None:
    raise InputError(f"--topology {name}: unknown GPU {model!r}; known: {', '.join(GPUS)}")
  if hosts < 1 or per_host < 1:
    raise InputError(f"--topology {name}: host and GPU counts must be positive")
  target = Target(name, "gpu", hosts * per_host, spec["name"], spec["memory"],
                  _gpu_fraction())
  try:
    with captured_stderr():
      topo = topologies.get_topology_desc("", platform="cuda",
                                          topology=f"1x{hosts}x{per_host}",
                                          target_config=gpu_target_config(spec))
  except NotImplementedError:
    target.reason = CUDA_PLUGIN_REASON.format(v=jax.__version__)
    return target
  except Exception as e:  # pylint: disable=broad-except
    target.reason = f"the CUDA plugin made no topology: {jax_error_line(e)}"
    return target
  target.devices = list(topo.devices)
  return target


def tpu_target(name: str) -> Target:
  """A JAX TPU topology name -> its devices (libtpu compiles for them without a TPU)."""
  try:
    with captured_stderr():
      topo = topologies.get_topology_desc(platform="tpu", topology_name=name)
  except RuntimeError as e:
    if "not installed" not in str(e):
      raise InputError(f"--topology {name}: {jax_error_line(e)}") from None
    # No libtpu: the device count from the name alone, for the estimate.
    match = re.fullmatch(r"[A-Za-z0-9_ ]+[:=_]([0-9x]+)", name)
    if not match:
      raise InputError(f"--topology {name}: not a TPU topology name such as v5e:4x4, "
                       "v4:2x2x4 or v5p:2x2x2, nor a GPU target such as gpu:8xH100") from None
    reason = (f"libtpu is not installed, and JAX compiles for TPUs only through it: pip "
              f"install 'jax[tpu]=={jax.__version__}' (it needs no TPU)")
    return Target(name, "tpu", math.prod(int(x) for x in match.group(1).split("x")), None,
                  None, reason=reason)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"--topology {name}: {jax_error_line(e)} (expected a name such as "
                     "v5e:4x4, v4:2x2x4, v5p:2x2x2, or gpu:8xH100)") from None
  devices = list(topo.devices)
  kind = devices[0].device_kind
  hbm = probe_hbm(devices[0]) or (TPU_HBM_GIB[kind] * GIB if kind in TPU_HBM_GIB else None)
  return Target(name, "tpu", len(devices), kind, hbm, devices=devices)


_CAPACITY = (re.compile(r"available HBM \(([\d.]+)([KMGT])\)"),
             re.compile(r"Used [\d.]+[KMGT] of ([\d.]+)([KMGT]) hbm"))
_NEEDED = (re.compile(r"required for [^(]*\(([\d.]+)([KMGT])\)"),
           re.compile(r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm"))


def _size(match) -> Optional[int]:
  if not match:
    return None
  return int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1))


def hbm_capacity(message: str) -> Optional[int]:
  """The HBM an XLA:TPU out-of-memory compile error says a device has (binary units)."""
  return next(filter(None, (_size(p.search(message)) for p in _CAPACITY)), None)


def hbm_needed(message: str) -> Optional[int]:
  """The bytes an XLA:TPU out-of-memory compile error says the program needs."""
  return next(filter(None, (_size(p.search(message)) for p in _NEEDED)), None)


def probe_hbm(device) -> Optional[int]:
  """The HBM XLA:TPU gives one device's programs, from the compiler's own error for a
  program that cannot fit (a 1 TiB argument): a second or so, no table to keep."""
  one = NamedSharding(Mesh(np.array([device]), ("x",)), P())
  too_big = jax.ShapeDtypeStruct((2**38,), jnp.float32, sharding=one)
  try:
    with captured_stderr():
      jax.jit(lambda a: a + 1).lower(too_big).compile()
  except Exception as e:  # pylint: disable=broad-except
    return hbm_capacity(" ".join(str(e).split()))
  return None


def target(name: str) -> Target:
  if name.lower().startswith("gpu:"):
    return gpu_target(name)
  return tpu_target(name)
