"""The main job end to end on real weights and real text (a slice of the corpus): one search
route (a saved index) for the embedded corpus and for `index build`, with the same passages;
bad questions and k refused; the `:small` sample; the dev set."""

import io
import json
import math
import pathlib
import shutil
import sys

import numpy as np
import pytest

from rag_jax import assets
from rag_jax.ask import questions as ask_questions
from rag_jax.ask import retrieval as ask_retrieval
from rag_jax.configs import wiki as wiki_config
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus
from rag_jax.index import retriever
from rag_jax.index import saved

DEV = pathlib.Path(__file__).parent / "data" / "wiki_dev.jsonl"


@pytest.fixture(scope="module")
def minilm():
  return pathlib.Path(assets.fetch("all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def wiki40_cache(tmp_path_factory):
  """A cache shared by the module's tests of `wiki40`: its index is built once."""
  return tmp_path_factory.mktemp("cache")


@pytest.fixture
def wiki40(wiki40_cache, minilm, monkeypatch):
  """The embedded Wikipedia asset cut to its first 40 articles, in a cache of its own."""
  articles = assets.wiki_summaries()[:40]
  monkeypatch.setenv("RAG_JAX_CACHE", str(wiki40_cache))
  monkeypatch.setitem(corpus.ASSET_CORPORA, "wiki-summaries-en", lambda: articles)
  return {"articles": articles, "cache": wiki40_cache, "encoder": minilm}


def _config(wiki, **overrides):
  config = wiki_config.get_config()
  config.encoder = str(wiki["encoder"])  # the real cache's copy: this module's cache is bare
  config.update(overrides)
  return config


@pytest.mark.slow
def test_ask_and_index_build_find_the_same_passages(wiki40, capsys):
  """`ask` over the embedded corpus and `index build --articles asset:...` + `index search`:
  the same passages (ids) with the same scores; the first run embeds with a progress bar."""
  from rag_jax.index import __main__ as index_cli  # pylint: disable=import-outside-toplevel
  picks = [wiki40["articles"][i] for i in (3, 17, 31)]
  questions = [f"What is {p['title']}?" for p in picks] + ["Which river flows north?"]
  config = _config(wiki40, k=5, questions=questions)
  logs = []
  results = ask_retrieval.retrieve(config, log=logs.append, progress=True)
  bar = capsys.readouterr().err
  assert "embedding" in bar and "passage/s" in bar  # tqdm, on stderr
  assert logs[0].startswith("building the index of ")
  assert [r["hits"][0]["title"] for r in results[:3]] == [p["title"] for p in picks]

  out = wiki40["cache"] / "built"
  assert index_cli.main(["build", "--articles", "asset:wiki-summaries-en", "--encoder",
                         str(wiki40["encoder"]), "--out", str(out), "--backend", "exact",
                         "--dtype", "float32", "--no-progress"]) == 0
  capsys.readouterr()
  args = ["search", "--index", str(out), "-k", "5", "--json"]
  for q in questions:
    args += ["--query", q]
  assert index_cli.main(args) == 0
  searched = [json.loads(line) for line in capsys.readouterr().out.splitlines()[-4:]]
  for mine, theirs in zip(results, searched):
    assert [h["id"] for h in mine["hits"]] == [h["id"] for h in theirs["hits"]]
    np.testing.assert_allclose([h["score"] for h in mine["hits"]],
                               [h["score"] for h in theirs["hits"]], atol=1e-5)
    assert all("-" in h["id"] for h in mine["hits"])  # line-chunk ids of articles

  logs = []  # a second run loads the cached index
  again = ask_retrieval.retrieve(config, log=logs.append, progress=True)
  assert not any(m.startswith("building") for m in logs) and "embedding" not in \
      capsys.readouterr().err
  assert [h["id"] for h in again[0]["hits"]] == [h["id"] for h in results[0]["hits"]]


@pytest.mark.slow
def test_a_long_question_is_truncated_with_a_note(wiki40):
  config = _config(wiki40, questions=["Tell me about rivers. " * 2500, "What is 1?"])
  logs = []
  results = ask_retrieval.retrieve(config, log=logs.append)
  notes = [m for m in logs if m.startswith("note: ")]
  assert len(notes) == 1 and notes[0].startswith("note: question 1 is ")
  assert notes[0].endswith("tokens long; truncated to the encoder's max_length, 256")
  assert len(results) == 2 and len(results[0]["hits"]) == config.k


@pytest.mark.parametrize("questions, message", [
    ([], "no questions"),
    (["What is 1?", ""], "question 2 is empty"),
    ([" \t\n"], "question 1 is blank"),
])
def test_no_empty_or_blank_questions(wiki40, questions, message):
  with pytest.raises(retriever.QuestionError, match=f"^{message}$"):
    ask_retrieval.retrieve(_config(wiki40, questions=questions), log=lambda m: None)


def test_k_above_the_corpus_is_refused_before_embedding(tmp_path, minilm, monkeypatch):
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path))
  articles = [{"title": f"t{i}", "text": f"article number {i}"} for i in range(4)]
  monkeypatch.setitem(corpus.ASSET_CORPORA, "wiki-summaries-en", lambda: articles)
  config = _config({"encoder": minilm}, k=5)
  with pytest.raises(ValueError, match=r"^k=5 exceeds the index's 4 passages$"):
    ask_retrieval.retrieve(config, log=lambda m: None)
  assert not (tmp_path / "indexes").exists()


