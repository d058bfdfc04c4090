"""Evaluates RAG on a task's dev or test split with the paper's test-time settings: retrieves,
decodes (open-domain QA greedily, RAG-Token over 15 passages, RAG-Sequence over 50 with
thorough decoding; MS MARCO and Jeopardy over 10, with 4 beams and fast decoding: each
config's `eval_paper`), and scores with rag_jax.evaluate.metrics. Training's periodic eval is the same
code (rag_jax.evaluate.evaluation).

    python -m rag_jax.evaluate --config experiments/nq.py --workdir runs/nq --split test
    python -m rag_jax.evaluate --config experiments/nq.py:tiny --workdir /tmp/nq-tiny
    python -m rag_jax.evaluate --config experiments/wq.py --workdir /tmp/wq --init facebook/rag-token-nq

The model: `--init` (a train workdir or its checkpoints/, or an HF RAG checkpoint) if given;
else the workdir's own latest checkpoint, so that a train workdir evaluates what it trained;
else the config's `init`; else the config's model as it starts. Writes predictions.jsonl,
metrics.json and report.md into WORKDIR/eval/<split>_<step>/ (training's own evaluations
go to eval/step_<step>/; `predict.eval_directory`), says where on stderr, and prints the
scores as one JSON line. Exit status 2 for a bad flag or config value, 1 for a failure while
running (a workdir another process holds, say), 130 for Ctrl-C. The work is
`predict.evaluate_config` (importable: this module only defines the flags).
"""

import json
import sys

from absl import flags
import jax
from ml_collections import config_flags

from rag_jax import checkpoint
from rag_jax import cli
from rag_jax import errors
from rag_jax.evaluate import evaluation
from rag_jax.train import predict
from rag_jax.train import setup

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Task config file, e.g. experiments/nq.py[:tiny]; fields override with "
    "--config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for predictions.jsonl, metrics.json "
                               "and report.md; a train workdir's checkpoints are evaluated.")
_SPLIT = flags.DEFINE_string("split", "dev", "The split to evaluate: dev or test.")
_INIT = flags.DEFINE_string("init", None, "A train workdir (or its checkpoints/) or an HF RAG "
                            "checkpoint to evaluate, instead of the workdir's own.")


def main(argv):
  config = cli.job_config(argv, _CONFIG, _WORKDIR, "experiments/nq.py:tiny", "/tmp/nq-tiny")
  try:  # usage errors first, before anything is loaded
    setup.split_name(config, _SPLIT.value)
    setup.resolve_init(_INIT.value or "")
    setup.check_config(config)
  except setup.SetupError as e:
    cli.fail(errors.first_line(e), status=2)
  try:
    scores = predict.evaluate_config(config, _WORKDIR.value, _SPLIT.value, _INIT.value)
  except setup.ConfigError as e:
    cli.fail(errors.first_line(e), status=2)
  except (setup.SetupError, checkpoint.CheckpointError, OSError, ValueError) as e:
    cli.fail(errors.first_line(e))
  except KeyboardInterrupt:
    cli.fail("interrupted", status=130)
  if jax.process_index() == 0:
    print(json.dumps(scores))
    if config.model.get("tiny"):
      print(f"note: {evaluation.TINY_NOTE}", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
