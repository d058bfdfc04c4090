"""Atomic file writes for indexes and caches: written beside the target, fsync'ed, renamed.

A reader sees the old file or the whole new one, never a part; an interrupted write leaves
at most a `.{name}.{random}.tmp` file, which nothing reads.
"""

import contextlib
import json
import os
import pathlib
import secrets
from typing import Iterator, Tuple

import numpy as np


def make_temp(directory: pathlib.Path, name: str) -> Tuple[int, pathlib.Path]:
  """(fd, path) of a new empty file `.{name}.{random}.tmp` in `directory`, open for writing.

  Unlike `tempfile.mkstemp` (mode 0600), the file gets the mode a plain `open` would give
  under the process's umask, so that what is renamed into place from it can be read by
  whoever may read the index (a serving account, say).
  """
  for _ in range(100):
    path = pathlib.Path(directory) / f".{name}.{secrets.token_hex(6)}.tmp"
    try:
      return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
    except FileExistsError:
      continue
  raise FileExistsError(f"{directory}: no free temporary name for {name}")


@contextlib.contextmanager
def atomic_write(path: pathlib.Path, mode: str = "wb", **open_kwargs) -> Iterator:
  """`with atomic_write(path) as f:` writes `f` to a temporary file beside `path`, fsyncs it
  and renames it onto `path` when the block ends; if the block raises, `path` is untouched."""
  path = pathlib.Path(path)
  fd, tmp = make_temp(path.parent, path.name)
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
      sync(f)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path: pathlib.Path, value) -> None:
  """`value` as indented JSON at `path`, atomically."""
  with atomic_write(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  """`np.save` of `array` at `path`, atomically."""
  with atomic_write(path) as f:
    np.save(f, array)


def sync(f) -> None:
  f.flush()
  os.fsync(f.fileno())


def sync_directory(directory: pathlib.Path) -> None:
  """Makes the renames durable; not every platform can open a directory, which is fine."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