@pytest.mark.slow
def test_retrieve_from_a_saved_index(tmp_path):
  """The same questions over a saved index of the same articles: the same top hit."""
  config = wiki_config.get_config("small")
  articles = assets.wiki_summaries()[:40]
  source = tmp_path / "articles.jsonl"
  source.write_text("".join(json.dumps(a) + "\n" for a in articles))
  encoder_dir = assets.resolve_spec(config.encoder)
  encoder = TextEncoder.from_pretrained(encoder_dir)
  saved.build_index(source, encoder, encoder_dir, tmp_path / "index", backend="exact",
                    progress=False, log=lambda m: None)
  picks = [articles[3], articles[17], articles[31]]
  config.questions = [f"What is {p['title']}?" for p in picks]
  config.encoder = "/not/used/with/an/index"  # the index names its own
  config.index = str(tmp_path / "index")
  logs = []
  results = ask_retrieval.retrieve(config, log=logs.append)
  assert [r["hits"][0]["title"] for r in results] == [p["title"] for p in picks]
  assert all(len(r["hits"]) == config.k for r in results)
  assert logs[0].startswith(f"loaded {config.index}: ") and "backend exact" in logs[0]
  assert logs[1] == f"questions encoded by {encoder_dir}"
  config.k = 100
  with pytest.raises(ValueError, match=r"^k=100 exceeds the index's \d+ passages$"):
    ask_retrieval.retrieve(config, log=logs.append)
  config.index = str(tmp_path / "nope")
  with pytest.raises(ValueError, match="no such index directory"):
    ask_retrieval.retrieve(config, log=logs.append)


@pytest.mark.slow
def test_a_saved_index_checks_its_question_encoder(tmp_path):
  config = wiki_config.get_config("small")
  source = tmp_path / "articles.jsonl"
  source.write_text("".join(json.dumps(a) + "\n" for a in assets.wiki_summaries()[:5]))
  encoder_dir = pathlib.Path(assets.resolve_spec(config.encoder))
  # The manifest names a copy whose config differs: not the encoder the index was built with.
  other = tmp_path / "other-encoder"
  shutil.copytree(encoder_dir, other)
  settings = json.loads((other / "config.json").read_text())
  (other / "config.json").write_text(json.dumps({**settings, "note": "changed"}))
  saved.build_index(source, TextEncoder.from_pretrained(encoder_dir), encoder_dir,
                    tmp_path / "index", backend="exact", encoder_source=str(other),
                    progress=False, log=lambda m: None)
  config.index = str(tmp_path / "index")
  with pytest.raises(ValueError, match="is not the one the index was built with"):
    ask_retrieval.retrieve(config, log=lambda m: None)
  # A question encoder of its own (DPR-style) is checked by its dimension only.
  config.query_encoder = str(other)
  assert len(ask_retrieval.retrieve(config, log=lambda m: None)[0]["hits"]) == config.k


