"""Evaluation, one path for `python -m rag_jax.evaluate` and training's periodic eval: retrieve
with the current query encoder (or BM25), decode with the task's test-time settings
(`setup.decode_settings`), score with `rag_jax.evaluate.metrics`, and watch the retriever.

    evaluator = Evaluator(predict_fn, examples, arrays, config, passages, settings=...,
                          split="dev")
    scores = evaluator.run(params, out_dir)   # {"exact_match": ..., "entropy": ..., ...}

A predict function decodes batches of the split's token arrays with the given params:
`predict_fn(params)(arrays) -> {"texts": [B] strings, "doc_ids": [B, Z], "priors": [B, Z],
"posteriors": [B, Z]}` (a model of the params is made once per evaluation);
`rag_jax.train.predict` makes it from a training run's setup, and `evaluate_config` builds
a config's run and evaluates it.

`out_dir` gets three files (process 0, each written atomically):
  * predictions.jsonl: per example {"id", "question", "prediction", "gold" (what the metrics
    score against: answers, CuratedTrec's patterns, FEVER's label word), "gold_titles",
    "passages": [{"row", "id", "title", "prior", "posterior"}]}, best passage first;
    prior = p(z|x); posterior = p(z|x,y) of the prediction for RAG-Sequence, the mean over its
    tokens of p(z|x,y_i,y_<i) for RAG-Token (`RagModel.doc_posteriors`);
  * metrics.json: the settings and {"metrics": scores};
  * report.md: the same in a table beside the paper's figures, and the first predictions.

Scores are `rag_jax.evaluate.metrics`' (percentages) over the examples with gold answers, for the
config's `metrics`; plus `recall_at_k` where examples name gold articles, and what shows a
collapsing retriever (users of HF's RAG report that on FEVER it comes to retrieve the same
passages for every input): `entropy`, the mean entropy of p(z|x) over the k passages (nats),
and `distinct_top1`, the number of distinct top-1 passages.
"""

import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import jax
import numpy as np
import tqdm

from rag_jax import faults
from rag_jax import files
from rag_jax.evaluate import metrics as metrics_lib

FILES = ("predictions.jsonl", "metrics.json", "report.md")
# predict_fn(params)(arrays) -> {"texts", "doc_ids", "priors", "posteriors"} of one batch.
PredictFn = Callable[[Any], Callable[[Dict[str, np.ndarray]], Dict[str, Any]]]


@dataclasses.dataclass
class Evaluator:
  """Decodes a split with a predict function and scores it (the module docstring).

  Attributes:
    predict_fn: one batch's predictions (`PredictFn`).
    examples, arrays: the split's examples and their token arrays, by row.
    config: the task config: `metrics`, `eval_batch_size`, `retrieval.mode`, `task`, `paper`.
    passages: the index's passages, by row.
    settings: how the predictions decode (`setup.decode_settings`), for the report.
    split: "dev" or "test"; data_split: the data's name for it (default: `split`).
  """
  predict_fn: PredictFn
  examples: List[Any]
  arrays: Dict[str, np.ndarray]
  config: Any
  passages: Any
  settings: Dict[str, Any]
  split: str = "dev"
  data_split: str = ""

  def __post_init__(self):
    self.data_split = self.data_split or self.split

  def run(self, params, out_dir=None, *, model_from: str = "",
          progress: bool = True) -> Dict[str, float]:
    """Decodes the split and scores it; with `out_dir`, writes `FILES` there (process 0).

    Args:
      params: {"question_encoder", "generator"} to evaluate.
      out_dir: where the files go (created), or None.
      model_from: what the params are, for the report ("training step 30", a checkpoint).
      progress: a progress bar on stderr (process 0).
    Returns:
      {"examples", "labelled", each of config.metrics, ["recall_at_k"], "entropy",
      "distinct_top1"}; a closed-book run (`retrieval.mode=none`) has no retrieval figures
      (answer_in_top_k, recall_at_k, entropy, distinct_top1).
    """
    records = self.predict(params, progress=progress)
    scores = score(self.config, records, self.settings["k"], self.passages)
    if out_dir is not None and jax.process_index() == 0:
      write(pathlib.Path(out_dir), self, records, scores, model_from)
    return scores

  def predict(self, params, *, progress: bool = True) -> List[Dict[str, Any]]:
    """The prediction records of the split (the module docstring's predictions.jsonl)."""
    n, size = len(self.examples), self.config.eval_batch_size
    decode = self.predict_fn(params)
    texts, ids, priors, posteriors = [], [], [], []
    bar = tqdm.tqdm(total=n, desc=f"eval {self.split}", unit="example", leave=False,
                    dynamic_ncols=True, file=sys.stderr,
                    disable=not progress or jax.process_index() != 0)
    for start, rows in zip(range(0, n, size), iterate_eval(n, size)):
      out = decode({k: v[rows] for k, v in self.arrays.items()})
      texts += out["texts"]
      ids.append(out["doc_ids"])
      priors.append(out["priors"])
      posteriors.append(out["posteriors"])
      bar.update(min(size, n - start))
    bar.close()
    if not n:
      return []
    ids, priors, posteriors = (np.concatenate(a)[:n] for a in (ids, priors, posteriors))
    closed_book = self.config.retrieval.mode == "none"  # its one "passage" is empty
    records = []
    for i, example in enumerate(self.examples):
      records.append({
          "id": example.id, "question": example.source, "prediction": texts[i].strip(),
          "gold": list(example.targets), "gold_titles": list(example.gold_titles),
          "passages": [{"row": int(r), "id": self.passages[int(r)]["id"],
                        "title": self.passages[int(r)]["title"], "prior": float(p),
                        "posterior": float(q)}
                       for r, p, q in zip(ids[i], priors[i], posteriors[i])
                       if r >= 0 and not closed_book]})
    return records


