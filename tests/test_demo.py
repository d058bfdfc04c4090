"""The `:wiki` demos' runner (rag_jax.train.demo): every part on tiny models over the real derived
tasks, and the hot-swap share on hand-made records."""

import json
import pytest

from conftest import task_config
from rag_jax.data.wiki import swap as wiki_swap
from rag_jax.train import demo
from rag_jax.train import setup


def _records(directory):
  return [json.loads(l) for l in (directory / "predictions.jsonl").read_text().splitlines()]


def test_follows_counts_outputs_that_give_the_changed_fact():
  old = {"How many moons?": ["55"], "Which year?": ["1950"]}
  records = [
      {"question": "How many moons?", "prediction": "It has 45.", "gold": ["45"]},
      {"question": "How many moons?", "prediction": "55", "gold": ["45"]},
      {"question": "Which year?", "prediction": "In 1850, the", "gold": ["1850"]},
      {"question": "Which year?", "prediction": "1950", "gold": ["1850"]}]
  assert demo.follows(records, old, fever=False) == 50.0
  claims = [{"question": "c", "prediction": "false", "gold": ["false"]},
            {"question": "d", "prediction": "true", "gold": ["false"]}]
  assert demo.follows(claims, {}, fever=True) == 50.0
  # A clue: the words of the new gold that the old one lacks must all be in the output.
  old = {"Spanish-American War": ["This war was fought in 1898."]}
  records = [{"question": "Spanish-American War", "prediction": "This war was fought in 1798",
              "gold": ["This war was fought in 1798."]}]
  assert demo.follows(records, old, fever=False) == 100.0
  records[0]["prediction"] = "This war was fought in 1898"
  assert demo.follows(records, old, fever=False) == 0.0


def test_gold_articles_are_the_gold_titles_or_a_clues_answer():
  from rag_jax.data import Example  # pylint: disable=import-outside-toplevel
  claims = [Example("1", "Oslo is in Norway.", ("true",), ("Oslo",)),
            Example("2", "Atlantis sank.", ("unknown",))]  # NOT ENOUGH INFO: no article
  assert demo.gold_articles("fever", claims) == [("Oslo",), ()]
  clues = [Example("3", "Oslo", ("This capital ...",))]
  assert demo.gold_articles("jeopardy", clues) == [("Oslo",)]


@pytest.mark.slow
def test_tiny_demo_trains_both_models_and_measures_every_table(tmp_path, capsys):
  """nq.py:wiki with a tiny DPR + Llama in place of MiniLM + SmolLM2: the real derived tasks,
  indexes and hot swap, a few steps."""
  config = task_config("nq", "wiki", **{
      "model.tiny": True, "model.tiny_generator": "llama", "model.train_generator_layers": 1,
      "retrieval.doc_encoder": "", "rag.max_combined_length": 48, "num_train_steps": 4,
      "log_every_steps": 2, "checkpoint_every_steps": 4, "eval_every_steps": 4,
      "data.max_train_examples": 16, "data.max_eval_examples": 4,
      "demo.max_test_examples": 8, "demo.max_swapped_examples": 6})
  figures = demo.run(config, tmp_path)
  assert json.loads((tmp_path / "demo.json").read_text()) == json.loads(json.dumps(figures))
  for model in ("rag", "closed_book"):
    assert figures["scores"][model]["examples"] == 8
    # evaluate's directory: eval/<split>_<step> of the step it evaluated
    assert (tmp_path / model / "test" / "eval" / "test_4" / "predictions.jsonl").is_file()
  # The demo's search with the trained encoder finds what evaluate's found, passage by passage.
  rag_test = _records(tmp_path / "rag" / "test" / "eval" / "test_4")
  assert figures["retrieved_titles"]["learned"] == [[p["title"] for p in r["passages"]]
                                                    for r in rag_test]
  assert figures["recall_at_k"]["learned"] == figures["scores"]["rag"]["recall_at_k"]
  assert len(figures["retrieved_titles"]["frozen"]) == 8
  # The hot swap is scored on the changed facts' new golds, over the old and the new index.
  swapped = setup.read_examples(
      setup.override(config, **{"data.test_split": wiki_swap.SWAPPED}), "test")[:6]
  old = {e.source: list(e.targets) for e in setup.read_examples(config, "test")}
  assert figures["hot_swap"]["examples"] == 6
  for when in ("before", "after"):
    records = _records(tmp_path / "rag" / f"swap_{when}" / "eval" / "test_4")
    assert [r["gold"] for r in records] == [list(e.targets) for e in swapped]
    assert all(r["passages"] for r in records)
    assert figures["hot_swap"][when] == demo.follows(records, old, fever=False)
  assert not any(r["passages"] for r in _records(tmp_path / "closed_book" / "test" / "eval" /
                                                  "test_4"))
  assert "recall_at_k" not in figures["scores"]["closed_book"]
  printed = capsys.readouterr().err
  assert "| RAG |" in printed and 0 < figures["wall_seconds"] < 3600
  minutes, seconds = divmod(round(figures["wall_seconds"]), 60)
  assert f"4 steps of 4; {minutes} min {seconds} s)" in printed


def test_every_wiki_demo_config_is_valid_and_uses_the_embedded_assets():
  from rag_jax.train import setup  # pylint: disable=import-outside-toplevel
  for task in ("fever", "nq", "jeopardy"):
    config = task_config(task, "wiki")
    setup.check_config(config)
    assert config.model.generator == "asset:smollm2-135m-instruct", task
    assert config.model.question_encoder == config.retrieval.doc_encoder == (
        "asset:all-MiniLM-L6-v2"), task
    assert config.data.path.startswith("wiki-tasks:") and config.retrieval.cache_index, task
    assert 0 < config.model.train_generator_layers < 30 and "demo" in config, task
  # What each task's `wiki` dict sets beyond the defaults (configs/tasks.py, `_wiki`).
  fever, nq = task_config("fever", "wiki"), task_config("nq", "wiki")
  assert (fever.learning_rate, fever.question_encoder_lr_scale) == (1e-3, 0.01)
  assert (fever.demo.max_test_examples, fever.demo.max_swapped_examples) == (96, 24)
  assert (nq.learning_rate, nq.question_encoder_lr_scale, nq.demo.max_swapped_examples) == (
      1e-4, 1.0, 64)
  assert task_config("jeopardy", "wiki").demo.max_swapped_examples == 24
