"""Tasks derived from the embedded Wikipedia (rag_jax.data.wiki): every file reads
through `rag_jax.data.read`, splits are disjoint by article, each template keeps its promise
in the files (answers in the gold passages, not in the questions; REFUTES claims are not the
article's text, SUPPORTS claims are; NOT ENOUGH INFO articles are in no passage), the hot swap
changes exactly the passages of its examples, the docstrings' counts are the files', and two
builds (under different hash seeds) are the same bytes."""

import collections
import dataclasses
import filecmp
import os
import pathlib
import re
import subprocess
import sys

import pytest

from rag_jax import assets, data
from rag_jax.data import fever
from rag_jax.data.wiki import build, cache, claims, clues, questions, swap
from rag_jax.data.wiki import text as wiki_text
from rag_jax.index import corpus

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> pathlib.Path:
  return cache.ensure(tmp_path_factory.mktemp("wiki") / "tasks")


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


@pytest.mark.slow
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
    assert all(wiki_text.article_split(t) == (split, False) for t in found)


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


@pytest.mark.slow
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
    # Interleaved, so that a file's first 3m claims (max_eval_examples) are balanced too.
    order = [e.label for e in _fever(root, split)]
    assert order == list(fever.LABELS) * (len(order) // 3), split


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


def test_the_docstrings_state_the_counts(root, texts):
  """Each figure of the modules' docstrings is what `counts()` finds in a fresh build (each
  phrase, formatted from the counts, in the docstring of the module that builds its part: a
  changed derivation fails here until the docstring is updated)."""
  counts = build.counts(root)

  def n(value: int) -> str:
    return f"{value:,}"

  for split in SPLITS:  # the docstring states one count for the three labels
    assert len(set(counts[split]["fever"].values())) == 1, counts[split]
  swapped = counts["test_swapped"]
  assert swapped["nq"]["title"] == 0 and swapped["fever"][fever.NOT_ENOUGH_INFO] == 0
  types = " / ".join(questions.TYPES)
  phrases = [
      (wiki_text, f"{n(len(texts))} vital articles"),
      (wiki_text, f"{n(counts['corpus']['articles'])} articles, "
                  f"{n(counts['corpus']['passages'])} passages"),
      (claims, "Counts (SUPPORTS = REFUTES = NOT ENOUGH INFO, each): " + ", ".join(
          f"{split} {n(counts[split]['fever'][fever.SUPPORTS])}" for split in SPLITS)),
      (questions, f"Counts per type ({types}): " + ", ".join(
          f"{split} " + " / ".join(n(counts[split]["nq"][t]) for t in questions.TYPES)
          for split in SPLITS)),
      (clues, "Counts: " + ", ".join(f"{split} {n(counts[split]['jeopardy'])}"
                                     for split in SPLITS)),
      (swap, f"QA {sum(swapped['nq'].values())} (" + ", ".join(
          f"{t} {swapped['nq'][t]}" for t in questions.TYPES[1:]) + ")"),
      (swap, f"FEVER {swapped['fever'][fever.SUPPORTS] + swapped['fever'][fever.REFUTES]} "
             f"({swapped['fever'][fever.SUPPORTS]} REFUTES -> SUPPORTS, "
             f"{swapped['fever'][fever.REFUTES]} SUPPORTS -> REFUTES)"),
      (swap, f"Jeopardy {swapped['jeopardy']}; {counts['corpus']['swapped_passages']} "
             "passages change"),
  ]
  for module, phrase in phrases:
    assert phrase in " ".join(module.__doc__.split()), (module.__name__, phrase)


def test_page_names_read_back_to_their_titles():
  for title in ("Savages (2012 film)", "Star Wars: Episode IV", "Apology (Plato)",
                "Ohm's law", "[Square] {curly}", "Nikolaj Coster-Waldau", "Python"):
    page = fever.page_name(title)
    assert " " not in page and fever.normalize_title(page) == title, page
  assert fever.page_name("Savages (2012 film)") == "Savages_-LRB-2012_film-RRB-"
  assert fever.page_name("Star Wars: Episode IV") == "Star_Wars-COLON-_Episode_IV"


def test_the_cache_directory_is_named_by_what_the_files_depend_on(root, tmp_path, monkeypatch):
  name = cache.name()
  assert re.fullmatch(r"wiki-tasks-[0-9a-f]{12}", name)
  asset = assets.ASSETS[wiki_text.ASSET]
  monkeypatch.setitem(assets.ASSETS, wiki_text.ASSET, dataclasses.replace(asset, version="0"))
  assert cache.name.__wrapped__() != name  # another version of the asset, another name
  monkeypatch.undo()
  assert cache.name.__wrapped__() == name
  # An existing directory under the name is what `ensure` and `resolve` give, unbuilt.
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path))
  (tmp_path / name).symlink_to(root, target_is_directory=True)
  assert cache.ensure() == tmp_path / name
  path = cache.resolve("wiki-tasks:nq/{split}.json")
  assert path == str(tmp_path / name / "nq" / "{split}.json")
  assert cache.resolve("/data/nq") == "/data/nq"


@pytest.mark.slow
def test_two_builds_are_the_same_bytes(root, tmp_path):
  """The second build is the command line's, in a process with another hash seed: an order
  taken from a set or dict of strings would differ between the two."""
  seed = "456" if os.environ.get("PYTHONHASHSEED") == "123" else "123"
  again = tmp_path / "again"
  run = subprocess.run([sys.executable, "-m", "rag_jax.data.wiki", "--out", str(again)],
                       env=dict(os.environ, PYTHONHASHSEED=seed), capture_output=True, text=True,
                       cwd=pathlib.Path(cache.__file__).parents[3], check=False)
  assert run.returncode == 0, run.stderr
  names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
  assert names == sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file())
  match, mismatch, errors = filecmp.cmpfiles(root, again, names, shallow=False)
  assert not mismatch and not errors and len(match) == len(names)
  assert cache.ensure(root) == root  # an existing directory is kept as it is
