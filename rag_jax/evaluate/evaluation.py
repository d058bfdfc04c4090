"""Evaluation, one path for `python -m rag_jax.evaluate` and training's periodic eval: retrieve
with the current query encoder (or BM25), decode with the task's test-time settings
(`setup.decode_settings`), score with `rag_jax.metrics`, and watch the retriever.

    scores = evaluate(run, params, out_dir)   # {"exact_match": ..., "entropy": ..., ...}
    scores = evaluate_config(config, workdir, "test", init)  # build the run, then evaluate

`out_dir` gets three files (process 0, each written atomically):
  * predictions.jsonl: per example {"id", "question", "prediction", "gold" (what the metrics
    score against: answers, CuratedTrec's patterns, FEVER's label word), "gold_titles",
    "passages": [{"row", "id", "title", "prior", "posterior"}]}, best passage first;
    prior = p(z|x); posterior = p(z|x,y) of the prediction for RAG-Sequence, the mean over its
    tokens of p(z|x,y_i,y_<i) for RAG-Token (`RagModel.doc_posteriors`);
  * metrics.json: the settings and {"metrics": scores};
  * report.md: the same in a table beside the paper's figures, and the first predictions.

Scores are `rag_jax.metrics`' (percentages) over the examples with gold answers, for the
config's `metrics`; plus `recall_at_k` where examples name gold articles, and what shows a
collapsing retriever (users of HF's RAG report that on FEVER it comes to retrieve the same
passages for every input): `entropy`, the mean entropy of p(z|x) over the k passages (nats),
and `distinct_top1`, the number of distinct top-1 passages.
"""

import json
import pathlib
import sys
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from rag_jax import distributed
from rag_jax.train import setup
from rag_jax.train import input_pipeline
from rag_jax.evaluate import metrics as metrics_lib
from rag_jax import rag as rag_lib
from rag_jax import files

FILES = ("predictions.jsonl", "metrics.json", "report.md")


def model_source(config, workdir, init: Optional[str] = None) -> str:
  """What to evaluate: `init`, else the workdir's checkpoints, else `config.init` ("" for the
  config's model as it starts)."""
  return init or setup.checkpoints_in(pathlib.Path(workdir)) or config.init


def evaluate_config(config, workdir, split: str = "dev", init: Optional[str] = None,
                    progress: bool = True) -> Dict[str, float]:
  """Builds `config`'s run on `split` from `model_source` and evaluates it into `workdir`;
  returns the scores."""
  workdir = setup.prepare_workdir(workdir)
  config = config.copy_and_resolve_references()
  config.init = model_source(config, workdir, init)
  run = setup.build(config, workdir, split=split, train=False)
  return evaluate(run, run.state.params, workdir, progress=progress, model_from=config.init)


def evaluate(run: setup.Run, params, out_dir=None, *, model_from: str = "",
             progress: bool = True) -> Dict[str, float]:
  """Decodes `run.eval` and scores it; with `out_dir`, writes `FILES` there.

  Args:
    run: the built run; its config says how to retrieve, decode and score.
    params: {"question_encoder", "generator"} to evaluate.
    out_dir: where the files go (created), or None.
    model_from: what the params are, for the report ("training step 30", a checkpoint).
    progress: a progress bar on stderr (process 0).
  Returns:
    {"examples", "labelled", each of config.metrics, ["recall_at_k"], "entropy",
    "distinct_top1"}; a closed-book run (`retrieval.mode=none`) has no retrieval figures
    (answer_in_top_k, recall_at_k, entropy, distinct_top1).
  """
  settings = setup.decode_settings(run.config)
  records = predict(run, params, settings, progress=progress)
  scores = score(run.config, records, settings["k"], run.index.passages)
  if out_dir is not None and jax.process_index() == 0:
    write(pathlib.Path(out_dir), run, records, scores, settings, model_from)
  return scores


