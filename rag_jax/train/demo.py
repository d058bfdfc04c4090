"""The demos on the embedded Wikipedia: `python -m rag_jax.train --config experiments/TASK.py:wiki`
for fever, nq and jeopardy (`tasks.config`'s `:wiki` variant; the data from
rag_jax.data.wiki, split by article, so that no test article was trained on).

`run(config, workdir)`:

1. RAG: MiniLM as the query encoder and SmolLM2-135M-Instruct as the generator (its top
   layers), trained jointly over the frozen MiniLM index (WORKDIR/rag), then scored on the
   test split.
2. Closed book: the same generator trained the same way on the prompts less their passages
   (`retrieval.mode=none`, WORKDIR/closed_book), scored on the same test split.
3. Retrieval: recall@k of the gold article over the test split, with the query encoder as it
   starts (frozen) and as RAG trained it.
4. Hot swap: the trained RAG model over the index of `passages_swapped.tsv`, in which the test
   facts of `test_swapped` were changed, with no retraining: the share of those examples whose
   output follows the new fact, before the swap (the old index) and after it.

It prints the tables (markdown) and writes them with every figure to WORKDIR/demo.json.
"""

import json
import pathlib
import sys
import time
from typing import Any, Dict, List, Tuple

import jax
import numpy as np

from rag_jax import distributed
from rag_jax import files
from rag_jax.data.wiki import swap as wiki_swap
from rag_jax.evaluate import evaluation
from rag_jax.evaluate import metrics
from rag_jax.train import input_pipeline
from rag_jax.train import loop
from rag_jax.train import predict
from rag_jax.train import retrieval as retrieval_lib
from rag_jax.train import setup
from rag_jax.train import step as step_lib


def retrieved_titles(run: setup.Run, retriever: retrieval_lib.BatchRetriever, params,
                     k: int) -> List[List[str]]:
  """The titles of the top `k` passages of each of `run.eval`'s examples, retrieved with the
  query encoder of `params` (the search evaluation does; no decoding)."""
  n, titles = len(run.eval.examples), []
  for rows in evaluation.iterate_eval(n, run.config.eval_batch_size):
    batch = retriever(params, input_pipeline.gather(run.eval.arrays, rows), replicated=True,
                      k=k)
    for row in distributed.to_host(batch["doc_ids"]):
      titles.append([run.index.passages[int(i)]["title"] for i in row if i >= 0])
  return titles[:n]


def gold_articles(kind: str, examples) -> List[Tuple[str, ...]]:
  """The titles recall@k looks for, per example: its gold titles; a Jeopardy example names
  none, but its source (the answer) is the article's title. A FEVER claim of NOT ENOUGH
  INFO has none, and recall@k leaves it out."""
  if kind == "jeopardy":
    return [tuple(e.gold_titles) or (e.source,) for e in examples]
  return [tuple(e.gold_titles) for e in examples]


