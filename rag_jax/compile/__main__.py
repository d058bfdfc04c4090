"""Ahead-of-time compilation of the RAG train step for a machine you do not have.

    python -m rag_jax.compile --config experiments/fever.py --topology v5e:4x4 \\
        --mesh data=8,model=2 --config.retrieval.dtype=bfloat16
    python -m rag_jax.compile --config experiments/fever.py --topology gpu:8xH100 --json

Compiles `train_step.train_step` exactly as `rag_jax.train` runs it (the config's model,
optimizer, k, lengths and batch size; `device` retrieval over an index of `--passages` rows
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
rag_jax.tiny. `--mesh data=..,fsdp=..,model=..` overrides the config's `mesh`; `fsdp`
shards params only with `--config.fsdp=true`, as in training.
"""

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
from ml_collections import config_flags

from rag_jax import cli
from rag_jax import sharding

GIB = 2**30
PSGS_W100 = 21_015_300  # the paper's Wikipedia passages (DPR's psgs_w100.tsv)

# HF config.json fields of the architectures the configs name (shapes, dropout and special
# tokens: what changes the compiled step). Weights are never read.
DPR_QUESTION_ENCODER_BASE = dict(
    model_type="dpr", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=0,
    projection_dim=0)
BART_LARGE = dict(
    model_type="bart", vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
    encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
    decoder_ffn_dim=4096, max_position_embeddings=1024, activation_function="gelu",
    dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, scale_embedding=False,
    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    forced_bos_token_id=0, forced_eos_token_id=2)
BART_BASE = dict(BART_LARGE, d_model=768, encoder_layers=6, decoder_layers=6,
                 encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                 decoder_ffn_dim=3072)
ARCHITECTURES: Dict[str, dict] = {
    "facebook/dpr-question_encoder-single-nq-base": DPR_QUESTION_ENCODER_BASE,
    "facebook/dpr-question_encoder-multiset-base": DPR_QUESTION_ENCODER_BASE,
    "facebook/bart-large": BART_LARGE,
    "facebook/bart-base": BART_BASE,
}
# HF RAG checkpoints (`model.rag_checkpoint`): their question encoder and generator.
RAG_CHECKPOINTS = {
    name: ("facebook/dpr-question_encoder-single-nq-base", "facebook/bart-large")
    for name in ("facebook/rag-token-nq", "facebook/rag-sequence-nq", "facebook/rag-token-base",
                 "facebook/rag-sequence-base")}
TINY_VOCAB = 1000  # `model.tiny`: its vocabulary is the data's words; this stands in for it

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
# Triton GEMM fusions then fail to compile ("Couldn't find output tile sizes that satisfy
# hlo: ... dot"; jax 0.10.2's CUDA plugin, the FEVER step's bf16[1500,1024] dots); with them
# off the dots are cuBLAS calls, as on a card where the autotuner prefers cuBLAS.
COMPILER_OPTIONS = {"gpu": {"xla_gpu_enable_triton_gemm": False}}
CUDA_PLUGIN_REASON = (
    "JAX compiles for NVIDIA GPUs only through its CUDA PJRT plugin (jax-cuda12-plugin + "
    "jax-cuda12-pjrt, or the cuda13 ones), which is not installed here: `pip install "
    "jax-cuda12-plugin=={v} jax-cuda12-pjrt=={v}` (no GPU and no CUDA libraries are needed "
    "to compile)")


class InputError(ValueError):
  """Bad input (topology, mesh, config): a one-line error, exit status 2."""


# ------------------------------------------------------------------------------------------
# Targets.


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


def _jax_error_line(e: BaseException) -> str:
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
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    with captured_stderr():
      topo = topologies.get_topology_desc("", platform="cuda",
                                          topology=f"1x{hosts}x{per_host}",
                                          target_config=gpu_target_config(spec))
  except NotImplementedError:
    target.reason = CUDA_PLUGIN_REASON.format(v=jax.__version__)
    return target
  except Exception as e:  # pylint: disable=broad-except
    target.reason = f"the CUDA plugin made no topology: {_jax_error_line(e)}"
    return target
  target.devices = list(topo.devices)
  return target


