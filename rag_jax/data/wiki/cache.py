"""Where the tasks' files live: `$RAG_JAX_CACHE/{name()}`, written once by `ensure`, and the
`wiki-tasks:` paths of the configs (`resolve`).

`name()` is a digest of the code that derives and writes the files and of the asset's
identity, so that changed code writes a new directory instead of reusing one written by older
code.
"""

import functools
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import tempfile
from typing import Optional

from rag_jax import assets
from rag_jax import files
from rag_jax.data import fever
from rag_jax.data.wiki import build
from rag_jax.data.wiki import text
from rag_jax.index import corpus

PREFIX = "wiki-tasks:"
_PACKAGE = pathlib.Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def name() -> str:
  """The cache directory's name, `wiki-tasks-{the first 12 hex digits of a sha256}` of what
  the files depend on: the sources of this package (the templates), of `rag_jax.data.fever`
  (page names) and of `rag_jax.index.corpus` (chunks, TSV columns), the function that reads
  the asset, and the asset's identity. A change to any of them is a new directory, never
  files written by older code. Computed once a process, since `resolve` calls `ensure` for
  every path."""
  asset = assets.ASSETS[text.ASSET]
  parts = []
  for path in sorted(_PACKAGE.glob("*.py")):
    parts += [path.name.encode("utf-8"), path.read_bytes()]
  parts += [pathlib.Path(path).read_bytes() for path in (fever.__file__, corpus.__file__)]
  parts.append(inspect.getsource(assets.wiki_summaries).encode("utf-8"))
  parts.append(json.dumps([text.ASSET, asset.package, asset.version, asset.wheel_sha256,
                           asset.folder, list(asset.files)]).encode("utf-8"))
  digest = hashlib.sha256()
  for part in parts:  # each preceded by its length, so that no two lists hash alike
    digest.update(len(part).to_bytes(8, "big") + part)
  return f"wiki-tasks-{digest.hexdigest()[:12]}"


def ensure(root: Optional[os.PathLike] = None) -> pathlib.Path:
  """The directory of the tasks' files, `root` or `$RAG_JAX_CACHE/{name()}`, written on first
  use.

  Built in a temporary directory next to it and renamed into place, so that a directory under
  the final name is always complete; when another process renames first, its files (the same
  bytes) are kept and these removed.
  """
  target = pathlib.Path(root) if root is not None else assets.cache_dir() / name()
  if target.is_dir():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
  try:
    build.write(build.derive(), tmp)
    os.rename(tmp, target)
    files.sync_directory(target.parent)
  except OSError:
    if not target.is_dir():
      raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return target


def resolve(spec: str) -> str:
  """A config's path: `wiki-tasks:REL` is REL under `ensure()` (the files written on first
  use); anything else is returned as it is."""
  if not spec.startswith(PREFIX):
    return spec
  return str(ensure() / spec[len(PREFIX):])
