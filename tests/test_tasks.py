"""The task configs (experiments/*.py on rag_jax/configs/tasks.py), their tiny data
(rag_jax/data/tiny/qa, written by make_qa) and CuratedTrec's training targets: no model runs
here."""

import filecmp
import pathlib
import subprocess
import sys

import pytest

from conftest import task_config
from rag_jax import data as data_lib
from rag_jax.data import dpr
from rag_jax.data import tiny
from rag_jax.evaluate import metrics
from rag_jax.train import setup

ROOT = pathlib.Path(__file__).resolve().parent.parent
TASKS = ("nq", "tqa", "wq", "ct", "msmarco", "jeopardy", "fever")


@pytest.mark.parametrize("task", TASKS)
def test_each_config_checks_and_decodes_as_the_paper(task):
  for arg in ("", "tiny"):
    setup.check_config(task_config(task, arg))
  c = task_config(task, "")
  qa = task in ("nq", "tqa", "wq", "ct")
  want = {"token": (15, "greedy", 1), "sequence": (50, "thorough", 1)} if qa else {
      "token": (10, "beam", 4), "sequence": (10, "fast", 4)}
  if task == "fever":  # the paper gives no test-time k: the training k, decoded greedily
    want = {"token": (5, "greedy", 1), "sequence": (5, "thorough", 1)}
  for kind, settings in want.items():
    c.rag.kind = kind
    s = setup.decode_settings(c)
    assert (s["k"], s["decoding"], s["num_beams"]) == settings, (task, kind)
  doc = (ROOT / "experiments" / f"{task}.py").read_text()
  assert f"--config experiments/{task}.py:tiny" in doc and "rag_jax.evaluate" in doc
  assert all(f"{v:.1f}" in doc for by_kind in c.paper.values() for v in by_kind.values())
  assert task_config(task, "").init == ("runs/nq" if task in ("wq", "ct") else "")
  with pytest.raises(ValueError, match="unknown config variant 'huge'"):
    task_config(task, "huge")


def test_bad_eval_settings_are_one_line_errors():
  c = task_config("nq")
  c.eval_decoding = "fast"
  with pytest.raises(setup.SetupError, match="rag.kind='token' decodes with one of"):
    setup.check_config(c)
  c = task_config("nq", metrics=["exact_match", "bleu4"])
  with pytest.raises(setup.SetupError, match="config metrics="):
    setup.check_config(c)
  with pytest.raises(setup.SetupError, match="no test split"):
    setup.split_name(task_config("fever"), "test")
  with pytest.raises(setup.SetupError, match="unknown split 'val'"):
    setup.split_name(task_config("nq"), "val")


def test_tiny_qa_make_regenerates_the_committed_files(tmp_path):
  subprocess.run([sys.executable, "-m", "rag_jax.data.tiny.make_qa", "--out", str(tmp_path)],
                 check=True)
  made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
  committed = sorted(p.relative_to(tiny.QA) for p in tiny.QA.rglob("*") if p.is_file())
  assert made == committed
  for name in made:
    assert filecmp.cmp(tmp_path / name, tiny.QA / name, shallow=False), name


def test_tiny_qa_tasks_read_and_are_answerable_from_their_passages():
  passages = tiny.PASSAGES.read_text()
  vocab = set((tiny.QA / "vocab.txt").read_text().split())
  for task in ("nq", "tqa", "wq", "ct", "msmarco", "jeopardy"):
    c = task_config(task)
    assert c.model.tiny_vocab == str(tiny.QA / "vocab.txt")  # one model shape for all
    for split in ("train", "dev", "test"):
      examples = data_lib.read(c.data.kind, c.data.path, setup.split_name(c, split))
      assert len(examples) == {"train": 40, "dev": 12, "test": 12}[split], (task, split)
      # CuratedTrec's targets are patterns; it trains on what they match in the passages.
      targets = [] if task == "ct" else [t for e in examples for t in e.targets]
      assert set(data_lib.words([e.source for e in examples] + targets)) <= vocab, task
      for e in examples:
        if task == "ct":
          assert metrics.has_answer(passages, e.targets, regex=True), e
        elif task in ("nq", "tqa", "wq"):
          assert e.targets[0] in passages, e
  nq = data_lib.read("dpr_qa", tiny.QA / "biencoder-nq-{split}.json", "dev")
  assert all(len(e.gold_titles) == 1 for e in nq)  # recall@k has something to find


@pytest.mark.parametrize("pattern, text", [
    (r"(Richard\s+(M\.\s+|Milhous\s+)?)?Nixon", "Nixon"),
    (r"5,?280", "5280"),
    (r"April\s+(14|15),?\s+1912", "April 14 1912"),
    (r"[Cc]olou?r", "Color"),
    (r"Ronald (Wilson )?Reagan", "Ronald Reagan"),
    (r"^the\s+(North|South)\s+Pole$", "the North Pole"),
])
def test_expand_pattern_fills_what_the_pattern_leaves_open(pattern, text):
  assert dpr.expand_pattern(pattern) == text
  assert metrics.regex_match_score(text, [pattern]) == 1.0


def test_regex_target_is_the_most_frequent_match_in_the_passages():
  pattern = r"(Richard\s+(M\.\s+|Milhous\s+)?)?Nixon"
  plain = ["Nixon resigned.", "President Nixon spoke."]
  full = ["He met Richard Nixon in 1972.", "Richard Milhous Nixon was born in Yorba Linda."]
  assert dpr.regex_target([pattern], plain + full[:1]) == "Nixon"
  assert dpr.regex_target([pattern], plain[:1] + full[:1] + ["Richard  Nixon"]) == "Richard Nixon"
  assert dpr.regex_target([pattern], full[1:] + plain[:1]) == "Richard Milhous Nixon"  # a tie
  assert dpr.regex_target([r"5,?280"], ["no numbers here"]) == "5280"