def predict(run: setup.Run, params, settings: Dict[str, Any], *,
            progress: bool = True) -> List[Dict[str, Any]]:
  """The prediction records of `run.eval` (the module docstring's predictions.jsonl)."""
  import tqdm  # pylint: disable=import-outside-toplevel
  config, split = run.config, run.eval
  model = setup.inference_model(run, params)
  pad = run.rag.gen.pad_token_id
  n = len(split.examples)
  texts, ids, priors, posteriors = [], [], [], []
  bar = tqdm.tqdm(total=n, desc=f"eval {run.eval_split}", unit="example", leave=False,
                  dynamic_ncols=True, file=sys.stderr,
                  disable=not progress or jax.process_index() != 0)
  for start, rows in zip(range(0, n, config.eval_batch_size),
                         input_pipeline.iterate_eval(n, config.eval_batch_size)):
    batch = run.retrieved(params, input_pipeline.gather(split.arrays, rows), replicated=True,
                          k=settings["k"])
    ctx, mask, doc_scores = run._contexts(params, batch)  # pylint: disable=protected-access
    seqs = model.generate(ctx, mask, doc_scores, kind=settings["kind"],
                          decoding=settings["decoding"], num_beams=settings["num_beams"],
                          max_length=settings["max_length"])
    seqs = np.asarray(seqs)
    # Padded to max_length, so that the posteriors' pass compiles once, whatever the length.
    full = np.pad(seqs, ((0, 0), (0, settings["max_length"] - seqs.shape[1])),
                  constant_values=pad)
    post = np.asarray(_POSTERIORS(model.rag, model.params, ctx, mask, doc_scores, full,
                                  kind=settings["kind"]))
    texts += run.generator_tokenizer.batch_decode(seqs, skip_special_tokens=True)
    ids.append(distributed.to_host(batch["doc_ids"]))
    priors.append(_softmax(distributed.to_host(doc_scores)))
    posteriors.append(rag_lib.answer_posteriors(post, (full[:, 1:] != pad).sum(axis=1),
                                                settings["kind"]))
    bar.update(min(config.eval_batch_size, n - start))
  bar.close()
  if not n:
    return []
  ids, priors, posteriors = (np.concatenate(a)[:n] for a in (ids, priors, posteriors))
  passages = run.index.passages
  closed_book = config.retrieval.mode == "none"  # its one "passage" is empty
  records = []
  for i, example in enumerate(split.examples):
    records.append({
        "id": example.id, "question": example.source, "prediction": texts[i].strip(),
        "gold": list(example.targets), "gold_titles": list(example.gold_titles),
        "passages": [{"row": int(r), "id": passages[int(r)]["id"],
                      "title": passages[int(r)]["title"], "prior": float(p), "posterior": float(q)}
                     for r, p, q in zip(ids[i], priors[i], posteriors[i])
                     if r >= 0 and not closed_book]})
  return records


# RagModel.doc_posteriors' computation, jitted once for every model of the same shapes (a run
# makes a RagModel for each eval, whose own jit would compile again).
_POSTERIORS = jax.jit(rag_lib.Rag.posteriors, static_argnums=0, static_argnames="kind")


def _softmax(scores: np.ndarray) -> np.ndarray:
  """p(z|x) [B, Z] from doc scores (-inf for a missing doc)."""
  scores = scores.astype(np.float64)
  p = np.exp(scores - scores.max(axis=1, keepdims=True))
  return p / p.sum(axis=1, keepdims=True)


def score(config, records: List[Dict[str, Any]], k: int, passages) -> Dict[str, float]:
  """The scores of prediction records (see the module docstring).

  Args:
    config: the task config: its `metrics` name rag_jax.metrics functions; with
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


def write(out_dir: pathlib.Path, run: setup.Run, records: List[Dict[str, Any]],
          scores: Dict[str, float], settings: Dict[str, Any], model_from: str) -> None:
  """predictions.jsonl, metrics.json and report.md in `out_dir`."""
  config = run.config
  out_dir.mkdir(parents=True, exist_ok=True)
  with files.atomic_write(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  summary = {"task": config.task, "split": run.eval_split,
             "data_split": setup.split_name(config, run.eval_split),
             "model": model_from, "retrieval": config.retrieval.mode, **settings,
             "metrics": scores}
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
           f"{int(scores['examples'])} examples, {int(scores['labelled'])} with gold answers; "
           f"model: {s['model'] or 'the config as it starts'}. Retrieval: {s['retrieval']}, "
           f"k = {s['k']}; decoding: {s['decoding']}{beams}, at most {s['max_length']} tokens.",
           "", "| score | value | paper (test) |", "|---|---:|---:|"]
  paper = paper or {}
  for name, value in scores.items():
    if name not in ("examples", "labelled"):
      figure = f"{paper[name]:.1f}" if name in paper else ""
      lines.append(f"| {name} | {value:.2f} | {figure} |")
  lines += ["", "Scores are percentages (rag_jax.metrics) but entropy (nats, of p(z|x)) and "
            "distinct_top1 (passages).", "", "## First predictions", "",
            "| question | prediction | gold | top passage (prior) |", "|---|---|---|---|"]
  cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
  for r in records[:examples]:
    top = r["passages"][0] if r["passages"] else None
    top_text = f"{top['title']} ({top['prior']:.2f})" if top else ""
    lines.append(f"| {cell(r['question'])} | {cell(r['prediction'])} | "
                 f"{cell(' / '.join(r['gold']))} | {cell(top_text)} |")
  return "\n".join(lines) + "\n"
