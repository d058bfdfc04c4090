"""The train step lowered and compiled for a target from shapes alone, and its memory report.

`build` makes the abstract state, batch and index of a config's step with the same setup code
training runs (`setup.training_rag`, `setup.make_step_config`, `setup.state_shardings`,
`input_pipeline.batch_shapes`, `step.make_steps`); only the models' shapes come from
`architectures` instead of their checkpoints. `compile_report` compiles it and reports
`compiled.memory_analysis()` per device against the target's HBM, or, with no compiler for
the target, an estimate from the sharded shapes.
"""

import dataclasses
import math
import time
from typing import Any, Dict, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from rag_jax import cli
from rag_jax import contexts
from rag_jax import rag as rag_lib
from rag_jax import sharding
from rag_jax.compile import architectures as arch_lib
from rag_jax.compile import targets as targets_lib
from rag_jax.compile.targets import GIB, InputError, Target
from rag_jax.index import device as device_lib
from rag_jax.models import bart as bart_lib
from rag_jax.models import bert as bert_lib
from rag_jax.train import input_pipeline
from rag_jax.train import optimizer
from rag_jax.train import setup
from rag_jax.train import step as step_lib

PSGS_W100 = 21_015_300  # the paper's Wikipedia passages (DPR's psgs_w100.tsv)


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
  try:
    setup.check_config(config)
  except setup.SetupError as e:
    raise InputError(str(e)) from None
  q_hf, g_hf = arch_lib.architectures(config)
  if g_hf.get("model_type") != "bart":
    raise InputError(f"generator architecture {g_hf.get('model_type')!r}: rag_jax.compile "
                     "compiles BART generators")
  if q_hf.get("model_type") not in ("bert", "dpr"):
    raise InputError(f"question encoder architecture {q_hf.get('model_type')!r}: expected "
                     "a BERT / DPR encoder")
  r = config.rag
  dtype = setup.DTYPES[config.model.dtype]
  pooling = "cls" if q_hf.get("model_type") == "dpr" else "pooler"
  try:
    q_cfg = bert_lib.BertConfig.from_hf(q_hf, pooling=q_hf.get("pooling", pooling))
    g_cfg = bart_lib.BartConfig.from_hf(g_hf)
  except (TypeError, ValueError) as e:
    raise InputError(f"architecture: {e}") from None
  k = config.retrieval.k
  try:
    rag = setup.training_rag(bert_lib.BertEncoder(q_cfg, dtype=dtype),
                             bart_lib.Bart(g_cfg, dtype=dtype),
                             rag_lib.RagConfig(**setup.rag_settings(config)), config)
    # BART's context_format: the tokenizer's <s> ... </s> around the text.
    fmt = contexts.ContextFormat(length=r.max_combined_length, prefix=(g_cfg.bos_token_id,),
                                 suffix=(g_cfg.eos_token_id,), pad_id=g_cfg.pad_token_id)
    cfg = setup.make_step_config(config, rag, fmt)
  except setup.SetupError as e:
    raise InputError(str(e)) from None
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

  tx = optimizer.make_optimizer(config, cfg.frozen)
  abstract, shardings = setup.state_shardings(rag, tx, config, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       nn.meta.unbox(abstract), shardings)
  num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))
  shapes = input_pipeline.batch_shapes(batch_size, fmt, r.max_question_length,
                                       r.max_target_length)
  batch = {name: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(
      mesh, len(shape))) for name, (shape, dt) in shapes.items()}
  index = device_lib.DeviceIndex.abstract(mesh, passages, q_cfg.output_dim, fmt.content_length,
                                          config.retrieval.dtype)
  step = (step_lib.make_steps(rag, tx, cfg, shardings).train if target.devices else None)
  return Plan(mesh, sharding.logical_rules(config.fsdp), step, state, batch, index, rag,
              num_params)


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
  options = targets_lib.COMPILER_OPTIONS.get(target.platform, {})
  report["compiler_options"] = options
  start = time.perf_counter()
  try:
    with targets_lib.captured_stderr(), sharding.axis_rules(plan.mesh, plan.rules):
      compiled = plan.step.lower(plan.state, plan.batch, plan.index).compile(options or None)
  except Exception as e:  # pylint: disable=broad-except
    message = " ".join(str(e).split())
    report["reason"] = cli.shorten(f"XLA did not compile it: {targets_lib.jax_error_line(e)}", 400)
    needed = targets_lib.hbm_needed(message)
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
