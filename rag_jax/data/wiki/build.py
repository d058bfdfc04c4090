"""The tasks in memory (`derive`), their files (`write`) and what the files hold (`counts`).

`derive` runs each generator over the articles (claims: FEVER, questions: NQ-style QA, clues:
Jeopardy), picks the hot swap's facts from their test examples (swap) and formats every
split; `write` lays them out as the package docstring lists.
"""

import collections
import csv
import dataclasses
import json
import os
import pathlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from rag_jax import data
from rag_jax import files
from rag_jax.data import fever
from rag_jax.data.wiki import claims
from rag_jax.data.wiki import clues
from rag_jax.data.wiki import questions
from rag_jax.data.wiki import swap
from rag_jax.data.wiki import text
from rag_jax.index import corpus


@dataclasses.dataclass
class Tasks:
  """What `derive` makes, before it is written: the passages (before and after the hot swap)
  and each task's examples by split (text.SPLITS and swap.SWAPPED)."""
  passages: List[swap.Row]                      # (id, text, title)
  swapped: List[swap.Row]
  fever: Dict[str, List[dict]]                  # split -> official FEVER records
  nq: Dict[str, List[dict]]                     # split -> DPR retriever records
  jeopardy: Dict[str, List[Tuple[str, str]]]    # split -> (source, target)


def derive(raw: Optional[Sequence[dict]] = None) -> Tasks:
  """All tasks, in memory: what `cache.ensure` writes. `raw` defaults to
  `assets.wiki_summaries()`."""
  wiki = text.Wiki(raw)
  fever_claims = claims.derive(wiki)
  asked = questions.derive(wiki)
  found_clues = clues.derive(wiki)
  swaps = swap.choose(wiki, {"nq": questions.turns_on(asked["test"]),
                             "fever": claims.turns_on(wiki, fever_claims["test"]),
                             "jeopardy": clues.turns_on(wiki, found_clues["test"])},
                      asked=questions.asked(asked["test"]))
  passages, swapped = swap.passages(wiki, swaps)
  return Tasks(passages, swapped, claims.records(wiki, fever_claims, swaps),
               questions.records(wiki, asked, swaps, swapped),
               clues.pairs(wiki, found_clues, swaps))


def _write_tsv(path: pathlib.Path, rows: Iterable[swap.Row]) -> None:
  with files.atomic_write(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(corpus.TSV_COLUMNS)
    writer.writerows(rows)


def write(tasks: Tasks, directory: os.PathLike) -> None:
  """Writes `tasks`' files into `directory` (which must exist), each file atomically."""
  directory = pathlib.Path(directory)
  _write_tsv(directory / "passages.tsv", tasks.passages)
  _write_tsv(directory / "passages_swapped.tsv", tasks.swapped)
  for name in ("fever", "nq", "jeopardy"):
    (directory / name).mkdir()
  for split, records in tasks.fever.items():
    with files.atomic_write(directory / "fever" / f"{split}.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  for split, records in tasks.nq.items():
    with files.atomic_write(directory / "nq" / f"{split}.json", "w", encoding="utf-8") as f:
      json.dump(records, f, ensure_ascii=False, indent=1)
      f.write("\n")
  for split, pairs in tasks.jeopardy.items():
    for suffix, column in ((".source", 0), (".target", 1)):
      with files.atomic_write(directory / "jeopardy" / f"{split}{suffix}", "w",
                              encoding="utf-8") as f:
        f.writelines(pair[column] + "\n" for pair in pairs)


def counts(directory: os.PathLike) -> Dict[str, Dict[str, object]]:
  """What the files hold, the figures of the modules' docstrings: the corpus's articles and
  passages, and the passages the hot swap changes; per split, FEVER's claims by label
  (test_swapped: the new labels), QA's questions by type, Jeopardy's clues."""
  directory = pathlib.Path(directory)
  passages = list(corpus.read_tsv(directory / "passages.tsv"))
  swapped = list(corpus.read_tsv(directory / "passages_swapped.tsv"))
  out = {"corpus": {"articles": len({p["title"] for p in passages}), "passages": len(passages),
                    "swapped_passages": sum(a != b for a, b in zip(passages, swapped))}}
  for split in (*text.SPLITS, swap.SWAPPED):
    labels = collections.Counter(
        e.label for e in data.read("fever", directory / "fever", split))
    with open(directory / "nq" / f"{split}.json", encoding="utf-8") as f:
      types = collections.Counter(record["question_type"] for record in json.load(f))
    out[split] = {"fever": {label: labels[label] for label in fever.LABELS},
                  "nq": {kind: types[kind] for kind in questions.TYPES},
                  "jeopardy": len(data.read("jeopardy", directory / "jeopardy", split))}
  return out
