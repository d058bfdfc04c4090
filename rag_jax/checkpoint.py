"""Checkpoints of a training run with orbax: the train state (whose step is also the data
position, see input_pipeline.train_batches), written asynchronously by every process
together, the last `keep` kept; restorable on another number of processes or mesh shape.

orbax writes each step into a temporary directory and renames it into place when complete,
so an interrupted write never passes for a checkpoint; the writer of a workdir removes the
temporary directories a dead run left. A checkpoint that does not restore (a file truncated
or lost since) is named with its step; with `fallback` it is moved aside (`STEP.damaged`)
and the newest one that restores is used instead.
"""

import pathlib
import sys
from typing import Callable, List, Optional

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from rag_jax import errors

_PARTIAL = "*.orbax-checkpoint-tmp*"  # orbax's name for a step being written


def _quiet_abandoned_reads() -> None:
  """Drops the "Event loop is closed" reports of the reads a failed restore left behind.

  When one array of a checkpoint fails to read, orbax's restore raises and closes its event
  loop while tensorstore's other reads are still running; each of those, finishing on a
  tensorstore thread, reports the closed loop through `sys.unraisablehook`, a traceback per
  array on stderr, after the one line that said what is wrong. Other reports go through.
  """
  previous = sys.unraisablehook
  if getattr(previous, "quiets_abandoned_reads", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.quiets_abandoned_reads = True
  sys.unraisablehook = hook


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message says which and what to do, in one line."""


class Manager:
  """A CheckpointManager for {"state": TrainState}.

  Args:
    directory: the checkpoints' directory.
    keep: how many of the latest to keep.
    writer: this manager's run owns the directory (it holds the workdir's lock,
      `files.locked`): the temporary directories of a dead run's unfinished writes are
      listed in `removed_partial` and removed.
  """

  def __init__(self, directory: pathlib.Path, keep: int, writer: bool = False):
    directory = pathlib.Path(directory).absolute()
    self.removed_partial: List[pathlib.Path] = (sorted(directory.glob(_PARTIAL))
                                                if writer else [])
    # The handler named up front, so that a checkpoint's metadata reads before any restore.
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True,
                                             cleanup_tmp_directories=writer),
        item_handlers={"state": ocp.StandardCheckpointHandler()})

  def step_directory(self, step: int) -> pathlib.Path:
    return pathlib.Path(self._manager.directory) / str(step)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    """Starts writing step `step` (in the background); the next save waits for it."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

  def restore_latest(self, state, fallback: bool = False,
                     log: Callable[[str], None] = print):
    """The latest checkpoint's state, placed as `state` is (its shapes, dtypes and
    shardings, whatever the mesh it was written from); None when there is none.

    A checkpoint that does not restore raises CheckpointError naming its step, or with
    `fallback` is moved aside to `STEP.damaged` (said through `log`) and the one before it
    tried, down to none (None: the run starts afresh). One written with another model or
    optimizer is an error either way: the ones before it would be too.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      self._check_layout(step, state)
      try:
        return self._restore(step, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))["state"]
      except Exception as e:  # pylint: disable=broad-except
        # orbax and tensorstore raise what the damage makes (OUT_OF_RANGE, NOT_FOUND,
        # ValueError, ...): any failure to read a checkpoint whose layout is right.
        _quiet_abandoned_reads()
        where, why = self.step_directory(step), errors.first_line(e)
        if not fallback:
          raise CheckpointError(
              f"the checkpoint of step {step} ({where}) does not restore ({why}); "
              "--config.restore_fallback=true moves it aside and restores the one before, "
              "or delete it") from None
        aside = self._move_aside(where)
        log(f"the checkpoint of step {step} does not restore ({why}): moved to {aside}")
    return None

  def _check_layout(self, step: int, state) -> None:
    # orbax restores a tree with other arrays than the checkpoint's without a word (a param
    # frozen since, say, whose optimizer state the checkpoint lacks, comes back as None).
    try:
      saved = len(jax.tree.leaves(self._manager.item_metadata(step)["state"].tree))
    except Exception:  # pylint: disable=broad-except
      return  # unreadable metadata: the restore fails, and says so
    if saved != len(jax.tree.leaves(state)):
      raise CheckpointError(
          f"{self._manager.directory}: the checkpoint of step {step} holds {saved} arrays and "
          f"this run's state {len(jax.tree.leaves(state))}: it was written with another model "
          "or optimizer (which params are frozen changes the optimizer's state); use a new "
          "workdir, or start one from its params with --config.init=THAT_WORKDIR")

  def _restore(self, step: int, abstract):
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))

  def _move_aside(self, where: pathlib.Path) -> pathlib.Path:
    """Renames a step's directory to STEP.damaged (STEP.damaged-2, ... if taken), where orbax
    no longer sees it; every process then reads the same steps."""
    aside, n = where.with_name(f"{where.name}.damaged"), 1
    while aside.exists():
      n += 1
      aside = where.with_name(f"{where.name}.damaged-{n}")
    if jax.process_index() == 0:
      where.rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"rag_jax checkpoint aside {where.name}")
    self._manager.reload()
    return aside

  def restore_params(self, params, sharding):
    """The params of the latest checkpoint, placed as `params` is; the rest of its state
    (optimizer, step, RNG) is read as it was saved, onto `sharding`, and dropped, so that a
    run with another optimizer (a frozen query encoder, say) starts from it. None when there
    is no checkpoint."""
    step = self._manager.latest_step()
    if step is None:
      return None
    saved = self._manager.item_metadata(step)["state"]
    abstract = dict(jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved.tree))
    abstract["params"] = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
    try:
      return self._restore(step, abstract)["state"]["params"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"the checkpoint of step {step} ({self.step_directory(step)}) does "
                            f"not restore ({errors.first_line(e)})") from None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