def tpu_target(name: str) -> Target:
  """A JAX TPU topology name -> its devices (libtpu compiles for them without a TPU)."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    with captured_stderr():
      topo = topologies.get_topology_desc(platform="tpu", topology_name=name)
  except RuntimeError as e:
    if "not installed" not in str(e):
      raise InputError(f"--topology {name}: {_jax_error_line(e)}") from None
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
    raise InputError(f"--topology {name}: {_jax_error_line(e)} (expected a name such as "
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


# ------------------------------------------------------------------------------------------
# Shapes.


def _hf_config(spec: str, role: str) -> dict:
  """The HF config.json fields of a checkpoint name: a local directory's config.json, or
  ARCHITECTURES."""
  if spec in ARCHITECTURES:
    return dict(ARCHITECTURES[spec])
  local = pathlib.Path(str(spec)).expanduser()
  if (local / "config.json").is_file():
    return json.loads((local / "config.json").read_text())
  raise InputError(f"unknown {role} architecture {spec!r}: rag_jax.compile knows "
                   f"{', '.join(sorted(ARCHITECTURES))}, or reads config.json from a local "
                   "checkpoint directory (no weights)")


def architectures(config) -> Tuple[dict, dict]:
  """(question encoder, generator) HF config dicts of a training config."""
  m = config.model
  if m.tiny:
    from rag_jax import tiny  # pylint: disable=import-outside-toplevel
    return (dict(tiny.QUESTION_ENCODER, vocab_size=TINY_VOCAB),
            dict(tiny.GENERATOR, vocab_size=TINY_VOCAB))
  if m.rag_checkpoint:
    if m.rag_checkpoint in RAG_CHECKPOINTS:
      q, g = RAG_CHECKPOINTS[m.rag_checkpoint]
      return _hf_config(q, "question encoder"), _hf_config(g, "generator")
    hf = _hf_config(m.rag_checkpoint, "RAG checkpoint")
    if "question_encoder" not in hf or "generator" not in hf:
      raise InputError(f"{m.rag_checkpoint}: its config.json is not a RAG config (no "
                       "question_encoder / generator)")
    return dict(hf["question_encoder"]), dict(hf["generator"])
  return (_hf_config(m.question_encoder, "question encoder"),
          _hf_config(m.generator, "generator"))


@dataclasses.dataclass
class Plan:
  """The abstract train step: everything `lower` needs, no arrays."""
  mesh: Any
  rules: Any
  step: Any                # the jitted train step
  state: Any               # TrainState of ShapeDtypeStructs (sharded)
  batch: Dict[str, Any]
  index: Any               # DeviceIndex of ShapeDtypeStructs
  rag: Any
  num_params: int


def mesh_for(target: Target, shape: Dict[str, int]):
  """The (data, fsdp, model) mesh over the target's devices; an AbstractMesh (shapes and
  shardings, nothing to compile for) when JAX cannot make its devices here."""
  try:
    if target.devices is not None:
      return sharding.make_mesh(shape, devices=target.devices)
    # pylint: disable-next=protected-access
    sizes = sharding._mesh_sizes(shape, target.count)  # the same checks as make_mesh's
    return jax.sharding.AbstractMesh(sizes, sharding.MESH_AXES)
  except ValueError as e:
    raise InputError(str(e)) from None


def build(config, target: Target, mesh_shape: Dict[str, int], batch_size: int,
          passages: int) -> Plan:
  """The abstract state, batch and index of `config`'s train step on `target`."""
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  from rag_jax.train import setup  # pylint: disable=import-outside-toplevel
  from rag_jax import rag as rag_lib  # pylint: disable=import-outside-toplevel
  from rag_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from rag_jax.models import bart as bart_lib  # pylint: disable=import-outside-toplevel
  from rag_jax.models import bert as bert_lib  # pylint: disable=import-outside-toplevel

  try:
    setup.check_config(config)
  except setup.SetupError as e:
    raise InputError(str(e)) from None
  q_hf, g_hf = architectures(config)
  if g_hf.get("model_type") != "bart":
    raise InputError(f"generator architecture {g_hf.get('model_type')!r}: rag_jax.compile "
                     "compiles BART generators")
  if q_hf.get("model_type") not in ("bert", "dpr"):
    raise InputError(f"question encoder architecture {q_hf.get('model_type')!r}: expected "
                     "a BERT / DPR encoder")
  m, r = config.model, config.rag
  dtype = setup.DTYPES[m.dtype]
  pooling = "cls" if q_hf.get("model_type") == "dpr" else "pooler"
  try:
    q_cfg = bert_lib.BertConfig.from_hf(q_hf, pooling=q_hf.get("pooling", pooling))
    g_cfg = bart_lib.BartConfig.from_hf(g_hf)
  except (TypeError, ValueError) as e:
    raise InputError(f"architecture: {e}") from None
  q_module = bert_lib.BertEncoder(q_cfg, dtype=dtype, remat=m.remat, scan_layers=m.scan_layers)
  g_module = bart_lib.Bart(g_cfg, dtype=dtype, remat=m.remat, scan_layers=m.scan_layers)
  k = config.retrieval.k
  rag = rag_lib.Rag(q_module, g_module, rag_lib.RagConfig(
      n_docs=k, max_combined_length=r.max_combined_length,
      label_smoothing=config.label_smoothing))
  fmt = step_lib.ContextFormat(length=r.max_combined_length, prefix=(g_cfg.bos_token_id,),
                               suffix=(g_cfg.eos_token_id,), pad_id=g_cfg.pad_token_id)
  cfg = step_lib.StepConfig(kind=r.kind, k=k, label_smoothing=config.label_smoothing,
                            doc_temperature=config.retrieval.doc_temperature, context=fmt,
                            frozen=step_lib.frozen_params(config, rag))
  if r.max_question_length > q_cfg.max_position_embeddings:
    raise InputError(f"config rag.max_question_length={r.max_question_length} exceeds the "
                     f"question encoder's {q_cfg.max_position_embeddings} positions")
  if max(r.max_combined_length, r.max_target_length) > g_cfg.max_position_embeddings:
    raise InputError("config rag.max_combined_length / max_target_length exceed the "
                     f"generator's {g_cfg.max_position_embeddings} positions")
  if passages < k:
    raise InputError(f"--passages={passages} is fewer than config retrieval.k={k}")

  mesh = mesh_for(target, mesh_shape)
  data = sharding.data_size(mesh)
  if batch_size % data:
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    fit = math.gcd(batch_size, target.count)
    raise InputError(
        f"batch size {batch_size} does not split over the {data} data shards (data x fsdp) "
        f"of mesh {_mesh_text(sizes)}; give --batch-size (a multiple of {data}) or a --mesh "
        f"whose data x fsdp divides {batch_size} (e.g. --mesh data={fit},"
        f"model={target.count // fit})")

  rules = sharding.logical_rules(config.fsdp)
  tx = step_lib.make_optimizer(config, cfg.frozen)
  abstract = step_lib.abstract_state(rag, tx, config.seed)
  shardings = sharding.shardings_for(mesh, abstract, rules)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       nn.meta.unbox(abstract), shardings)
  num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))

  b, p = batch_size, fmt.content_length
  shapes = {"question_ids": ((b, r.max_question_length), jnp.int32),
            "question_mask": ((b, r.max_question_length), jnp.int32),
            "question_tokens": ((b, p), jnp.int32), "question_length": ((b,), jnp.int32),
            "labels": ((b, r.max_target_length), jnp.int32)}
  batch = {name: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(
      mesh, len(shape))) for name, (shape, dt) in shapes.items()}
  index = step_lib.DeviceIndex.abstract(mesh, passages, q_cfg.output_dim, p,
                                        config.retrieval.dtype)
  step = step_lib.jit_train_step(rag, tx, cfg, shardings) if target.devices else None
  return Plan(mesh, rules, step, state, batch, index, rag, num_params)


