"""Multi-host training in miniature: `launch/local.sh` starts 2 processes x 4 CPU devices
(jax.distributed, gloo), one 8-device mesh with the index split over it; the run retrieves
the passages of 1 process x 8 devices and logs its losses, and its checkpoint restores in
1 process (`python -m rag_jax.train`), continuing to the losses of an uninterrupted run."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "experiments" / "fever.py") + ":tiny"
SHORT = {"log_every_steps": 1, "checkpoint_every_steps": 3, "eval_every_steps": 3,
         "data.max_eval_examples": 8}


def _cmd(workdir, steps, **overrides):
  flags = [f"--config.{k}={v}" for k, v in {**SHORT, "num_train_steps": steps,
                                              **overrides}.items()]
  return [sys.executable, "-m", "rag_jax.train", "--config", CONFIG, "--workdir", str(workdir),
          *flags]


def _run(cmd, devices=None, processes=None, log_dir=None, env=None):
  env = dict(subprocess_env(devices), **(env or {}))
  if processes:
    cmd = ["bash", str(ROOT / "launch" / "local.sh"), "--devices-per-process", "4",
           "--log-dir", str(log_dir), str(processes), *cmd]
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False,
                        timeout=900)
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
  return proc


def _losses(workdir):
  by_step = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "loss" in row:
      by_step[row["step"]] = row["loss"]
  return np.array([by_step[s] for s in sorted(by_step)])


# The run (as `python -m rag_jax.train` makes it) first retrieves the whole eval split with its
# initial params (device mode: the index split over the mesh; process 0 prints the ids and
# scores), then trains.
RUN = """
import json, sys
import jax, numpy as np
from absl import flags
from rag_jax import distributed
from rag_jax.train import input_pipeline, loop, retrieval, setup, step
from rag_jax.train.__main__ import _CONFIG  # noqa: registers --config and --workdir
distributed.initialize()
flags.FLAGS(sys.argv)
config, workdir = flags.FLAGS.config, setup.prepare_workdir(flags.FLAGS.workdir)
run = setup.build(config, workdir)
steps = step.make_steps(run.rag, run.tx, run.step_config, run.state_sharding)
retriever = retrieval.BatchRetriever.of(run, steps)
rows = np.arange(len(run.eval.examples))
batch = retriever(run.state.params, input_pipeline.gather(run.eval.arrays, rows), True)
out = {"ids": distributed.to_host(batch["doc_ids"]).tolist(),
       "embeds": distributed.to_host(batch["doc_embeds"]).sum(-1).tolist()}
if jax.process_index() == 0:
  print("RETRIEVED " + json.dumps(out), flush=True)
result = loop.train_and_evaluate(config, workdir, run=run, steps=steps)
print("ENDED " + json.dumps({k: result[k] for k in ("ended", "step", "checkpoint")}), flush=True)
"""


def _retrieve_and_train(workdir, steps, devices=None, processes=None, log_dir=None, env=None,
                        **overrides):
  """Runs RUN with the flags of `_cmd`; returns what process 0 retrieved and how each process's
  run ended."""
  cmd = [sys.executable, "-c", RUN, *_cmd(workdir, steps, **overrides)[3:]]
  proc = _run(cmd, devices=devices, processes=processes, log_dir=log_dir, env=env)
  line = [l for l in proc.stdout.splitlines() if l.startswith("RETRIEVED ")][-1]
  logs = [proc.stdout] if not processes else [
      (pathlib.Path(log_dir) / f"process_{i}.log").read_text() for i in range(processes)]
  ended = [json.loads([l for l in log.splitlines() if l.startswith("ENDED ")][-1][6:])
           for log in logs]
  return json.loads(line[len("RETRIEVED "):]), ended


@pytest.mark.slow
def test_two_processes_equal_one_and_their_checkpoint_restores_in_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  retrieved_one, ended = _retrieve_and_train(one, 6, devices=8)
  assert [e["ended"] for e in ended] == ["finished"]
  # One index for every run (an index embedded on 4 devices differs from one embedded on 8 in
  # the last bits, which reorders the tiny random retriever's near-ties).
  index = {"retrieval.index": str(one / "index")}
  # A preemption notice (SIGTERM) that reaches process 1 alone, at the end of step 3: both
  # processes save step 3 together and stop (had process 1 stopped alone, it would wait in
  # the checkpoint's collective write, process 0 in step 4's).
  retrieved_two, ended = _retrieve_and_train(
      two, 6, processes=2, log_dir=tmp_path / "logs",
      env={"RAG_JAX_FAULT": "train_step@3:SIGTERM", "RAG_JAX_FAULT_PROCESS": "1"}, **index)
  saved = str(two / "checkpoints" / "3")
  assert ended == [{"ended": "preempted", "step": 3, "checkpoint": saved}] * 2
  # The same losses, and the same passages retrieved for every eval claim.
  np.testing.assert_allclose(_losses(two), _losses(one)[:3], rtol=1e-5)
  assert retrieved_two["ids"] == retrieved_one["ids"]
  np.testing.assert_allclose(retrieved_two["embeds"], retrieved_one["embeds"], rtol=1e-6)
  # The 2-process checkpoint of step 3, continued by 1 process, ends where `one` ends. (Gloo
  # sums the 2 processes' gradients in another order than one process does; Adam's
  # normalised steps carry those last-bit differences on, to ~2e-5 by step 6.)
  _run(_cmd(two, 6, **index), devices=8)
  np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4)
