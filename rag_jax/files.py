"""Atomic file writes for indexes and caches: written beside the target, fsync'ed, renamed;
and the lock that keeps a directory to one writer.

A reader sees the old file or the whole new one, never a part; an interrupted write leaves
at most a `.{name}.{random}.tmp` file, which nothing reads.
"""

import contextlib
import fcntl
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


LOCK_NAME = ".rag_jax.lock"


class InUseError(OSError):
  """The directory is locked by another process; the message names it."""


@contextlib.contextmanager
def locked(directory: pathlib.Path, name: str = LOCK_NAME,
           wait: bool = False) -> Iterator[pathlib.Path]:
  """Holds an advisory lock on `directory` (an existing folder) while the block runs.

  `fcntl.flock` on `directory/name`, which holds the holder's pid. The kernel releases it
  when the holder's process ends, however it ends: a SIGKILL leaves at most the file, which
  the next holder takes over. A second writer raises `InUseError` at once, naming the holder;
  with `wait`, it waits for the lock instead (a cache that one process builds while the
  others wait to read it). The holder removes the file as it lets go, so a taker checks that
  the file it locked is still the one at `path`.
  """
  path = pathlib.Path(directory) / name
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
      os.close(fd)
      raise InUseError(f"{directory} is in use by process {holder or '(unknown)'}, which holds "
                       f"its lock ({path}): wait for it to end, or use another directory"
                       ) from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)  # the holder before removed it as we waited: lock the one there now
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield path
  finally:
    path.unlink(missing_ok=True)
    os.close(fd)  # releases the lock