def iterate_eval(num: int, batch_size: int) -> Iterator[np.ndarray]:
  """Eval rows in order, the last batch padded by repeating row 0 (its results dropped)."""
  for start in range(0, num, batch_size):
    rows = np.arange(start, min(start + batch_size, num))
    yield np.concatenate([rows, np.zeros(batch_size - len(rows), rows.dtype)])


def score(config, records: List[Dict[str, Any]], k: int, passages) -> Dict[str, float]:
  """The scores of prediction records (see the module docstring).

  Args:
    config: the task config: its `metrics` name rag_jax.evaluate.metrics functions; with
      "regex_match" among them the golds are patterns, for answer_in_top_k too.
    records: `predict`'s, or those read back from predictions.jsonl.
    k: the passages per question (recall_at_k and answer_in_top_k count the top k).
    passages: the index's passages, by row (answer_in_top_k reads their text).
  """
  labelled = [r for r in records if r["gold"]]
  out = {"examples": float(len(records)), "labelled": float(len(labelled))}
  # A closed-book run retrieves nothing: no retrieval figures, rather than zeros.
  retrieved = any(r["passages"] for r in records)
  if labelled:
    predictions = [r["prediction"] for r in labelled]
    golds = [r["gold"] for r in labelled]
    for name in config.metrics:
      if name == "answer_in_top_k" and not retrieved:
        continue
      if name == "answer_in_top_k":
        texts = [[passages[p["row"]]["text"] for p in r["passages"]] for r in labelled]
        out[name] = metrics_lib.answer_in_top_k(texts, golds, k,
                                                regex="regex_match" in config.metrics)
      elif name == "label_accuracy":
        out[name] = metrics_lib.label_accuracy(predictions, [g[0] for g in golds])
      else:
        out[name] = getattr(metrics_lib, name)(predictions, golds)
  if retrieved and any(r["gold_titles"] for r in records):
    out["recall_at_k"] = metrics_lib.recall_at_k(
        [[p["title"] for p in r["passages"]] for r in records],
        [r["gold_titles"] for r in records], k)
  if retrieved:
    priors = [np.array([p["prior"] for p in r["passages"]]) for r in records]
    out["entropy"] = float(np.mean([-np.sum(p[p > 0] * np.log(p[p > 0])) for p in priors]))
    out["distinct_top1"] = float(len({r["passages"][0]["row"] for r in records
                                      if r["passages"]}))
  return out


# What a `:tiny` config's scores are, in its metrics.json and report.md.
TINY_NOTE = "random tiny model: a smoke test of the code path, not a score"


def write(out_dir: pathlib.Path, evaluator: Evaluator, records: List[Dict[str, Any]],
          scores: Dict[str, float], model_from: str) -> None:
  """predictions.jsonl, metrics.json and report.md in `out_dir`."""
  config, settings = evaluator.config, evaluator.settings
  out_dir.mkdir(parents=True, exist_ok=True)
  with files.atomic_write(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  summary = {"task": config.task, "split": evaluator.split, "data_split": evaluator.data_split,
             "model": model_from, "retrieval": config.retrieval.mode, **settings,
             "metrics": scores}
  if config.get("model", {}).get("tiny"):
    summary["note"] = TINY_NOTE
  faults.reach("eval_write")
  files.write_json(out_dir / "metrics.json", summary)
  with files.atomic_write(out_dir / "report.md", "w", encoding="utf-8") as f:
    f.write(report(summary, records, paper=dict(config.paper.get(settings["kind"], {}))))


def report(summary: Dict[str, Any], records: List[Dict[str, Any]],
           paper: Optional[Dict[str, float]] = None, examples: int = 5) -> str:
  """A short markdown report: settings, scores beside the paper's, the first predictions."""
  s, scores = summary, summary["metrics"]
  beams = f", {s['num_beams']} beams" if s["num_beams"] > 1 else ""
  split = s["split"] if s["split"] == s["data_split"] else f"{s['split']} ({s['data_split']})"
  lines = [f"# {s['task']} {split}: RAG-{s['kind'].capitalize()}", "",
           *([f"**{s['note']}**", ""] if s.get("note") else []),
           f"{int(scores['examples'])} examples, {int(scores['labelled'])} with gold answers; "
           f"model: {s['model'] or 'the config as it starts'}. Retrieval: {s['retrieval']}, "
           f"k = {s['k']}; decoding: {s['decoding']}{beams}, at most {s['max_length']} tokens.",
           "", "| score | value | paper (test) |", "|---|---:|---:|"]
  paper = paper or {}
  for name, value in scores.items():
    if name not in ("examples", "labelled"):
      figure = f"{paper[name]:.1f}" if name in paper else ""
      lines.append(f"| {name} | {value:.2f} | {figure} |")
  lines += ["", "Scores are percentages (rag_jax.evaluate.metrics) but entropy (nats, of p(z|x)) and "
            "distinct_top1 (passages).", "", "## First predictions", "",
            "| question | prediction | gold | top passage (prior) |", "|---|---|---|---|"]
  cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
  for r in records[:examples]:
    top = r["passages"][0] if r["passages"] else None
    top_text = f"{top['title']} ({top['prior']:.2f})" if top else ""
    lines.append(f"| {cell(r['question'])} | {cell(r['prediction'])} | "
                 f"{cell(' / '.join(r['gold']))} | {cell(top_text)} |")
  return "\n".join(lines) + "\n"