def _mesh_text(sizes: Dict[str, int]) -> str:
  return ",".join(f"{a}={sizes[a]}" for a in sharding.MESH_AXES)


# ------------------------------------------------------------------------------------------
# Memory.


def _device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def activation_estimate(plan: Plan, config, batch_size: int) -> int:
  """Bytes of activations one device keeps for the backward pass: an ESTIMATE.

  Per transformer layer of s tokens, b sequences, width h, a heads, 16-bit activations and
  no rematerialisation, Korthikanti et al. (2022) count s*b*h*(10 + 24/t + 5*a*s/(h*t))
  bytes with t-way tensor parallelism; BART's decoder layers add cross-attention (its keys
  and values over the context, a*T*S scores). Plus the float32 logits (three copies: logits,
  log-softmax, their gradient), the search's float32 scores of every query over a device's
  rows, and the params' copy in the computation dtype (bfloat16 compute casts the float32
  params once per step). The rows split over the data axes. Remat, fusion and XLA's
  scheduling move the real figure: the compiled `temp` is the measurement.
  """
  r = config.rag
  mesh_sizes = dict(zip(plan.mesh.axis_names, plan.mesh.axis_sizes))
  t = mesh_sizes["model"]
  rows = batch_size / (mesh_sizes["data"] * mesh_sizes["fsdp"])
  q = plan.rag.question_encoder.config
  g = plan.rag.generator.config
  k = config.retrieval.k

  def layer(s, b, h, a):
    return s * b * h * (10 + 24 / t + 5 * a * s / (h * t))

  total = q.num_hidden_layers * layer(r.max_question_length, rows, q.hidden_size,
                                      q.num_attention_heads)
  ctx, tgt = r.max_combined_length, r.max_target_length
  total += g.encoder_layers * layer(ctx, rows * k, g.d_model, g.encoder_attention_heads)
  cross = rows * k * (2 * ctx * g.d_model * 2 / t + 5 * g.decoder_attention_heads * tgt * ctx / t
                      + tgt * g.d_model * 2 * 4)
  total += g.decoder_layers * (layer(tgt, rows * k, g.d_model, g.decoder_attention_heads) + cross)
  total += 3 * rows * k * tgt * g.vocab_size * 4
  total += batch_size * plan.index.rows_per_shard * 4
  compute = jnp.dtype(plan.rag.question_encoder.dtype).itemsize
  if compute < 4:
    total += _device_bytes(plan.state.params) * compute // 4
  return int(total)


