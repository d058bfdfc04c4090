"""What every entry point shares: flag parsing that fails in one line, and `fail()`.

Bad input ends the program with `error: <one line>` on stderr and exit status 2 (usage) or
1 (a failure while running), never a traceback.
"""

import logging
import os
import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags
import jax


def fail(message: str, status: int = 1) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _one_line(e: BaseException) -> str:
  # The last line: ml_collections puts the cause ("[Errno 2] No such file ...") there.
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    # absl prints --help / --helpfull and exits 1; asking for help is not an error.
    if any(a in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    fail(_one_line(e), status=2)
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections raises plain exceptions for unreadable config files and bad overrides.
    fail(_one_line(e), status=2)


def config(holder, example: str):
  """The value of a config_flags flag, or a one-line error if it is missing or unloadable."""
  value = holder.value
  if value is None:
    fail(f"--{holder.name} is required, e.g. --{holder.name} {example}", status=2)
  try:
    value.keys()  # ml_collections defers a config file's load error to its first use
  except (OSError, SyntaxError, ImportError, AttributeError) as e:
    fail(_one_line(e), status=2)
  return value


def use_cpu_cores() -> None:
  """One XLA CPU device per core, so that data-parallel work (`TextEncoder.data_parallel`)
  runs a shard on each: MiniLM encoding is ~10% faster on 2 cores than with one device driving
  both (computations on one device still use every core).

  For entry points, before JAX's first operation; afterwards it changes nothing. A count the
  user chose (JAX_NUM_CPU_DEVICES, or XLA_FLAGS' host device count) is kept. Accelerators are
  unaffected: they stay the default devices.
  """
  if (os.environ.get("JAX_NUM_CPU_DEVICES")
      or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
    return
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  try:
    jax.config.update("jax_num_cpu_devices", cores or 1)
  except RuntimeError:  # JAX has started: its devices stay as they are
    pass


def run(main: Callable) -> None:
  """absl.app.run with one-line flag errors, one CPU device per core (`use_cpu_cores`).

  absl logs at INFO, which would print JAX's "Unable to initialize backend 'tpu'" at every
  start on a machine without one; JAX's backend setup logs only its warnings here.
  """
  use_cpu_cores()
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)
