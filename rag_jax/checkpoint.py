"""Checkpoints of a training run with orbax: the train state (whose step is also the data
position, see input_pipeline.train_batches), written asynchronously by every process
together, the last `keep` kept; restorable on another number of processes or mesh shape.

orbax writes each step into a temporary directory and renames it into place when complete,
so an interrupted write never passes for a checkpoint.
"""

import pathlib
from typing import Optional

import jax
import orbax.checkpoint as ocp


class Manager:
  """A CheckpointManager for {"state": TrainState}."""

  def __init__(self, directory: pathlib.Path, keep: int):
    # The handler named up front, so that a checkpoint's metadata reads before any restore.
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state) -> None:
    """Starts writing step `step` (in the background); the next save waits for it."""
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

  def restore_latest(self, state):
    """The latest checkpoint's state, placed as `state` is (its shapes, dtypes and
    shardings, whatever the mesh it was written from); None when there is none."""
    step = self._manager.latest_step()
    if step is None:
      return None
    # orbax restores a tree with other arrays than the checkpoint's without a word (a param
    # frozen since, say, whose optimizer state the checkpoint lacks, comes back as None).
    saved = len(jax.tree.leaves(self._manager.item_metadata(step)["state"].tree))
    if saved != len(jax.tree.leaves(state)):
      raise ValueError(
          f"{self._manager.directory}: the checkpoint of step {step} holds {saved} arrays and "
          f"this run's state {len(jax.tree.leaves(state))}: it was written with another model "
          "or optimizer (which params are frozen changes the optimizer's state); use a new "
          "workdir, or start one from its params with --config.init=THAT_WORKDIR")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

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
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    return restored["state"]["params"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
