"""Tasks derived from the embedded Wikipedia (rag_jax.data.wiki_tasks): every file reads
through `rag_jax.data.read`, splits are disjoint by article, each template keeps its promise
in the files (answers in the gold passages, not in the questions; REFUTES claims are not the
article's text, SUPPORTS claims are; NOT ENOUGH INFO articles are in no passage), the hot swap
changes exactly the passages of its examples, and two builds are the same bytes."""

import collections
import filecmp
import pathlib

import pytest

from rag_jax import assets, data
from rag_jax.data import fever, wiki_tasks
from rag_jax.index import corpus

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> pathlib.Path:
  return wiki_tasks.ensure(tmp_path_factory.mktemp("wiki") / "tasks")


@pytest.fixture(scope="module")
def texts():
  """title -> the article's lead, whitespace folded as in the passages."""
  return {a["title"]: " ".join(a["text"].split()) for a in assets.wiki_summaries()}


def _passages(path):
  return {p["id"]: p for p in corpus.read_tsv(path)}


def _fever(root, split):
  return data.read("fever", root / "fever", split)


def _nq(root, split):
  return data.read("dpr_qa", root / "nq" / "{split}.json", split)


def _jeopardy(root, split):
  return data.read("jeopardy", root / "jeopardy", split)


def _titles(root, split):
  """The articles a split's examples are about (NOT ENOUGH INFO claims name none)."""
  titles = {t for e in _fever(root, split) + _nq(root, split) for t in e.gold_titles}
  return titles | {e.source for e in _jeopardy(root, split)}


def test_every_file_reads_with_its_kind(root):
  passages = _passages(root / "passages.tsv")
  assert len(passages) > 9000
  assert list(_passages(root / "passages_swapped.tsv")) == list(passages)
  for split in (*SPLITS, "test_swapped"):
    assert _fever(root, split) and _nq(root, split) and _jeopardy(root, split)
  for split in SPLITS:
    nq = _nq(root, split)
    assert all(len(e.gold_titles) == 1 and e.targets for e in nq)


def test_splits_are_disjoint_by_article(root):
  titles = {split: _titles(root, split) for split in SPLITS}
  assert not titles["train"] & titles["test"]
  assert not titles["train"] & titles["dev"]
  assert not titles["dev"] & titles["test"]
  for split, found in titles.items():
    assert all(wiki_tasks.article_split(t) == (split, False) for t in found)


def test_gold_titles_are_passage_titles(root):
  titles = {p["title"] for p in _passages(root / "passages.tsv").values()}
  for split in SPLITS:
    for e in _fever(root, split) + _nq(root, split):
      assert set(e.gold_titles) <= titles


def test_qa_answers_are_in_the_gold_passages_and_not_in_the_questions(root):
  by_title = collections.defaultdict(list)
  for p in _passages(root / "passages.tsv").values():
    by_title[p["title"]].append(p["text"])
  for split in SPLITS:
    for e in _nq(root, split):
      answer = e.targets[0]
      assert any(answer in text for text in by_title[e.gold_titles[0]]), e
      assert answer.lower() not in e.source.lower(), e
      assert e.source.endswith("?")


def test_fever_claims_say_what_their_labels_say(root, texts):
  passage_text = " ".join(p["text"] for p in _passages(root / "passages.tsv").values())
  kept = {p["title"] for p in _passages(root / "passages.tsv").values()}
  for split in SPLITS:
    for e in _fever(root, split):
      if e.label == fever.SUPPORTS:
        assert e.source in texts[e.gold_titles[0]]
      elif e.label == fever.REFUTES:
        assert e.source not in texts[e.gold_titles[0]]
        assert e.source not in passage_text
      else:
        assert not e.gold_titles and e.source not in passage_text
        about = [t for t, text in texts.items() if e.source in text]
        assert about and not set(about) & kept


def test_fever_labels_are_balanced(root):
  for split in SPLITS:
    labels = collections.Counter(e.label for e in _fever(root, split))
    assert set(labels) == set(fever.LABELS) and len(set(labels.values())) == 1, (split, labels)


def test_jeopardy_clues_hold_no_word_of_the_title(root, texts):
  for split in SPLITS:
    for e in _jeopardy(root, split):
      assert e.source in texts
      words = [w for w in e.source.lower().replace("(", " ").replace(")", " ").split()
               if len(w) >= 3 and w.isalpha() and w not in ("the", "and", "for", "with", "from")]
      clue = e.targets[0].lower()
      assert not any(f" {w} " in f" {clue} " for w in words), e


def test_the_hot_swap_changes_exactly_the_passages_of_its_examples(root):
  before = _passages(root / "passages.tsv")
  after = _passages(root / "passages_swapped.tsv")
  changed = {pid for pid in before if before[pid] != after[pid]}
  assert changed
  assert all(before[pid]["title"] == after[pid]["title"] for pid in changed)
  by_title = {before[pid]["title"]: pid for pid in changed}
  assert len(by_title) == len(changed)  # one changed passage an article

  swapped_titles = set()
  test_nq = {e.source: e for e in _nq(root, "test")}
  for e in _nq(root, "test_swapped"):
    old = test_nq[e.source]
    pid = by_title[e.gold_titles[0]]
    assert e.targets[0] != old.targets[0]
    assert e.targets[0] in after[pid]["text"] and old.targets[0] not in after[pid]["text"]
    swapped_titles.add(e.gold_titles[0])
  test_fever = {e.id: e for e in _fever(root, "test")}
  for e in _fever(root, "test_swapped"):
    old = test_fever[e.id]
    assert e.source == old.source and {e.label, old.label} == {fever.SUPPORTS, fever.REFUTES}
    text = after[by_title[e.gold_titles[0]]]["text"]
    assert (e.source in text) == (e.label == fever.SUPPORTS)
    swapped_titles.add(e.gold_titles[0])
  test_clues = {e.source: e.targets[0] for e in _jeopardy(root, "test")}
  for e in _jeopardy(root, "test_swapped"):
    old, new = test_clues[e.source].split(), e.targets[0].split()
    assert old != new
    # The words that differ, between the longest common head and tail.
    head = next(i for i, (o, n) in enumerate(zip(old + [None], new + [""])) if o != n)
    tail = next(i for i, (o, n) in enumerate(zip(old[::-1] + [None], new[::-1] + [""]))
                if o != n)
    changed_words = " ".join(new[head:len(new) - tail]).strip(".,;()")
    assert changed_words and changed_words in after[by_title[e.source]]["text"]
    assert changed_words not in before[by_title[e.source]]["text"]
    swapped_titles.add(e.source)
  assert swapped_titles == set(by_title)


def test_two_builds_are_the_same_bytes(root, tmp_path):
  again = wiki_tasks.ensure(tmp_path / "again")
  names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
  assert names == sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file())
  match, mismatch, errors = filecmp.cmpfiles(root, again, names, shallow=False)
  assert not mismatch and not errors and len(match) == len(names)
  assert wiki_tasks.ensure(root) == root  # an existing directory is kept as it is
