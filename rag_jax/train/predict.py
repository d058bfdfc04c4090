"""Predict functions of a training run, and the evaluation of a config.

`make_predict_fn(run, steps, retriever)` decodes one batch of a split the way the paper tests
(`setup.decode_settings`): retrieve with the current query encoder (or BM25), join the
contexts, generate, then score the answer under each passage for its posterior. Training's
periodic eval and `python -m rag_jax.evaluate` both evaluate through `evaluator(...)`.
"""

import contextlib
import functools
import pathlib
import re
from typing import Any, Dict, Optional

import jax
import numpy as np

from rag_jax import distributed
from rag_jax import files
from rag_jax import rag as rag_lib
from rag_jax.evaluate import evaluation
from rag_jax.train import retrieval as retrieval_lib
from rag_jax.train import setup
from rag_jax.train import step as step_lib


def make_predict_fn(run: setup.Run, steps: step_lib.Steps,
                    retriever: retrieval_lib.BatchRetriever) -> evaluation.PredictFn:
  """predict_fn(params) -> decode(arrays) -> {"texts", "doc_ids", "priors", "posteriors"} of a
  batch of `run`'s token arrays (the whole batch, the same on every process)."""
  settings = setup.decode_settings(run.config)
  pad = run.rag.gen.pad_token_id

  def predict_fn(params):
    model = setup.inference_model(run, params)  # once per evaluation: it holds its own jits
    return functools.partial(_decode, run, steps, retriever, settings, pad, model, params)
  return predict_fn


def _decode(run, steps, retriever, settings, pad, model, params,
            arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """One batch's predictions (`make_predict_fn`)."""
  batch = retriever(params, arrays, replicated=True, k=settings["k"])
  ctx, mask, doc_scores = steps.contexts(params, batch)
  seqs = np.asarray(model.generate(ctx, mask, doc_scores, kind=settings["kind"],
                                   decoding=settings["decoding"],
                                   num_beams=settings["num_beams"],
                                   max_length=settings["max_length"]))
  # Padded to max_length, so that the posteriors' pass compiles once, whatever the length.
  full = np.pad(seqs, ((0, 0), (0, settings["max_length"] - seqs.shape[1])),
                constant_values=pad)
  post = np.asarray(_POSTERIORS(model.rag, model.params, ctx, mask, doc_scores, full,
                                kind=settings["kind"]))
  return {"texts": run.generator_tokenizer.batch_decode(seqs, skip_special_tokens=True),
          "doc_ids": distributed.to_host(batch["doc_ids"]),
          "priors": _softmax(distributed.to_host(doc_scores)),
          "posteriors": rag_lib.answer_posteriors(post, (full[:, 1:] != pad).sum(axis=1),
                                                  settings["kind"])}


# RagModel.doc_posteriors' computation, jitted once for every model of the same shapes (a run
# makes a RagModel for each eval, whose own jit would compile again).
_POSTERIORS = jax.jit(rag_lib.Rag.posteriors, static_argnums=0, static_argnames="kind")


def _softmax(scores: np.ndarray) -> np.ndarray:
  """p(z|x) [B, Z] from doc scores (-inf for a missing doc)."""
  scores = scores.astype(np.float64)
  p = np.exp(scores - scores.max(axis=1, keepdims=True))
  return p / p.sum(axis=1, keepdims=True)


def evaluator(run: setup.Run, steps: step_lib.Steps,
              retriever: retrieval_lib.BatchRetriever) -> evaluation.Evaluator:
  """The Evaluator of `run`'s eval split."""
  return evaluation.Evaluator(make_predict_fn(run, steps, retriever), run.eval.examples,
                              run.eval.arrays, run.config, run.index.passages,
                              settings=setup.decode_settings(run.config), split=run.eval_split,
                              data_split=setup.split_name(run.config, run.eval_split))


def model_source(config, workdir, init: Optional[str] = None) -> str:
  """What to evaluate: `init`, else the workdir's checkpoints, else `config.init` ("" for the
  config's model as it starts)."""
  return init or setup.checkpoints_in(pathlib.Path(workdir)) or config.init


def eval_directory(config, workdir, split: str = "dev", init: Optional[str] = None
                   ) -> pathlib.Path:
  """Where `evaluate_config` writes: WORKDIR/eval/<split>_<step> for a training checkpoint
  (its latest step, as training's own evaluations go to eval/step_<step>), <split>_<name> for
  an HF RAG checkpoint, <split>_0 for the config's model as it starts."""
  kind, path = setup.resolve_init(model_source(config, workdir, init))
  if kind == "checkpoint":
    tag = str(max(int(p.name) for p in pathlib.Path(path).iterdir() if p.name.isdigit()))
  elif kind == "rag":
    tag = re.sub(r"[^\w.-]+", "-", pathlib.Path(path).name if pathlib.Path(path).exists()
                 else path).strip("-")
  else:
    tag = "0"
  return pathlib.Path(workdir) / "eval" / f"{split}_{tag}"


def evaluate_config(config, workdir, split: str = "dev", init: Optional[str] = None,
                    progress: bool = True) -> Dict[str, float]:
  """Builds `config`'s run on `split` from `model_source` and evaluates it into
  `eval_directory` (said on stderr), holding the workdir's lock; returns the scores."""
  setup.check_config(config)
  workdir = setup.prepare_workdir(workdir)
  lock = files.locked(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    out_dir = eval_directory(config, workdir, split, init)
    config = config.copy_and_resolve_references()
    config.init = model_source(config, workdir, init)
    run = setup.build(config, workdir, split=split, train=False)
    steps = step_lib.make_steps(run.rag, run.tx, run.step_config, run.state_sharding)
    scores = evaluator(run, steps, retrieval_lib.BatchRetriever.of(run, steps)).run(
        run.state.params, out_dir, progress=progress, model_from=config.init)
  setup.log(f"wrote {out_dir}: predictions.jsonl, metrics.json, report.md")
  return scores
