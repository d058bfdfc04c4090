"""What every entry point shares: flag parsing that fails in one line, and `fail()`.

Bad input ends the program with `error: <one line>` on stderr and exit status 2 (usage) or
1 (a failure while running), never a traceback.
"""

import dataclasses
import logging
import os
import re
import sys
from typing import Callable, List, NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax

from rag_jax import assets
from rag_jax import distributed
from rag_jax import errors


def fail(message: str, status: int = 1) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def shorten(text: str, limit: int) -> str:
  """`text` cut to `limit` characters, "..." marking the cut, for printing passages and
  questions on one line."""
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    # absl prints --help / --helpfull and exits 1; asking for help is not an error.
    if any(a in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except
    # flags.Error, and the plain exceptions ml_collections raises for unreadable config files
    # and bad overrides (of an unknown field, only its name: "'xyz'").
    fail(unknown_config_field(argv) or errors.last_line(e), status=2)


def _fields(node) -> Optional[List[str]]:
  """The field names of a config node (ConfigDict, dict or dataclass); None for a leaf."""
  if dataclasses.is_dataclass(node):
    return [f.name for f in dataclasses.fields(node)]
  if hasattr(node, "keys"):
    return [str(key) for key in node.keys()]
  return None


def unknown_config_field(argv: Sequence[str]) -> Optional[str]:
  """For the first `--NAME.a.b=...` override in argv of a config flag NAME (config_flags)
  whose path is not in the config, what is wrong in one line: the field, the config and the
  fields it has there; None if every override names a field.

  ml_collections says only "'xyz'" for an unknown `--config.xyz`; this names the rest. The
  config is loaded again to look (its get_config runs twice), only after parsing failed.
  """
  for arg in argv[1:]:
    match = re.match(r"--?(?:no)?([\w-]+)\.([\w.-]+)(=|$)", arg)
    if not match or match.group(1) not in flags.FLAGS:
      continue
    flag = flags.FLAGS[match.group(1)]
    if not hasattr(type(flag), "override_values"):  # not a config_flags flag
      continue
    spec = _flag_argument(argv, flag.name)
    try:
      node = flag.parser.parse(spec)
    except Exception:  # pylint: disable=broad-except
      return None  # the config itself does not load: that error says more
    parts = match.group(2).split(".")
    for depth, part in enumerate(parts):
      known = _fields(node)
      where = f" under {'.'.join(parts[:depth])!r}" if depth else ""
      if known is None:
        return (f"unknown config field {'.'.join(parts)!r} in {spec} "
                f"({'.'.join(parts[:depth])!r} holds {type(node).__name__} {node!r}, no fields)")
      if part not in known:
        return (f"unknown config field {'.'.join(parts[:depth + 1])!r} in {spec} (known"
                f"{where}: {', '.join(sorted(known))})")
      node = node[part] if not dataclasses.is_dataclass(node) else getattr(node, part)
  return None


def _flag_argument(argv: Sequence[str], name: str) -> Optional[str]:
  """The value given to `--name` in argv (`--name VALUE` or `--name=VALUE`), if any."""
  for i, arg in enumerate(argv):
    if re.fullmatch(f"--?{re.escape(name)}", arg) and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith((f"--{name}=", f"-{name}=")):
      return arg.split("=", 1)[1]
  return None


def without_flag(argv: Sequence[str], name: str) -> List[str]:
  """argv (less the program name) without `--name VALUE` / `--name=VALUE`: the arguments to
  print in a command to run next (the same config and overrides, another --name)."""
  out, skip = [], False
  for arg in argv[1:]:
    if skip:
      skip = False
    elif re.fullmatch(f"--?{re.escape(name)}", arg):
      skip = True
    elif not arg.startswith((f"--{name}=", f"-{name}=")):
      out.append(arg)
  return out


def config(holder, example: str):
  """The value of a config_flags flag, or a one-line error if it is missing or unloadable."""
  value = holder.value
  if value is None:
    fail(f"--{holder.name} is required, e.g. --{holder.name} {example}", status=2)
  try:
    value.keys()  # ml_collections defers a config file's load error to its first use
  except (OSError, SyntaxError, ImportError, AttributeError) as e:
    fail(errors.last_line(e), status=2)
  return value


def job_config(argv, config_holder, workdir_holder, example: str, example_workdir: str):
  """What an entry point that runs a job in a workdir (train, evaluate) checks first, each
  failure one line with exit status 2: no stray arguments, the job's processes joined
  (rag_jax.distributed), a config that loads and a --workdir. Returns the config.

  Args:
    argv: absl's argv, the program name first.
    config_holder, workdir_holder: the config_flags and --workdir flags.
    example, example_workdir: a config spec and a workdir for the messages.
  """
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}", status=2)
  try:
    distributed.initialize()
  except distributed.DistributedError as e:
    fail(str(e), status=2)
  value = config(config_holder, example)
  if not workdir_holder.value:
    fail(f"--{workdir_holder.name} is required, e.g. --{workdir_holder.name} {example_workdir}",
         status=2)
  return value


def use_cpu_cores() -> None:
  """One XLA CPU device per core, so that data-parallel work (`TextEncoder.data_parallel`)
  runs a shard on each: MiniLM encodes faster than with one device driving every core
  (computations on one device still use every core; benchmarks/RESULTS.md).

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


def use_compilation_cache() -> None:
  """JAX's persistent compilation cache under $RAG_JAX_CACHE/xla (default
  ~/.cache/rag_jax/xla), so that a second run of a command compiles nothing it compiled
  before (ask's first answer comes that much sooner). A cache directory the user chose
  (JAX_COMPILATION_CACHE_DIR) is kept."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", str(assets.cache_dir() / "xla"))


def run(main: Callable, default_config: Optional[str] = None) -> None:
  """absl.app.run with one-line flag errors, one CPU device per core (`use_cpu_cores`) and
  the persistent compilation cache (`use_compilation_cache`).

  absl logs at INFO, which would print JAX's "Unable to initialize backend 'tpu'" at every
  start on a machine without one; JAX's backend setup logs only its warnings here.

  Args:
    main: the entry point.
    default_config: the config file used when the command line names none: given as
      `--config FILE` ahead of the other arguments, so that `--config.FIELD=...` overrides
      it as usual (config_flags parses a flag's default as soon as it is defined, applying
      the command line's overrides then, where an unknown field would be a traceback).
  """
  if default_config and _flag_argument(sys.argv, "config") is None:
    sys.argv[1:1] = [f"--config={default_config}"]  # config_flags reads sys.argv itself
  use_cpu_cores()
  use_compilation_cache()
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  app.run(main, flags_parser=_parse_flags)
