"""Joining a multi-host JAX job: `jax.distributed.initialize`, from wherever the job says so.

- `RAG_JAX_COORDINATOR=host:port`, `RAG_JAX_NUM_PROCESSES=N`, `RAG_JAX_PROCESS_ID=i`: an
  explicit job (what `launch/local.sh` sets for N local processes on CPU devices);
- a SLURM allocation of more than one task, or a TPU pod slice of more than one host: JAX
  finds its peers itself (`jax.distributed.initialize()` with no arguments);
- otherwise one process, nothing to do.

Call it before JAX's first computation.
"""

import os

import jax
from jax.experimental import multihost_utils
import numpy as np

ENV_COORDINATOR = "RAG_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "RAG_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RAG_JAX_PROCESS_ID"


class DistributedError(ValueError):
  """A multi-host setting that cannot be used; the message says why in one line."""


def _int_env(name: str) -> int:
  value = os.environ.get(name, "")
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f"{name}={value!r}: expected an integer") from None


def _tpu_pod() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def _slurm_job() -> bool:
  return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize() -> bool:
  """Joins the job the environment describes. Returns whether this is a multi-process run."""
  if os.environ.get(ENV_COORDINATOR):
    num, pid = _int_env(ENV_NUM_PROCESSES), _int_env(ENV_PROCESS_ID)
    if not 0 <= pid < num:
      raise DistributedError(f"{ENV_PROCESS_ID}={pid} is not in 0..{num - 1}")
    # CPU devices of different processes talk through gloo (the default has no
    # cross-process collectives); accelerators are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ[ENV_COORDINATOR],
                               num_processes=num, process_id=pid)
    return num > 1
  if _slurm_job() or _tpu_pod():
    jax.distributed.initialize()
    return jax.process_count() > 1
  return False


def to_host(x) -> "np.ndarray":
  """A global array's whole value on this process (gathered from the others when it spans
  devices this process cannot address)."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
