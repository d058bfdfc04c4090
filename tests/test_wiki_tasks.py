"""Tasks derived from the embedded Wikipedia (rag_jax.data.wiki_tasks): every file reads
through `rag_jax.data.read`, splits are disjoint by article, and what each template promises
holds in the files."""

import collections

import pytest

from rag_jax import data
from rag_jax.data import wiki_tasks

SPLITS = ("train", "dev", "test", "test_swapped")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return wiki_tasks.ensure(tmp_path_factory.mktemp("wiki") / "tasks")


def test_every_file_reads(root):
  for split in SPLITS:
    assert data.read("fever", root / "fever", split)
    assert data.read("dpr_qa", root / "nq" / "{split}.json", split)
    assert data.read("jeopardy", root / "jeopardy", split)


def test_fever_labels_balanced(root):
  for split in ("train", "dev", "test"):
    labels = collections.Counter(e.label for e in data.read("fever", root / "fever", split))
    assert len(labels) == 3 and len(set(labels.values())) == 1, (split, labels)
