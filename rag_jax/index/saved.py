"""The saved index: a directory that holds passages, embeddings, the backend and a manifest.

    INDEX/
      manifest.json     format_version, encoder identity, dim, count, dtype, metric, backend
                        name and parameters (and measured recall), shard size, and the sha256
                        and size of every other file
      passages/         a corpus.PassageStore (passages.jsonl, offsets.npy, meta.json)
      embeddings/       shard-00000.npy ... (embed.py)
      backend/          the backend's own files, if it has any (ScaNN)

`build_index` works in `INDEX.partial/` next to the target, so an interrupted build resumes
(the passage store is kept if complete, finished embedding shards are kept) when it is run
again on the same input (`build.json` there says which), and renames it into place only when
everything, manifest last, is written. `load_index` checks the manifest
against the files and the encoder: an unknown format version, a missing or truncated file, a
checksum that does not match, or an encoder of another dimension or identity is an
`IndexError_` naming the file, never a wrong answer.
"""

import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any, Dict, Optional

import numpy as np

from rag_jax import assets
from rag_jax import faults
from rag_jax import files
from rag_jax.encoder import TextEncoder
from rag_jax.index import backend as backend_lib
from rag_jax.index import corpus
from rag_jax.index import embed
from rag_jax.index import search as search_lib

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUILD_KEY = "build.json"  # in DIR.partial only: what the partial build is of
RECALL_SAMPLE = 1000  # queries used to measure an approximate backend's recall at build time


class IndexError_(ValueError):  # pylint: disable=invalid-name  (IndexError is a builtin)
  """An index that cannot be built or loaded; the message says why in one line."""


def encoder_identity(directory) -> Dict[str, Any]:
  """What names an encoder: its directory name and the hashes of its config and weights."""
  directory = pathlib.Path(directory)
  weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model.bin"))
  return {"name": directory.name,
          "config_sha256": assets.sha256_file(directory / "config.json"),
          "weights_sha256": assets.sha256_file(weights[0]) if weights else None}


def _file_table(root: pathlib.Path, skip=()) -> Dict[str, Dict[str, Any]]:
  return {str(p.relative_to(root)): {"sha256": assets.sha256_file(p), "bytes": p.stat().st_size}
          for p in sorted(root.rglob("*"))
          if p.is_file() and p.name != MANIFEST and str(p.relative_to(root)) not in skip}


def _read_key(work: pathlib.Path) -> Optional[Dict[str, Any]]:
  """What a partial build in `work` was of (None: unknown, e.g. one from before keys)."""
  try:
    return json.loads((work / BUILD_KEY).read_text())
  except (OSError, ValueError):
    return None


