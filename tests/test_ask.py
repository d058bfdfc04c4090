"""The main job end to end on real weights and real text (a slice of the corpus)."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from experiments import wiki_retrieval
from rag_jax import ask
from rag_jax import assets
from rag_jax.encoder import TextEncoder
from rag_jax.index import saved


def test_retrieve_finds_the_article_a_question_is_about():
  config = wiki_retrieval.get_config("small")
  config.max_passages = 40
  corpus = ask.load_corpus(config.corpus, config.max_passages)
  # Questions written from three articles' leads; each must retrieve its article first.
  picks = [corpus[3], corpus[17], corpus[31]]
  config.questions = [f"What is {p['title']}?" for p in picks]
  results = ask.retrieve(config, log=lambda *_: None)
  assert [r["hits"][0]["title"] for r in results] == [p["title"] for p in picks]
  for r in results:
    scores = [h["score"] for h in r["hits"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == config.k


def test_exact_search_matches_argsort():
  rng = np.random.default_rng(0)
  q, d = rng.standard_normal((4, 8)), rng.standard_normal((100, 8))
  scores, ids = ask.exact_search(q.astype(np.float32), d.astype(np.float32), k=5)
  expected = np.argsort(-(q @ d.T), axis=1)[:, :5]
  np.testing.assert_array_equal(np.asarray(ids), expected)
  np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(q @ d.T, expected, 1),
                             rtol=1e-5)


def test_unknown_corpus_is_a_clear_error():
  with pytest.raises(ValueError, match="unsupported corpus"):
    ask.load_corpus("asset:nope")


def test_a_negative_passage_limit_is_an_error():
  with pytest.raises(ValueError, match="max_passages must be >= 0"):
    ask.load_corpus("asset:wiki-summaries-en", -5)


def test_no_questions_is_an_error():
  config = wiki_retrieval.get_config("small")
  config.questions = []
  with pytest.raises(ValueError, match="no questions"):
    ask.retrieve(config, log=lambda *_: None)


def test_retrieve_from_a_saved_index(tmp_path):
  """The same questions over a saved index of the same articles: the same top hit."""
  config = wiki_retrieval.get_config("small")
  config.max_passages = 40
  articles = ask.load_corpus(config.corpus, config.max_passages)
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
  results = ask.retrieve(config, log=logs.append)
  assert [r["hits"][0]["title"] for r in results] == [p["title"] for p in picks]
  assert all(len(r["hits"]) == config.k for r in results)
  assert logs[0].startswith(f"loaded {config.index}: ") and "backend exact" in logs[0]
  assert logs[1] == f"questions encoded by {encoder_dir}"
  config.index = str(tmp_path / "nope")
  with pytest.raises(ValueError, match="no such index directory"):
    ask.retrieve(config, log=logs.append)


def test_a_saved_index_checks_its_question_encoder(tmp_path):
  config = wiki_retrieval.get_config("small")
  source = tmp_path / "articles.jsonl"
  source.write_text("".join(json.dumps(a) + "\n" for a in ask.load_corpus(config.corpus, 5)))
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
    ask.retrieve(config, log=lambda m: None)
  # A question encoder of its own (DPR-style) is checked by its dimension only.
  config.query_encoder = str(other)
  assert len(ask.retrieve(config, log=lambda m: None)[0]["hits"]) == config.k
