"""Fine-tunes RAG (the query encoder and the generator jointly; document encoder and index
frozen) from a config; the loop is `rag_jax.train.loop.train_and_evaluate`.

    python -m rag_jax.train --config experiments/fever.py:tiny --workdir /tmp/fever-tiny
    python -m rag_jax.train --config experiments/fever.py --config.retrieval.mode=host --workdir DIR
    python -m rag_jax.train --config experiments/nq.py:wiki --workdir /tmp/nq-wiki

A `:wiki` config runs the demo on the embedded Wikipedia (rag_jax.train.demo): RAG and a closed-book
generator trained, their test scores, retrieval before and after, and the hot swap.
A workdir with checkpoints resumes by itself; SIGTERM saves and exits 0.
"""

import json

from absl import flags
import jax
from ml_collections import config_flags

from rag_jax import cli
from rag_jax import errors
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
  except (loop.TrainingError, setup.SetupError, OSError, ValueError) as e:
    cli.fail(errors.first_line(e))
  except KeyboardInterrupt:
    cli.fail("interrupted", status=130)
  if jax.process_index() == 0:
    # The final figures (the demo's, less the titles each query retrieved: demo.json has them).
    summary = {k: v for k, v in out.items() if k not in ("state", "retrieved_titles")}
    print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
