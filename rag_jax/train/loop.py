"""The training loop (`train_and_evaluate`) behind `python -m rag_jax.train`: fine-tunes RAG's
query encoder and generator jointly, document encoder and index frozen, retrieval in the loop
with the current query encoder.

One run writes a workdir at a time: the loop holds its lock (`files.locked`), and a second
run on it fails at once. A run in a workdir that holds checkpoints resumes from the latest
by itself (params, optimizer state, RNG and step, which is also the data position), saying
so; a latest checkpoint that does not restore is moved aside and the one before it used
(`restore_fallback`). SIGTERM (a preemption notice) and the first Ctrl-C (SIGINT) save a
checkpoint at the end of the current step (in a multi-process run, of the next step that logs
or saves, every process the same) and stop the run (`ended`: "preempted",
"interrupted"); a second Ctrl-C interrupts at once. A NaN or infinite loss (or gradient norm)
stops the run with a one-line error; no checkpoint is written after it, so the last one is
good. The workdir gets `metrics.jsonl` (one JSON object per line: train lines `step`,
`loss` (the mean since the last line), `grad_norm`, `steps_per_s`; eval lines `step` and
`eval/...`), TensorBoard event files, `eval/step_N/` (each eval's predictions.jsonl,
metrics.json and report.md, as `python -m rag_jax.evaluate` writes them: the same code) and
`checkpoints/`.
"""

import contextlib
import json
import pathlib
import signal
import sys
import time
from typing import Any, Dict, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorboardX
import tqdm

