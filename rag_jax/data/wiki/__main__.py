"""Writes the tasks derived from the embedded Wikipedia (rag_jax.data.wiki) and prints what
they hold.

    python -m rag_jax.data.wiki [--out DIR]
"""

import argparse
import json
from typing import Optional, Sequence

from rag_jax.data.wiki import build
from rag_jax.data.wiki import cache


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help=f"directory (default $RAG_JAX_CACHE/{cache.name()})")
  args = parser.parse_args(argv)
  directory = cache.ensure(args.out)
  print(directory)
  for part, value in build.counts(directory).items():
    print(f"{part}: {json.dumps(value)}")


if __name__ == "__main__":
  main()
