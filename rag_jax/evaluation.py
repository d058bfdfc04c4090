"""Evaluation during training: retrieve with the current query encoder, decode with the
config's decoding, score, and watch the retriever.

Besides the task metric, every eval logs what shows a collapsing retriever (users of HF's RAG
report that on FEVER it comes to retrieve the same passages for every input): the mean
entropy of p(z|x) over the k retrieved passages, the number of distinct top-1 passages, and
recall@k of the gold passages where the data names them.
"""

import json
import pathlib
from typing import Dict

import jax
import numpy as np

from rag_jax import input_pipeline
from rag_jax import distributed
from rag_jax import experiment
from rag_jax.index import files


def retrieval_stats(doc_ids: np.ndarray, doc_scores: np.ndarray, gold: np.ndarray
                    ) -> Dict[str, float]:
  """doc_ids [B, Z], doc_scores [B, Z] (after the temperature), gold [B, G] (-1 = none).

  Returns entropy (nats, mean over examples), distinct_top1, and recall_at_k: the share of
  the examples with a gold passage that retrieved at least one.
  """
  scores = np.where(doc_ids >= 0, doc_scores, -np.inf).astype(np.float64)
  p = np.exp(scores - scores.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
  has_gold = (gold >= 0).any(axis=1)
  hit = (doc_ids[:, :, None] == np.where(gold >= 0, gold, -2)[:, None, :]).any(axis=(1, 2))
  return {"entropy": float(entropy.mean()), "distinct_top1": float(len(set(doc_ids[:, 0]))),
          "recall_at_k": float(hit[has_gold].mean()) if has_gold.any() else float("nan")}


def evaluate(run, params, predictions_file=None) -> Dict[str, float]:
  """Decodes the eval split (greedy, `eval_max_length` tokens) and scores it; with
  `predictions_file`, writes one JSON line per example there (process 0, atomically):
  {"id", "source", "prediction", "target", "passages": [{"row", "id", "title", "prior"}]},
  prior = p(z|x).

  Returns {"eval/accuracy" (exact match of the decoded text with the target; label accuracy
  on FEVER), "eval/entropy", "eval/distinct_top1", "eval/recall_at_k", "eval/examples"}.
  """
  config, split = run.config, run.eval
  model = experiment.inference_model(run, params)
  predictions, ids, scores = [], [], []
  n = len(split.examples)
  for rows in input_pipeline.iterate_eval(n, config.eval_batch_size):
    batch = run.retrieved(params, input_pipeline.gather(split.arrays, rows), replicated=True)
    ctx, mask, doc_scores = run._contexts(params, batch)  # pylint: disable=protected-access
    seqs = model.generate(ctx, mask, doc_scores, kind=config.rag.kind,
                          max_length=config.eval_max_length, num_beams=1)
    predictions += run.generator_tokenizer.batch_decode(seqs, skip_special_tokens=True)
    ids.append(distributed.to_host(batch["doc_ids"]))
    scores.append(distributed.to_host(doc_scores))
  ids, scores = np.concatenate(ids)[:n], np.concatenate(scores)[:n]
  stats = retrieval_stats(ids, scores, split.arrays["gold"])
  targets = [run.target(e) for e in split.examples]
  correct = [p.strip() == t.strip() for p, t in zip(predictions[:n], targets)]
  if predictions_file is not None and jax.process_index() == 0:
    _write_predictions(predictions_file, run, predictions[:n], targets, ids, scores)
  out = {"accuracy": float(np.mean(correct)), **stats, "examples": float(n)}
  return {f"eval/{k}": v for k, v in out.items()}


def _write_predictions(path, run, predictions, targets, ids, scores) -> None:
  priors = np.exp(scores - scores.max(axis=1, keepdims=True))
  priors /= priors.sum(axis=1, keepdims=True)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.atomic_write(path, "w", encoding="utf-8") as f:
    for i, example in enumerate(run.eval.examples):
      passages = [{"row": int(r), "id": run.index.passages[int(r)]["id"],
                   "title": run.index.passages[int(r)]["title"], "prior": float(p)}
                  for r, p in zip(ids[i], priors[i]) if r >= 0]
      f.write(json.dumps({"id": example.id, "source": example.source,
                          "prediction": predictions[i], "target": targets[i],
                          "passages": passages}) + "\n")