def _records(directory: pathlib.Path) -> List[Dict[str, Any]]:
  lines = (directory / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
  return [json.loads(line) for line in lines]


def follows(records: List[Dict[str, Any]], old: Dict[str, List[str]], fever: bool) -> float:
  """The share (%) of predictions that give the new fact of their example: FEVER, the new
  label (label accuracy against the new labels); otherwise every word of the new gold that
  its old gold lacks (the changed value) in the prediction, with SQuAD's normalisation.
  `old`: the old golds by question."""
  if fever:
    return metrics.label_accuracy([r["prediction"] for r in records],
                                  [r["gold"][0] for r in records])
  hits = []
  for r in records:
    before = set(metrics.normalize_answer(" ".join(old.get(r["question"], []))).split())
    changed = [w for w in metrics.normalize_answer(r["gold"][0]).split() if w not in before]
    said = set(metrics.normalize_answer(r["prediction"]).split())
    hits.append(bool(changed) and all(w in said for w in changed))
  return 100.0 * float(np.mean(hits)) if hits else float("nan")


def run(config, workdir) -> Dict[str, Any]:
  """The demo of a `:wiki` config (the module docstring); returns its figures."""
  started = time.time()
  workdir = setup.prepare_workdir(workdir)
  d = config.demo
  rag_dir, closed_dir = workdir / "rag", workdir / "closed_book"
  closed = setup.override(config, **{"retrieval.mode": "none"})
  losses = {}
  for name, c, directory in (("rag", config, rag_dir), ("closed_book", closed, closed_dir)):
    out = loop.train_and_evaluate(c, directory)
    if out["ended"] != "finished":
      raise loop.TrainingError(f"the {name} run was {out['ended']} at step {out['step']}; "
                               "run the demo again to resume it")
    losses[name] = loop.last_logged(directory, "loss")
  test = {"data.max_eval_examples": d.max_test_examples}
  scores = {
      "rag": predict.evaluate_config(setup.override(config, **test), rag_dir / "test",
                                     "test", init=str(rag_dir)),
      "closed_book": predict.evaluate_config(setup.override(closed, **test),
                                             closed_dir / "test", "test",
                                             init=str(closed_dir))}

  # Retrieval before and after training, on the same test questions.
  k = setup.decode_settings(config)["k"]
  start = setup.build(setup.override(config, **test), workdir / "retrieval",
                      split="test", train=False)
  learned = setup.restore_params(setup.checkpoints_in(rag_dir), start.state.params,
                                 start.mesh)
  gold = gold_articles(config.data.kind, start.eval.examples)
  steps = step_lib.make_steps(start.rag, start.tx, start.step_config, start.state_sharding)
  retriever = retrieval_lib.BatchRetriever.of(start, steps)
  titles = {"frozen": retrieved_titles(start, retriever, start.state.params, k),
            "learned": retrieved_titles(start, retriever, learned, k)}
  retrieval = {name: metrics.recall_at_k(found, gold, k) for name, found in titles.items()}
  del start, learned, retriever, steps

  # The hot swap: the examples whose fact changed, over the old index and over the new one.
  fever = config.data.kind == "fever"
  swapped = {"data.test_split": wiki_swap.SWAPPED,
             "data.max_eval_examples": d.max_swapped_examples}
  # The predictions are read back from process 0's files: the figures are process 0's.
  main = jax.process_index() == 0
  old_golds = {e.source: list(e.targets) for e in setup.read_examples(config, "test")}
  swap = {}
  for name, passages in (("before", config.retrieval.passages),
                         ("after", "wiki-tasks:passages_swapped.tsv")):
    out, swap_config = rag_dir / f"swap_{name}", setup.override(
        config, **swapped, **{"retrieval.passages": passages})
    scored = predict.evaluate_config(swap_config, out, "test", init=str(rag_dir))
    records = _records(predict.eval_directory(swap_config, out, "test", init=str(rag_dir)))
    swap[name] = follows(records, old_golds, fever) if main else float("nan")
  swap["examples"] = int(scored["examples"])

  figures = {"task": config.task, "metric": config.metrics[0], "test_examples":
             int(scores["rag"]["examples"]),
             "train_steps": config.num_train_steps, "batch_size": config.batch_size,
             "scores": scores, "recall_at_k": retrieval, "k": k, "retrieved_titles": titles,
             "hot_swap": swap,
             "final_loss": losses,
             # This invocation's: a resumed demo skips the runs that finished.
             "wall_seconds": time.time() - started}
  if main:
    files.write_json(workdir / "demo.json", figures)
    print(tables(figures), file=sys.stderr)
  return figures


def tables(f: Dict[str, Any]) -> str:
  """The demo's three tables, markdown."""
  metric, s = f["metric"], f["scores"]
  minutes, seconds = divmod(round(f["wall_seconds"]), 60)
  lines = [f"## {f['task']}:wiki, test split ({f['test_examples']} examples; "
           f"{f['train_steps']} steps of {f['batch_size']}; {minutes} min {seconds} s)", "",
           f"| model | {metric} | final train loss |", "|---|---|---|"]
  for name, label in (("rag", "RAG"), ("closed_book", "closed book, trained the same way")):
    loss = f["final_loss"][name]
    lines.append(f"| {label} | {s[name][metric]:.1f} | "
                 f"{'-' if loss is None else f'{loss:.3f}'} |")
  r, h = f["recall_at_k"], f["hot_swap"]
  lines += ["", f"| query encoder | recall@{f['k']} of the gold article |", "|---|---|",
            f"| frozen (MiniLM as it starts) | {r['frozen']:.1f} |",
            f"| learned (trained with RAG) | {r['learned']:.1f} |", "",
            f"| hot swap ({h['examples']} changed facts) | outputs that follow the new fact |",
            "|---|---|", f"| old index | {h['before']:.1f}% |",
            f"| swapped index, no retraining | {h['after']:.1f}% |"]
  return "\n".join(lines)
