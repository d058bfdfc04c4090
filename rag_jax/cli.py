"""What every entry point shares: flag parsing that fails in one line, and `fail()`.

Bad input ends the program with `error: <one line>` on stderr and exit status 2 (usage) or
1 (a failure while running), never a traceback.
"""

import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags


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
  except SystemExit as e:
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


def run(main: Callable) -> None:
  """absl.app.run with one-line flag errors."""
  app.run(main, flags_parser=_parse_flags)