from rag_jax import checkpoint as checkpoint_lib
from rag_jax import faults
from rag_jax import files
from rag_jax import sharding
from rag_jax.train import input_pipeline
from rag_jax.train import predict
from rag_jax.train import retrieval
from rag_jax.train import setup
from rag_jax.train import step as step_lib


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why in one line."""


class MetricsWriter:
  """metrics.jsonl and TensorBoard event files, written by process 0 only."""

  def __init__(self, workdir: pathlib.Path):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      self._file = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
      self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, values: Dict[str, float]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps({"step": step, **values}) + "\n")
    self._file.flush()
    for key, value in values.items():
      self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def last_logged(workdir, name: str) -> Optional[float]:
  """The last `name` in WORKDIR/metrics.jsonl (a resumed run's too), or None: the run's
  figure even when it finished earlier and `train_and_evaluate` only found it done."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  values = [json.loads(line).get(name) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()] if path.is_file() else []
  values = [v for v in values if v is not None]
  return values[-1] if values else None


class _StopSignals:
  """SIGTERM (a preemption notice) and the first SIGINT (Ctrl-C) ask the loop to save and
  stop at the next step boundary; after the first SIGINT, a second one interrupts at once
  (Python's KeyboardInterrupt)."""

  ENDED = {signal.SIGTERM: "preempted", signal.SIGINT: "interrupted"}

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {s: signal.signal(s, self._handle) for s in self.ENDED}

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.received = self.received or signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def agreed(self, host_sync: bool) -> Optional[int]:
    """The signal every process stops for, or None: each process's own in a single-process
    run; in a multi-process one, the lowest signal number any of them received (SIGINT
    before SIGTERM), gathered from all of them, so that all save the same step and stop
    together even when a signal reached one host only. Gathering waits for the step, so it
    is done only where the loop waits anyway (`host_sync`: a log or checkpoint step, the same
    on every process); elsewhere None, a signal then stops the run at the next one."""
    if jax.process_count() == 1:
      return self.received
    if not host_sync:
      return None
    received = np.asarray(multihost_utils.process_allgather(np.int32(self.received or 0)))
    received = received[received > 0]
    return int(received.min()) if received.size else None

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _check_finite(losses, norms, step: int, last_saved: Optional[int]) -> Tuple[float, float]:
  """The mean loss and gradient norm of the steps since the last check; a non-finite one ends
  the run (a NaN gradient makes NaN params, whose loss may still read finite)."""
  values = np.asarray(jax.device_get(losses), np.float64)
  grads = np.asarray(jax.device_get(norms), np.float64)
  for what, v in (("loss", values), ("gradient norm", grads)):
    if not np.all(np.isfinite(v)):
      bad = step - len(v) + 1 + int(np.argmin(np.isfinite(v)))
      kept = (f"the last checkpoint (step {last_saved}) is kept" if last_saved
              else "no checkpoint was written")
      raise TrainingError(f"{what} is {v[~np.isfinite(v)][0]} at step {bad}; stopping ({kept})")
  return float(values.mean()), float(grads.mean())


def progress_bar(start: int, total: int):
  """tqdm on process 0 (a no-op elsewhere), from `start` of `total` steps."""
  return tqdm.tqdm(initial=start, total=total, desc="train", unit="step", dynamic_ncols=True,
                   disable=jax.process_index() != 0, file=sys.stderr)


def train_and_evaluate(config, workdir, run: Optional[setup.Run] = None,
                       steps: Optional[step_lib.Steps] = None) -> Dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluating every
  `eval_every_steps` (0: never). Returns the last train and eval metrics, why the run ended
  ("finished", "preempted", "interrupted"), the step, where its checkpoint is and the final
  state. `run`, `steps`: a `setup.build(config, workdir)` and its `step.make_steps` made
  already (a benchmark times the step before and after the loop).

  The config is checked before the workdir is made; the workdir's lock is taken before
  anything is written into it (by process 0, which writes the files every process shares).
  """
  setup.check_config(config)
  workdir = setup.prepare_workdir(workdir)
  lock = files.locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _train(config, workdir, run, steps)


def _train(config, workdir: pathlib.Path, run: Optional[setup.Run],
           steps: Optional[step_lib.Steps]) -> Dict[str, Any]:
  manager = checkpoint_lib.Manager(workdir / "checkpoints", keep=config.keep_checkpoints,
                                   writer=True)
  for partial in manager.removed_partial:
    setup.log(f"removed {partial}: a checkpoint a stopped run had not finished writing")
  run = run or setup.build(config, workdir)
  steps = steps or step_lib.make_steps(run.rag, run.tx, run.step_config, run.state_sharding)
  retriever = retrieval.BatchRetriever.of(run, steps)
  evaluator = predict.evaluator(run, steps, retriever)
  rules = sharding.logical_rules(config.fsdp)
  state, mesh = run.state, run.mesh
  batches = input_pipeline.train_batches(len(run.train_examples), config.batch_size,
                                         config.seed)
  restored = manager.restore_latest(state, fallback=config.restore_fallback, log=setup.log)
  if restored is not None:
    state = restored
  start = int(jax.device_get(state.step))
  if restored is not None and start < config.num_train_steps:
    setup.log(f"resuming from step {start} of {config.num_train_steps} "
              f"({manager.step_directory(start)})")
  elif restored is not None:
    setup.log(f"{workdir} is already at step {start} of {config.num_train_steps}: nothing to "
              f"train (--config.num_train_steps={start + config.checkpoint_every_steps} "
              "would go on)")
  writer = MetricsWriter(workdir)
  stop = _StopSignals()
  progress = progress_bar(start, config.num_train_steps)
  last_saved = manager.latest_step()
  pending, norms, last = [], [], {}
  tick, tick_step = time.perf_counter(), start
  evaluating = lambda step: config.eval_every_steps and step % config.eval_every_steps == 0
  ended = "finished"
  try:
    step = start
    while step < config.num_train_steps:
      arrays = input_pipeline.gather(run.train.arrays, input_pipeline.host_rows(batches[step]))
      batch, index = retriever.train_inputs(state.params, arrays)
      # Traced under the logical axis rules, so the models' activation constraints apply.
      with sharding.axis_rules(mesh, rules):
        state, metrics = steps.train(state, batch, index)
      step += 1
      faults.reach("train_step")
      pending.append(metrics["loss"])
      norms.append(metrics["grad_norm"])
      progress.update(1)
      due = step % config.checkpoint_every_steps == 0 or step == config.num_train_steps
      signum = stop.agreed(host_sync=due or step % config.log_every_steps == 0)
      stopping = signum is not None
      save = due or stopping
      if step % config.log_every_steps == 0 or save:
        loss, grad_norm = _check_finite(pending, norms, step, last_saved)
        now = time.perf_counter()
        last = {"loss": loss, "grad_norm": grad_norm,
                "steps_per_s": (step - tick_step) / max(now - tick, 1e-9)}
        if step % config.log_every_steps == 0:
          writer.write(step, last)
          progress.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{last['steps_per_s']:.2f}")
        pending, norms, tick, tick_step = [], [], now, step
      if evaluating(step):
        scores = evaluator.run(state.params, workdir / "eval" / f"step_{step}",
                               model_from=f"training step {step}")
        last.update({f"eval/{k}": v for k, v in scores.items()})
        writer.write(step, {f"eval/{k}": v for k, v in scores.items()})
      if save:
        manager.save(step, state)
        faults.reach("checkpoint_write")
        last_saved = step
      if evaluating(step):
        tick = time.perf_counter()  # steps/s counts the training loop, not the eval
      if stopping:
        ended = _StopSignals.ENDED[signum]
        break
    manager.wait()
  finally:
    stop.restore()
    progress.close()
    writer.close()
    manager.close()
  del mesh
  step = int(jax.device_get(state.step))
  saved = str(manager.step_directory(last_saved)) if last_saved is not None else None
  return {"ended": ended, "step": step, "checkpoint": saved, **last, "state": state}