def estimate(plan: Plan, config, batch_size: int) -> Dict[str, int]:
  """Per-device bytes from the sharded shapes (exact for what is stored), with activations
  estimated (`activation_estimate`)."""
  parts = {"params": _device_bytes(plan.state.params),
           "opt_state": _device_bytes(plan.state.opt_state),
           "batch": _device_bytes(plan.batch),
           "index": _device_bytes(plan.index),
           "activations_estimate": activation_estimate(plan, config, batch_size)}
  # The step returns new params and optimizer state (donated: in place of the old ones),
  # and the gradients exist once beside them.
  parts["gradients"] = parts["params"]
  parts["total"] = sum(parts.values())
  return parts


def memory(stats) -> Dict[str, int]:
  """Per-device bytes of a `compiled.memory_analysis()`: arguments, outputs, aliased
  (outputs written over donated arguments), temporaries, generated code, and the total the
  device must hold: argument + output - alias + temp + generated code."""
  get = lambda name: int(getattr(stats, f"{name}_size_in_bytes", 0) or 0)
  out = {"argument": get("argument"), "output": get("output"), "alias": get("alias"),
         "temp": get("temp"), "generated_code": get("generated_code")}
  out["total"] = (out["argument"] + out["output"] - out["alias"] + out["temp"]
                  + out["generated_code"])
  return out


def fits(total_bytes: Optional[int], hbm_bytes: Optional[int],
         usable_fraction: float = 1.0) -> Optional[bool]:
  """Whether `total_bytes` per device fit the device's usable memory; None if unknown."""
  if total_bytes is None or hbm_bytes is None:
    return None
  return total_bytes <= hbm_bytes * usable_fraction


def _gib(n: Optional[float]) -> Optional[float]:
  return None if n is None else round(n / GIB, 3)