def build_index(passages, encoder: TextEncoder, encoder_dir, out_dir, *, backend: str = "scann",
                backend_params: Optional[Dict[str, Any]] = None, dtype: str = "float16",
                shard_size: int = 65536, on_error: str = "raise", overwrite: bool = False,
                progress: bool = True, encoder_source: Optional[str] = None,
                corpus_format: Optional[str] = None, log=print) -> Dict[str, Any]:
  """Builds a saved index from a passage file (DPR .tsv or articles .jsonl).

  The work happens in `out_dir.partial/`. A build interrupted while embedding resumes from it
  when run again with the same corpus file (path, size and modification time), format,
  article split (`corpus.SPLIT_VERSION`), encoder (identity and max_length), dtype, shard
  size and on_error; a partial build of anything else is discarded first, so that no passage
  or vector of it is reused. (A file replaced by another of the same size and the same
  mtime, as `cp -p` can make, would pass for the same.) A build that fails before its
  passages are stored (a missing file, a malformed line) leaves nothing behind.

  Args:
    passages: path of the corpus file.
    encoder: the document encoder; encoder_dir: its checkpoint directory (for the identity).
    out_dir: the index directory to create.
    backend: a name in search.BACKENDS; backend_params: its parameters (default: chosen from
      the data size by the backend).
    dtype: embedding storage dtype; shard_size: rows per embedding shard.
    on_error: "raise" or "skip" for malformed corpus lines.
    overwrite: replace an existing index at out_dir.
    encoder_source: how to find the encoder again (a path, hub name or asset:NAME), kept in
      the manifest so that `search` needs no --encoder.
    corpus_format: "tsv" (DPR passages) or "jsonl" (articles); None: from the file's suffix.
  Returns:
    The manifest.
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise IndexError_(f"{out_dir}: already exists (overwrite=True, --overwrite, replaces it)")
  if dtype not in embed.DTYPES:
    raise IndexError_(f"unknown dtype {dtype!r}; expected one of {embed.DTYPES}")
  search_lib.require(backend)  # before any work: a missing library is found now
  corpus_format = corpus.corpus_format(passages, corpus_format)
  try:
    source = os.stat(passages)
  except FileNotFoundError:
    raise corpus.CorpusError(f"{passages}: no such file") from None
  key = {"source": os.path.abspath(passages), "bytes": source.st_size,
         "mtime_ns": source.st_mtime_ns, "format": corpus_format, "on_error": on_error,
         "split": corpus.SPLIT_VERSION if corpus_format == "jsonl" else None,
         "encoder": encoder_identity(encoder_dir), "max_length": encoder.max_length,
         "dtype": dtype, "shard_size": shard_size}
  work = out_dir.with_name(out_dir.name + ".partial")
  if work.exists():
    found = _read_key(work)
    if found != key:
      why = ("has no build key (an older rag_jax's)" if found is None else
             "is of other input or settings")
      log(f"{work}: a partial build that {why}; starting afresh")
      shutil.rmtree(work)
  work.mkdir(parents=True, exist_ok=True)
  files.write_json(work / BUILD_KEY, key)

  store_dir = work / "passages"
  if not (store_dir / corpus.META_FILE).is_file():
    stats = corpus.ReadStats()
    shutil.rmtree(store_dir, ignore_errors=True)  # an unfinished store's files, if any
    try:
      count = corpus.write_passages(
          corpus.read_passages(passages, corpus_format, on_error=on_error, stats=stats),
          store_dir)
      if count == 0:
        raise IndexError_(f"{passages}: no passages")
    except BaseException:
      shutil.rmtree(work, ignore_errors=True)  # no embedding has been made yet: keep nothing
      raise
    log(f"passages: {count} written ({stats.skipped} malformed lines skipped)")
    for message in stats.errors:
      log(f"  skipped {message}")
    if stats.skipped > len(stats.errors):
      log(f"  ... and {stats.skipped - len(stats.errors)} more")
  store = corpus.PassageStore(store_dir)
  report = embed.embed_store(store, encoder, work / "embeddings", shard_size=shard_size,
                             dtype=dtype, progress=progress)
  log(f"embeddings: {report.written} shards written, {report.skipped} resumed, "
      f"{report.passages_per_s:.1f} passages/s")
  vectors = embed.load_embeddings(work / "embeddings", len(store), encoder.dim, dtype, shard_size)

  searcher = search_lib.build(backend, vectors, **(backend_params or {}))
  backend_entry: Dict[str, Any] = {"name": backend, "params": searcher.params()}
  if backend != "exact":
    backend_entry["recall_at_10"] = _sample_recall(searcher, vectors)
    log(f"{backend}: recall@10 against exact {backend_entry['recall_at_10']:.3f}")
  if hasattr(searcher, "save"):
    shutil.rmtree(work / "backend", ignore_errors=True)
    searcher.save(work / "backend")

  manifest = {
      "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
      "encoder": {**key["encoder"], "dim": encoder.dim,
                  "max_length": encoder.max_length,
                  "source": encoder_source or str(encoder_dir)},
      "dim": encoder.dim, "count": len(store), "dtype": dtype, "metric": "inner_product",
      "shard_size": shard_size, "backend": backend_entry, "source": str(passages),
      "files": _file_table(work, skip=(BUILD_KEY,)),
  }
  store.close()
  files.write_json(work / MANIFEST, manifest)
  faults.reach("index_rename")
  if out_dir.exists():  # overwrite: move the old one aside first, so a crash loses neither
    # (A crash between the two renames leaves `out_dir.old` and no `out_dir`; the rerun
    # resumes the finished partial, and the old index stays where it is, for the user.)
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(work, out_dir)
    shutil.rmtree(old)
  else:
    os.replace(work, out_dir)
  # The key goes last: until the rename, a crash leaves a partial that resumes. (The manifest
  # does not list it, so a key left by a crash here is ignored.)
  (out_dir / BUILD_KEY).unlink(missing_ok=True)
  return manifest


def _sample_recall(searcher, vectors: np.ndarray, k: int = 10) -> float:
  """recall@k of `searcher` against exact search, on stored vectors plus small noise."""
  rng = np.random.default_rng(0)
  rows = rng.choice(len(vectors), size=min(RECALL_SAMPLE, len(vectors)), replace=False)
  queries = vectors[rows] + 0.01 * rng.standard_normal((len(rows), vectors.shape[1]))
  k = min(k, len(vectors))
  exact = search_lib.build("exact", vectors)
  return float(backend_lib.measure_recall(searcher, exact, queries.astype(np.float32), k))


class Index:
  """A loaded index: `search(query_vectors [B, D], k) -> (scores [B, k], ids [B, k])`,
  `passages[i]` and `embeddings[i]` (the frozen d(z), float32 [N, D])."""

  def __init__(self, directory: pathlib.Path, manifest: Dict[str, Any], searcher,
               passages: corpus.PassageStore, embeddings: np.ndarray):
    self.directory, self.manifest, self.searcher, self.passages = (directory, manifest, searcher,
                                                                   passages)
    self.embeddings = embeddings

  @property
  def dim(self) -> int:
    return self.manifest["dim"]

  def search(self, queries, k: int):
    return self.searcher.search(np.asarray(queries, np.float32), k)


def read_manifest(directory) -> Dict[str, Any]:
  directory = pathlib.Path(directory)
  path = directory / MANIFEST
  if not directory.is_dir():
    raise IndexError_(f"{directory}: " + ("not a directory (an index is one)"
                                          if directory.exists() else "no such index directory"))
  if not path.is_file():
    raise IndexError_(f"{path}: missing manifest")
  try:
    manifest = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IndexError_(f"{path}: not valid JSON ({e})") from None
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise IndexError_(f"{path}: unknown format version {version!r} (this rag_jax reads "
                      f"{FORMAT_VERSION})")
  return manifest


def verify_files(directory, manifest: Dict[str, Any], *, checksums: bool = True) -> None:
  """Every file the manifest lists exists with its size (and sha256, if `checksums`)."""
  directory = pathlib.Path(directory)
  for name, entry in manifest["files"].items():
    path = directory / name
    if not path.is_file():
      raise IndexError_(f"{path}: missing file")
    if path.stat().st_size != entry["bytes"]:
      raise IndexError_(f"{path}: {path.stat().st_size} bytes, the manifest says "
                        f"{entry['bytes']} (truncated or replaced)")
    if checksums and assets.sha256_file(path) != entry["sha256"]:
      raise IndexError_(f"{path}: sha256 does not match the manifest (corrupt)")


def check_encoder(manifest: Dict[str, Any], encoder: TextEncoder, encoder_dir=None) -> None:
  """A query encoder that does not fit the index is an error, not a wrong answer."""
  if encoder.dim != manifest["dim"]:
    raise IndexError_(f"encoder dimension {encoder.dim} does not match the index's "
                      f"{manifest['dim']} (built with {manifest['encoder']['name']})")
  if encoder_dir is not None:
    ident = encoder_identity(encoder_dir)
    built = manifest["encoder"]
    if (ident["config_sha256"], ident["weights_sha256"]) != (built["config_sha256"],
                                                              built["weights_sha256"]):
      raise IndexError_(f"encoder {encoder_dir} is not the one the index was built with "
                        f"({built['name']}); its config or weights differ")


def load_index(directory, *, encoder: Optional[TextEncoder] = None, encoder_dir=None,
               checksums: bool = True) -> Index:
  """Loads and validates a saved index (and checks `encoder` against it, if given)."""
  directory = pathlib.Path(directory)
  manifest = read_manifest(directory)
  verify_files(directory, manifest, checksums=checksums)
  if encoder is not None:
    check_encoder(manifest, encoder, encoder_dir)
  try:
    passages = corpus.PassageStore(directory / "passages")
  except corpus.CorpusError as e:
    raise IndexError_(str(e)) from None
  if len(passages) != manifest["count"]:
    raise IndexError_(f"{directory / 'passages'}: {len(passages)} passages, the manifest says "
                      f"{manifest['count']}")
  try:
    vectors = embed.load_embeddings(directory / "embeddings", manifest["count"], manifest["dim"],
                                    manifest["dtype"], manifest["shard_size"])
  except embed.EmbedError as e:
    raise IndexError_(str(e)) from None
  backend = manifest["backend"]
  cls = search_lib.BACKENDS[backend["name"]]
  if (directory / "backend").is_dir() and hasattr(cls, "load"):
    searcher = cls.load(directory / "backend", vectors)
  else:
    searcher = search_lib.build(backend["name"], vectors, **backend["params"])
  return Index(directory, manifest, searcher, passages, vectors)


def cached_index(source: pathlib.Path, encoder: TextEncoder, encoder_dir: pathlib.Path, *,
                 encoder_source: str, log=print, progress: bool = False
                 ) -> Index:
  """The exact float32 index of `source` under `encoder`, built on first use (`
  build_index`, resumable) into `$RAG_JAX_CACHE/indexes/`, then loaded from there.

  The directory is named by what its contents depend on: the corpus file's content, its
  format and article split (`corpus.SPLIT_VERSION`), the encoder's identity and max_length.
  A lock file keeps two processes from building the same one at once.
  """
  fmt = corpus.corpus_format(source)
  key = {"corpus_sha256": assets.sha256_file(source), "format": fmt,
         "split": corpus.SPLIT_VERSION, "encoder": encoder_identity(encoder_dir),
         "max_length": encoder.max_length}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  out = assets.cache_dir() / "indexes" / f"{source.stem}-{digest}"
  out.parent.mkdir(parents=True, exist_ok=True)
  with files.locked(out.parent, f".{out.name}.lock", wait=True):
    if not (out / MANIFEST).is_file():
      log(f"building the index of {source} in {out} (once; later runs load it)")
      build_index(source, encoder, encoder_dir, out, backend="exact", dtype="float32",
                        corpus_format=fmt, progress=progress, encoder_source=encoder_source,
                        log=log)
  return load_index(out, encoder=encoder, encoder_dir=encoder_dir)
