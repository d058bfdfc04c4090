"""Entry points fail on bad input with one line on stderr and a non-zero status."""

import os
import subprocess
import sys

import pytest


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "rag_jax.ask", *args], capture_output=True,
                        text=True, env=env, timeout=300, check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  return proc.returncode, errors, proc.stderr


@pytest.mark.parametrize("args, status, message", [
    ([], 2, "--config is required"),
    (["--config", "experiments/nope.py"], 2, "No such file or directory"),
    (["--config", "experiments/wiki_retrieval.py", "stray"], 2, "unexpected arguments: stray"),
    (["--config", "experiments/wiki_retrieval.py", "--config.encoder=/nonexistent/model"], 1,
     "/nonexistent/model: no such directory"),
])
def test_ask_bad_input(args, status, message):
  code, errors, stderr = _run(*args)
  assert code == status, stderr
  assert len(errors) == 1 and message in errors[0], stderr
  assert "Traceback" not in stderr


def test_ask_help():
  proc = subprocess.run([sys.executable, "-m", "rag_jax.ask", "--help"], capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0 and "--config" in proc.stdout
