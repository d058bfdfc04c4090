"""rag_jax.evaluate on every task's `:tiny` config: the three files with the task's metric names,
metrics.json equal to rag_jax.evaluate.metrics recomputed from predictions.jsonl, the eval k apart from
the training k, the paper's decoding per task and kind, BM25 retrieval equal to bm25s's own, a
frozen query encoder left bit for bit while the generator moves, `--init` from a train
checkpoint reproducing that run's final eval (and starting WQ from NQ) or from an HF RAG
checkpoint giving the model it holds, and bad input in one line.

One process evaluates every task (the tiny QA tasks share one model shape, so their decoders
compile once), after one short training run that several tests read.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from conftest import run_commands, subprocess_env
from conftest import task_config as config
from rag_jax.data import tiny
from rag_jax.evaluate import metrics
from rag_jax.index import bm25
from rag_jax.index import corpus
from rag_jax.train import loop
from rag_jax.train import predict
from rag_jax.train import setup

ROOT = pathlib.Path(__file__).resolve().parent.parent
TASKS = ("nq", "tqa", "wq", "ct", "msmarco", "jeopardy", "fever")
# Each task's scores: its metrics, and recall@k where its tiny data names gold articles.
NAMES = {"nq": {"exact_match", "f1", "answer_in_top_k", "recall_at_k"},
         "tqa": {"exact_match", "f1", "answer_in_top_k"},
         "wq": {"exact_match", "f1", "answer_in_top_k"},
         "ct": {"regex_match", "answer_in_top_k"},
         "msmarco": {"bleu1", "rouge_l"},
         "jeopardy": {"q_bleu1", "bleu1"},
         "fever": {"label_accuracy", "recall_at_k"}}
ALWAYS = {"examples", "labelled", "entropy", "distinct_top1"}


def read(workdir):
  records = [json.loads(l) for l in (workdir / "predictions.jsonl").read_text().splitlines()]
  return records, json.loads((workdir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """tiny NQ trained 2 steps with its query encoder frozen, evaluated at the end."""
  workdir = tmp_path_factory.mktemp("nq-train")
  out = loop.train_and_evaluate(config("nq", **{
      "num_train_steps": 2, "log_every_steps": 1, "eval_every_steps": 2,
      "checkpoint_every_steps": 2, "retrieval.freeze_query_encoder": True}), workdir)
  return workdir, out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained):
  """Every task's tiny config evaluated on dev, WQ from the trained NQ run (as the paper starts
  WQ from NQ), the rest from the config's model; MS MARCO as RAG-Sequence (fast decoding, 4
  beams), the rest as RAG-Token (Jeopardy: beam search)."""
  root = tmp_path_factory.mktemp("eval")
  init = {"wq": str(trained[0])}
  # The QA-style tasks share the tiny model, so NQ's index (built by the training run) serves
  # them as a saved index; NQ and FEVER build their own.
  index = {"retrieval.index": str(trained[0] / "index")}
  overrides = {"tqa": index, "wq": index, "ct": index, "jeopardy": index,
               "msmarco": {"rag.kind": "sequence", **index}}
  out = {}
  for task in TASKS:
    task_config = config(task, **overrides.get(task, {}))
    scores = predict.evaluate_config(task_config, root / task, init=init.get(task),
                                     progress=False)
    out[task] = (predict.eval_directory(task_config, root / task, init=init.get(task)), scores)
  return out


@pytest.mark.slow
def test_every_task_writes_the_three_files_with_its_metric_names(evaluated):
  for task, (workdir, scores) in evaluated.items():
    assert sorted(p.name for p in workdir.iterdir() if p.is_file()) == [
        "metrics.json", "predictions.jsonl", "report.md"], task
    records, summary = read(workdir)
    assert set(summary["metrics"]) == NAMES[task] | ALWAYS, task
    assert summary["metrics"] == pytest.approx(scores)
    assert summary["task"] == task and summary["split"] == "dev"
    assert len(records) == scores["examples"] == scores["labelled"] > 0, task
    report = (workdir / "report.md").read_text()
    assert all(f"| {name} |" in report for name in NAMES[task]), task
    decoding = {"msmarco": "fast", "jeopardy": "beam"}.get(task, "greedy")
    assert summary["decoding"] == decoding, task
  # Under WORKDIR/eval/<split>_<step>: WQ from the NQ run's step 2 (its checkpoint fit WQ's
  # model), the rest from the config's model as it starts.
  assert {task: d.name for task, (d, _) in evaluated.items()} == {
      task: "dev_2" if task == "wq" else "dev_0" for task in TASKS}


@pytest.mark.slow
def test_metrics_json_is_rag_jax_metrics_of_predictions_jsonl(evaluated):
  passages = list(corpus.read_passages(tiny.PASSAGES))
  for task, (workdir, _) in evaluated.items():
    records, summary = read(workdir)
    k = summary["k"]
    got = summary["metrics"]
    predictions = [r["prediction"] for r in records]
    golds = [r["gold"] for r in records]
    texts = [[passages[p["row"]]["text"] for p in r["passages"]] for r in records]
    want = {
        "exact_match": lambda: metrics.exact_match(predictions, golds),
        "f1": lambda: metrics.f1(predictions, golds),
        "regex_match": lambda: metrics.regex_match(predictions, golds),
        "bleu1": lambda: metrics.bleu1(predictions, golds),
        "rouge_l": lambda: metrics.rouge_l(predictions, golds),
        "q_bleu1": lambda: metrics.q_bleu1(predictions, golds),
        "label_accuracy": lambda: metrics.label_accuracy(predictions, [g[0] for g in golds]),
        "answer_in_top_k": lambda: metrics.answer_in_top_k(texts, golds, k,
                                                           regex=task == "ct"),
        "recall_at_k": lambda: metrics.recall_at_k(
            [[p["title"] for p in r["passages"]] for r in records],
            [r["gold_titles"] for r in records], k),
    }
    for name in NAMES[task]:
      assert got[name] == pytest.approx(want[name](), abs=1e-9), (task, name)
    priors = [np.array([p["prior"] for p in r["passages"]]) for r in records]
    assert got["entropy"] == pytest.approx(np.mean([-(p * np.log(p)).sum() for p in priors]))
    assert got["distinct_top1"] == len({r["passages"][0]["row"] for r in records})
    # p(z|x), and the answer's posterior (RAG-Sequence's p(z|x,y) on MS MARCO, the mean of
    # RAG-Token's per-token ones elsewhere), are distributions over the passages.
    for r in records:
      for field in ("prior", "posterior"):
        assert sum(p[field] for p in r["passages"]) == pytest.approx(1, abs=1e-5), (task, field)


@pytest.mark.slow
def test_eval_k_is_not_the_training_k(evaluated):
  for task, (workdir, _) in evaluated.items():
    records, summary = read(workdir)
    c = config(task)
    assert c.retrieval.k == 3 and c.eval_k == 0  # 0: the task's eval_paper k, 4 in :tiny
    assert summary["k"] == 4, task
    assert all(len(r["passages"]) == 4 for r in records), task
  # The paper's settings by kind, and an explicit eval_k over them.
  qa, gen = config("nq"), config("msmarco")
  for c, kind, want in ((qa, "token", (4, "greedy", 1)), (qa, "sequence", (4, "thorough", 1)),
                        (gen, "token", (4, "beam", 4)), (gen, "sequence", (4, "fast", 4))):
    c.rag.kind = kind
    s = setup.decode_settings(c)
    assert (s["k"], s["decoding"], s["num_beams"]) == want
  qa.eval_k = 7
  assert setup.decode_settings(qa)["k"] == 7


def test_bm25_returns_what_bm25s_returns():
  import bm25s  # pylint: disable=import-outside-toplevel
  passages = list(corpus.read_passages(tiny.PASSAGES))
  questions = ["where does the alpha river end?", "who is the mayor of oak bay?", "zzz"]
  scores, ids = bm25.BM25Search(passages).search(questions, 5)
  direct = bm25s.BM25()
  direct.index(bm25s.tokenize([f"{p['title']} {p['text']}" for p in passages], stopwords="en",
                              show_progress=False), show_progress=False)
  want_ids, want_scores = direct.retrieve(bm25s.tokenize(questions, stopwords="en",
                                                         show_progress=False),
                                          k=5, show_progress=False)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(scores, want_scores)
  assert passages[ids[0, 0]]["title"] == "Alpha River"


def test_bm25_mode_retrieves_bm25s_passages_with_its_scores_as_priors(tmp_path):
  predict.evaluate_config(config("ct", **{"retrieval.mode": "bm25"}), tmp_path, progress=False)
  records, _ = read(tmp_path / "eval" / "dev_0")
  passages = list(corpus.read_passages(tiny.PASSAGES))
  scores, ids = bm25.BM25Search(passages).search([r["question"] for r in records], 4)
  np.testing.assert_array_equal([[p["row"] for p in r["passages"]] for r in records], ids)
  want = np.exp(scores - scores.max(axis=1, keepdims=True))
  np.testing.assert_allclose([[p["prior"] for p in r["passages"]] for r in records],
                             want / want.sum(axis=1, keepdims=True), rtol=1e-5)


@pytest.mark.slow
def test_frozen_query_encoder_is_bit_identical_while_the_generator_moves(trained):
  workdir, out = trained
  from rag_jax.model import RagModel  # pylint: disable=import-outside-toplevel
  start = RagModel.from_parts(workdir / "tiny_model" / "question_encoder",
                              workdir / "tiny_model" / "generator").params
  params = out["state"].params
  for a, b in zip(jax.tree.leaves(params["question_encoder"]),
                  jax.tree.leaves(start["question_encoder"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
           zip(jax.tree.leaves(params["generator"]), jax.tree.leaves(start["generator"]))]
  assert max(moved) > 1e-4


@pytest.mark.slow
def test_init_from_the_train_checkpoint_reproduces_its_final_eval(trained, tmp_path):
  workdir, out = trained
  scores = predict.evaluate_config(config("nq"), tmp_path, init=str(workdir), progress=False)
  assert {f"eval/{k}": v for k, v in scores.items()} == {
      k: v for k, v in out.items() if k.startswith("eval/")}
  train_records, _ = read(workdir / "eval" / "step_2")
  records, summary = read(tmp_path / "eval" / "dev_2")
  assert records == train_records and summary["model"] == str(workdir)


def _as_hf_rag(tiny_model: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """rag_jax.weights.tiny's two checkpoints as one HF RAG checkpoint (RagModel.from_pretrained's
  layout: one config.json, weights under rag.question_encoder. and rag.generator., a
  tokenizer directory for each)."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel
  out.mkdir()
  config, state = {"model_type": "rag"}, {}
  for part, prefix in (("question_encoder", "rag.question_encoder."),
                       ("generator", "rag.generator.")):
    config[part] = json.loads((tiny_model / part / "config.json").read_text())
    weights = safetensors.numpy.load_file(str(tiny_model / part / "model.safetensors"))
    state.update({prefix + k: v for k, v in weights.items()})
    shutil.copytree(tiny_model / part, out / f"{part}_tokenizer",
                    ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
  (out / "config.json").write_text(json.dumps(config))
  safetensors.numpy.save_file(state, str(out / "model.safetensors"))
  return out


@pytest.mark.slow
def test_init_from_an_hf_rag_checkpoint_is_the_model_it_holds(evaluated, tmp_path):
  eval_dir, scores = evaluated["nq"]  # the config's own tiny model, no init
  workdir = eval_dir.parents[1]
  rag = _as_hf_rag(workdir / "tiny_model", tmp_path / "rag")
  got = predict.evaluate_config(config("nq", **{"retrieval.index": str(workdir / "index")}),
                                tmp_path / "out", init=str(rag), progress=False)
  assert got == scores
  assert read(tmp_path / "out" / "eval" / "dev_rag")[0] == read(eval_dir)[0]


@pytest.mark.slow
def test_bad_input_is_one_line_and_nonzero(tmp_path):
  cases = {"--split=train2": "unknown split 'train2'",
           f"--init={tmp_path / 'nothing'}": "no such checkpoint"}
  runs = run_commands("rag_jax.evaluate", [
      ("--config", str(ROOT / "experiments" / "nq.py") + ":tiny", "--workdir",
       str(tmp_path / "w"), arg) for arg in cases], env=subprocess_env(1))
  for (arg, message), proc in zip(cases.items(), runs):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (arg, proc.stderr)
