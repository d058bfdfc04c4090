"""Nothing lost, whatever happens to a run: one writer per workdir, a damaged checkpoint
falls back to the one before, Ctrl-C saves, and a process killed at each of
`rag_jax.faults.POINTS` (reached deterministically through RAG_JAX_FAULT) is finished by the
same command run again, to the uninterrupted run's numbers, with no temporary file left and
the lock free.

The tiny FEVER config of test_train (SHORT: 6 steps, checkpoints at 3 and 6, one eval at 6).
"""

import json
import pathlib
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from conftest import run_commands, subprocess_env
from test_train import _config, _losses
from test_train_processes import _final_params, _train, _train_runs
from rag_jax import checkpoint
from rag_jax import files
from rag_jax.data import tiny
from rag_jax.index import saved
from rag_jax.train import loop

pytestmark = pytest.mark.slow


def _errors(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _leftovers(directory):
  """Temporary files and directories (orbax's *.orbax-checkpoint-tmp*, files.py's .*.tmp)."""
  return [p for p in pathlib.Path(directory).rglob("*") if "tmp" in p.name]


def _assert_lock_free(directory):
  with files.locked(directory):
    pass


def _predictions(workdir):
  return (pathlib.Path(workdir) / "eval" / "step_6" / "predictions.jsonl").read_text()


def _assert_same_end(workdir, whole):
  """The final loss (1e-6), params (1e-6) and eval predictions of an uninterrupted run."""
  assert _losses(workdir)[-1] == pytest.approx(_losses(whole)[-1], rel=1e-6)
  step_a, params_a = _final_params(whole)
  step_b, params_b = _final_params(workdir)
  assert step_a == step_b == 6
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  assert _predictions(workdir) == _predictions(whole)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """The uninterrupted run, in this process."""
  workdir = tmp_path_factory.mktemp("whole")
  loop.train_and_evaluate(_config(), workdir)
  return workdir


def _wait_stopped(proc, timeout=300):
  """Until `proc` is stopped (SIGSTOP: state T in /proc/PID/stat)."""
  deadline = time.time() + timeout
  while pathlib.Path(f"/proc/{proc.pid}/stat").read_text().split(")")[1].split()[0] != "T":
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)


def test_a_second_run_on_a_workdir_fails_at_once_and_the_first_finishes(tmp_path, whole):
  first = _train(tmp_path, fault="train_step@2:SIGSTOP", wait=False)  # holds the lock
  _wait_stopped(first)
  before = sorted(p.name for p in tmp_path.rglob("*"))
  second = _train(tmp_path)
  errors = _errors(second.stderr)
  assert second.returncode == 1 and len(errors) == 1, second.stderr[-3000:]
  assert f"is in use by process {first.pid}" in errors[0]
  assert sorted(p.name for p in tmp_path.rglob("*")) == before  # the second wrote nothing
  first.send_signal(signal.SIGCONT)
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text()
           .splitlines() if "loss" in json.loads(line)]
  assert steps == sorted(set(steps)) == list(range(1, 7))
  assert not _leftovers(tmp_path)
  _assert_same_end(tmp_path, whole)


def test_ctrl_c_saves_exits_130_and_the_rerun_ends_as_the_uninterrupted_run(tmp_path, whole):
  proc = _train(tmp_path, fault="train_step@4:SIGINT")  # between the checkpoints at 3 and 6
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert (tmp_path / "checkpoints" / "4").is_dir()
  assert f"interrupted at step 4: saved {tmp_path / 'checkpoints' / '4'}" in proc.stderr
  # The same command, then once more on the finished workdir (which changes nothing).
  again, done = _train_runs(tmp_path, [None, None])
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from step 4 of 6" in again.stderr
  _assert_same_end(tmp_path, whole)
  # The finished workdir: one line says so and what would go on.
  assert done.returncode == 0
  assert (f"{tmp_path} is already at step 6 of 6: nothing to train "
          "(--config.num_train_steps=9 would go on)") in done.stderr


def _truncate_largest(step_dir: pathlib.Path):
  largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(100)


def test_a_damaged_checkpoint_falls_back_to_the_one_before(tmp_path, whole, capsys):
  workdir = tmp_path / "w"
  shutil.copytree(whole, workdir)
  shutil.rmtree(workdir / "eval")
  _truncate_largest(workdir / "checkpoints" / "6")
  loop.train_and_evaluate(_config(), workdir)
  err = capsys.readouterr().err
  assert "the checkpoint of step 6 does not restore (" in err
  assert f"moved to {workdir / 'checkpoints' / '6.damaged'}" in err
  assert "resuming from step 3 of 6" in err
  assert (workdir / "checkpoints" / "6.damaged").is_dir()
  _assert_same_end(workdir, whole)

  # With the fallback off: one line naming the step, exit 1.
  off = tmp_path / "off"
  shutil.copytree(whole, off)
  _truncate_largest(off / "checkpoints" / "6")
  with pytest.raises(checkpoint.CheckpointError, match="the checkpoint of step 6 "):
    loop.train_and_evaluate(_config(restore_fallback=False), off)
  proc = _train(off, {"restore_fallback": False})
  errors = _errors(proc.stderr)
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
  assert f"the checkpoint of step 6 ({off / 'checkpoints' / '6'}) does not restore" in errors[0]
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("fault", ["train_step@4", "checkpoint_write@2", "eval_write"])
def test_a_run_killed_at_a_point_is_finished_by_the_same_command(tmp_path, whole, fault):
  killed, again = _train_runs(tmp_path, [fault, None])
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert again.returncode == 0, again.stderr[-3000:]
  _assert_same_end(tmp_path, whole)
  assert not _leftovers(tmp_path)
  _assert_lock_free(tmp_path)


def _builds(encoder, runs):
  """`python -m rag_jax.index build` of the tiny passages, shards of 16, once per (out, fault)
  of `runs` (RAG_JAX_FAULT=fault; None: unset), each a process of its own."""
  return run_commands("rag_jax.index", [
      ("build", "--passages", str(tiny.PASSAGES), "--encoder", str(encoder), "--out", str(out),
       "--backend", "exact", "--shard-size", "16", "--batch-size", "4", "--no-progress")
      for out, _ in runs], env=subprocess_env(1),
                      case_env=[{"RAG_JAX_FAULT": fault} if fault else {} for _, fault in runs])


@pytest.mark.parametrize("fault", ["index_embed@6", "index_rename"])
def test_an_index_build_killed_at_a_point_is_finished_by_the_same_command(tmp_path, whole,
                                                                          fault):
  encoder = whole / "tiny_model" / "question_encoder"  # the tiny run's document encoder
  reference, out = tmp_path / "reference", tmp_path / "idx"
  built, killed = _builds(encoder, [(reference, None), (out, fault)])
  assert built.returncode == 0, built.stderr[-3000:]
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert not out.exists()
  again, = _builds(encoder, [(out, None)])
  assert again.returncode == 0, again.stderr[-3000:]
  strip = lambda m: {k: v for k, v in m.items() if k != "created"}
  assert strip(saved.read_manifest(out)) == strip(saved.read_manifest(reference))
  assert not _leftovers(tmp_path) and not out.with_name("idx.partial").exists()
  _assert_lock_free(tmp_path)