def test_small_samples_across_the_corpus_with_the_default_answers():
  config = wiki_config.get_config("small")
  sample = [json.loads(line) for line in ask_retrieval.corpus_source(config).read_text().splitlines()]
  titles = [a["title"] for a in sample]
  everything = {a["title"]: i for i, a in enumerate(assets.wiki_summaries())}
  assert len(titles) == 1000 == len(set(titles)) and set(config.include_titles) <= set(titles)
  positions = sorted(everything[t] for t in titles)
  assert positions[-1] > len(everything) * 0.99  # not the first 1,000 titles
  assert max(np.diff(positions)) <= 11  # evenly spread, every ~10th
  assert ask_retrieval.corpus_source(config) == ask_retrieval.corpus_source(config)  # deterministic, written once


def test_sample_articles(tmp_path, monkeypatch):
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path / "cache"))
  source = tmp_path / "a.jsonl"
  source.write_text("\n".join(json.dumps({"title": f"t{i:02d}", "text": "x"})
                             for i in range(100)))  # no newline after the last
  path = ask_retrieval.sample_articles(source, 10, include=["t55", "t99"])
  titles = [json.loads(line)["title"] for line in path.read_text().splitlines()]
  assert titles == ["t00", "t12", "t24", "t36", "t49", "t55", "t62", "t74", "t86", "t99"]
  assert ask_retrieval.sample_articles(source, 100) == source  # no more than it holds: itself
  with pytest.raises(ValueError, match="no article titled 'nope'"):
    ask_retrieval.sample_articles(source, 10, include=["nope"])
  config = wiki_config.get_config()
  config.corpus, config.max_articles = str(source), -1
  with pytest.raises(ValueError, match="max_articles must be >= 0"):
    ask_retrieval.corpus_source(config)


def test_the_dev_set_names_real_articles_and_answers():
  dev = ask_questions.read_dev(DEV)
  articles = {a["title"]: " ".join(a["text"].lower().split()) for a in assets.wiki_summaries()}
  assert len(dev) >= 30 and len({d["question"] for d in dev}) == len(dev)
  for d in dev:
    assert d["title"] in articles, d
    assert " ".join(d["answer"].lower().split()) in articles[d["title"]], d


def test_dev_scores_and_a_bad_dev_file(tmp_path):
  dev = [{"question": "q1", "title": "A", "answer": "red  fox"},
         {"question": "q2", "title": "B"}]
  results = [{"hits": [{"title": "A", "text": "a Red fox"}, {"title": "C", "text": "x"}]},
             {"hits": [{"title": "C", "text": "y"}, {"title": "B", "text": "z"}]}]
  scores = ask_questions.dev_scores(results, dev)
  assert scores == {"article@1": 0.5, "article@k": 1.0, "answer@1": 1.0, "answer@k": 1.0}
  assert math.isnan(ask_questions.dev_scores(results[1:], dev[1:])["answer@1"])
  bad = tmp_path / "dev.jsonl"
  bad.write_text('{"question": "q", "title": "t"}\n{"question": "q"}\n')
  with pytest.raises(ValueError, match="dev.jsonl: line 2: expected"):
    ask_questions.read_dev(bad)


def test_questions_file_dash_reads_standard_input(monkeypatch):
  monkeypatch.setattr(sys, "stdin", io.StringIO("Who painted it?\n\n  Where is it?  \n"))
  assert ask_questions.read_questions("-") == ["Who painted it?", "Where is it?"]
  monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
  with pytest.raises(ValueError, match="^standard input: no questions$"):
    ask_questions.read_questions("-")
