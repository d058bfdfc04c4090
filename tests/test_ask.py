"""The main job end to end on real weights and real text (a slice of the corpus)."""

import numpy as np
import pytest

from experiments import wiki_retrieval
from rag_jax import ask


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
