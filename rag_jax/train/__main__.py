"""Fine-tunes RAG (the query encoder and the generator jointly; document encoder and index
frozen) from a config; the loop is `rag_jax.train.loop.train_and_evaluate`.

    python -m rag_jax.train --config experiments/fever.py:tiny --workdir /tmp/fever-tiny
    python -m rag_jax.train --config experiments/fever.py --config.retrieval.mode=host --workdir DIR
    python -m rag_jax.train --config experiments/nq.py:wiki --workdir /tmp/nq-wiki

A `:wiki` config runs the demo on the embedded Wikipedia (rag_jax.train.demo): RAG and a closed-book
generator trained, their test scores, retrieval before and after, and the hot swap.
A workdir with checkpoints resumes by itself; SIGTERM saves and exits 0, Ctrl-C saves and
exits 130 (a second Ctrl-C exits at once). Exit status 2: a bad flag or config value, found
before anything is written; 1: a failure while running (a workdir another run holds, a
checkpoint that does not restore with restore_fallback off, a NaN loss).
"""

import json
import shlex
import sys

from absl import flags
import jax
from ml_collections import config_flags

from rag_jax import checkpoint
from rag_jax import cli
from rag_jax import errors
from rag_jax.evaluate import evaluation
from rag_jax.train import demo
from rag_jax.train import loop
from rag_jax.train import setup

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. experiments/fever.py[:variant]; fields "
    "override with --config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; a run "
                               "resumes from the checkpoints it holds.")


def main(argv):
  config = cli.job_config(argv, _CONFIG, _WORKDIR, "experiments/fever.py:tiny", "/tmp/fever-tiny")
  try:
    if "demo" in config:  # a `:wiki` config: the demo's runs and tables (rag_jax.train.demo)
      out = demo.run(config, _WORKDIR.value)
    else:
      out = loop.train_and_evaluate(config, _WORKDIR.value)
  except setup.ConfigError as e:
    cli.fail(errors.first_line(e), status=2)
  except (loop.TrainingError, setup.SetupError, checkpoint.CheckpointError, OSError,
          ValueError) as e:
    cli.fail(errors.first_line(e))
  except KeyboardInterrupt:
    cli.fail("interrupted", status=130)
  if jax.process_index() != 0:
    return
  # The final figures (the demo's, less the titles each query retrieved: demo.json has them).
  summary = {k: v for k, v in out.items() if k not in ("state", "retrieved_titles")}
  print(json.dumps(summary))
  if "demo" in config:
    return
  workdir = _WORKDIR.value
  if config.model.get("tiny"):
    print(f"note: {evaluation.TINY_NOTE}", file=sys.stderr)
  if out["ended"] == "finished":
    args = " ".join(map(shlex.quote, cli.without_flag(sys.argv, "workdir")))
    print(f"wrote {workdir}: checkpoints/, metrics.jsonl, tensorboard/"
          f"{', eval/' if config.eval_every_steps else ''}; to evaluate it on the test split:\n"
          f"  python -m rag_jax.evaluate {args} --workdir {shlex.quote(workdir)} --split test",
          file=sys.stderr)
  else:
    print(f"{out['ended']} at step {out['step']}: saved {out['checkpoint']}; the same command "
          "goes on from there", file=sys.stderr)
  if out["ended"] == "interrupted":
    sys.exit(130)


if __name__ == "__main__":
  cli.run(main)