def compile_report(config, target: Target, mesh_shape: Dict[str, int], batch_size: int,
                   passages: int, config_name: str = "") -> Dict[str, Any]:
  """Builds, lowers and compiles the step for `target`; the report as a JSON-able dict."""
  plan = build(config, target, mesh_shape, batch_size, passages)
  sizes = dict(zip(plan.mesh.axis_names, plan.mesh.axis_sizes))
  guess = estimate(plan, config, batch_size)
  report = {
      "config": config_name, "topology": target.name, "platform": target.platform,
      "device_kind": target.device_kind, "devices": target.count, "mesh": sizes,
      "fsdp_params": bool(config.fsdp), "batch_size": batch_size, "k": config.retrieval.k,
      "passages": passages, "index_dim": plan.index.embeddings.shape[1],
      "index_dtype": str(jnp.dtype(plan.index.embeddings.dtype)),
      "model_dtype": config.model.dtype, "params": plan.num_params,
      "compiled": False, "reason": target.reason, "compile_s": None, "memory_gib": None,
      "hbm_gib": _gib(target.hbm_bytes),
      "usable_gib": _gib(target.hbm_bytes * target.usable_fraction) if target.hbm_bytes
                    else None,
      "fits": None, "fits_by": None, "compiler_options": None,
      "estimate_gib": {name: _gib(v) for name, v in guess.items()}}
  report["fits"] = fits(guess["total"], target.hbm_bytes, target.usable_fraction)
  report["fits_by"] = "estimate"
  if target.devices is None:
    return report
  options = COMPILER_OPTIONS.get(target.platform, {})
  report["compiler_options"] = options
  start = time.perf_counter()
  try:
    with captured_stderr(), sharding.axis_rules(plan.mesh, plan.rules):
      compiled = plan.step.lower(plan.state, plan.batch, plan.index).compile(options or None)
  except Exception as e:  # pylint: disable=broad-except
    message = " ".join(str(e).split())
    report["reason"] = cli.shorten(f"XLA did not compile it: {_jax_error_line(e)}", 400)
    needed = hbm_needed(message)
    if needed is not None:
      report["memory_gib"] = {"total": _gib(needed)}
      report["fits"], report["fits_by"] = False, "compiler (out of memory)"
    return report
  report["compile_s"] = round(time.perf_counter() - start, 1)
  report["compiled"], report["reason"] = True, None
  used = memory(compiled.memory_analysis())
  report["memory_gib"] = {name: _gib(v) for name, v in used.items()}
  report["fits"] = fits(used["total"], target.hbm_bytes, target.usable_fraction)
  report["fits_by"] = "compiled memory_analysis"
  return report


def table(report: Dict[str, Any]) -> str:
  """The report as a few lines for a terminal."""
  r = report
  hbm = f", {r['hbm_gib']:g} GiB each" if r["hbm_gib"] else ""
  kind = r["device_kind"] or "devices"
  lines = [f"{r['config'] or 'config'} on {r['topology']}: {r['devices']} x {kind}{hbm}",
           f"mesh {_mesh_text(r['mesh'])}  fsdp params {'on' if r['fsdp_params'] else 'off'}"
           f"  batch {r['batch_size']}  k {r['k']}  params {r['params'] / 1e6:.0f}M "
           f"({r['model_dtype']} compute)  index {r['passages']:,} x {r['index_dim']} "
           f"{r['index_dtype']} (device mode)"]
  if r["compiled"]:
    options = ", ".join(f"{k}={v}" for k, v in (r["compiler_options"] or {}).items())
    lines.append(f"compiled: yes ({r['compile_s']} s{'; ' + options if options else ''})")
    m = r["memory_gib"]
    lines.append(f"per device, GiB (memory_analysis): argument {m['argument']:.2f}  output "
                 f"{m['output']:.2f}  alias {m['alias']:.2f}  temp {m['temp']:.2f}  generated "
                 f"code {m['generated_code']:.3f}  total {m['total']:.2f}")
  else:
    lines.append(f"compiled: no: {r['reason']}")
    e = r["estimate_gib"]
    lines.append(f"per device, GiB, from the sharded shapes: params {e['params']:.2f}  "
                 f"optimizer {e['opt_state']:.2f}  gradients {e['gradients']:.2f}  batch "
                 f"{e['batch']:.3f}  index {e['index']:.2f}  + activations (ESTIMATE) "
                 f"{e['activations_estimate']:.2f} = {e['total']:.2f}")
    if r["memory_gib"]:
      lines.append(f"the compiler needed {r['memory_gib']['total']:.2f} GiB per device")
  total = (r["memory_gib"] or {}).get("total") or r["estimate_gib"]["total"]
  if r["fits"] is None:
    lines.append(f"fits: unknown (no HBM figure for {kind})")
  else:
    of = f"{total:.2f} of {r['usable_gib']:.2f} GiB usable"
    if r["usable_gib"] != r["hbm_gib"]:
      of += f" (JAX's share of {r['hbm_gib']:.2f})"
    lines.append(f"fits: {'yes' if r['fits'] else 'no'} ({of}; by {r['fits_by']})")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line.

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
      "passages", PSGS_W100, "Rows of the index on the mesh (default: the paper's "
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
  with captured_stderr():  # plugins found here log to stderr when they have no device
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
    report = compile_report(config, target(value["topology"]), mesh_shape, batch_size,
                            value["passages"], name)
  except InputError as e:
    cli.fail(str(e), status=2)
  print(json.dumps(report) if value["json"] else table(report))


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
