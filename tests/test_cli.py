"""Entry points fail on bad input with one line on stderr and a non-zero status."""

import os
import subprocess
import sys

import pytest

from conftest import run_commands, subprocess_env


def _run(*args, module="rag_jax.ask"):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, env=env, timeout=300, check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  return proc.returncode, errors, proc.stderr


ASK_BAD = [
    (["--config.xyz=1"], 2, "unknown config field 'xyz' in "),  # the default config's
    (["--temperatures", "0.1"], 2, "--temperatures needs --dev"),
    (["--kind", "soft"], 2, "flag --kind=soft: value should be one of <token|sequence>"),
    (["--config.generator=none", "--closed-book"], 2, "--closed-book, --heatmap and "
     "--temperatures need a generator"),
    (["--config.doc_temperature=0"], 2, "doc_temperature must be positive"),
    (["--questions-file", "/nonexistent/q.txt"], 2, "/nonexistent/q.txt"),
    (["--config", "experiments/nope.py"], 2, "No such file or directory"),
    (["--config", "rag_jax/configs/wiki.py", "stray"], 2, "unexpected arguments: stray"),
    (["--config", "rag_jax/configs/wiki.py", "--config.encoder=/nonexistent/model"], 1,
     "/nonexistent/model: no such directory"),
    (["--config", "rag_jax/configs/wiki.py:smal"], 2, "unknown config variant 'smal'"),
    # Checked before anything is embedded.
    (["--config", "rag_jax/configs/wiki.py", "--config.k=0"], 2, "k must be positive"),
    (["--config", "rag_jax/configs/wiki.py", "--config.max_length=1"], 2,
     "max_length must be at least 2"),
    (["--config", "rag_jax/configs/wiki.py", "--question", "  "], 2,
     "question 1 is blank"),
    (["--config", "rag_jax/configs/wiki.py", "--question", "Who?", "--question", ""], 2,
     "question 2 is empty"),
    (["--config", "rag_jax/configs/wiki.py", "--config.k=20000"], 2,
     "k=20000 exceeds the index's 12324 passages"),
    (["--config", "rag_jax/configs/wiki.py", "--question", "Who?", "--dev", "x.jsonl"],
     2, "--question, --questions-file, --dev and --interactive do not go together"),
    (["--config", "rag_jax/configs/wiki.py", "--config.xyz=1"], 2,
     "unknown config field 'xyz' in rag_jax/configs/wiki.py (known: batch_size, corpus, "
     "doc_sep, doc_temperature, encoder, generator, include_titles, index, k, kind, "
     "max_articles, max_length, max_new_tokens, max_prompt_length, query_encoder, questions, "
     "questions_per_batch, system_prompt, title_sep)"),
    (["--config=rag_jax/configs/wiki.py:small", "--config.k.x=1"], 2,
     "unknown config field 'k.x' in rag_jax/configs/wiki.py:small ('k' holds int 5, "
     "no fields)"),
]


@pytest.fixture(scope="module")
def ask_bad_runs():
  """Every case of ASK_BAD through `python -m rag_jax.ask`, each its own process."""
  env = dict(subprocess_env(), TF_CPP_MIN_LOG_LEVEL="3")
  runs = run_commands("rag_jax.ask", [args for args, _, _ in ASK_BAD], env=env)
  return {tuple(args): run for (args, _, _), run in zip(ASK_BAD, runs)}


@pytest.mark.parametrize("args, status, message", ASK_BAD)
def test_ask_bad_input(ask_bad_runs, args, status, message):
  proc = ask_bad_runs[tuple(args)]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert proc.returncode == status, proc.stderr
  assert len(errors) == 1 and message in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_an_unknown_config_field_is_named_by_every_entry_point():
  """The same flag parsing (cli.run) for rag_jax.train, with a nested config."""
  code, errors, stderr = _run("--config", "experiments/fever.py:tiny", "--workdir", "/nonexistent",
                              "--config.retrieval.kk=3", module="rag_jax.train")
  assert code == 2 and len(errors) == 1, stderr
  assert errors[0].startswith("error: unknown config field 'retrieval.kk' in "
                              "experiments/fever.py:tiny (known under 'retrieval': ")
  assert ", k, " in errors[0] and "Traceback" not in stderr


def test_ask_help():
  proc = subprocess.run([sys.executable, "-m", "rag_jax.ask", "--help"], capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0 and "--config" in proc.stdout


@pytest.mark.parametrize("env, flags, want", [
    ({}, "", len(os.sched_getaffinity(0))),                # one device per core
    ({"JAX_NUM_CPU_DEVICES": "1"}, "", 1),                  # the user's count is kept
    ({}, "--xla_force_host_platform_device_count=3", 3),    # and so is XLA_FLAGS'
])
def test_entry_points_use_one_cpu_device_per_core(env, flags, want):
  code = ("from rag_jax import cli; cli.use_cpu_cores(); import jax; "
          "print(len(jax.devices('cpu')))")
  environ = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**environ, **env, "XLA_FLAGS": flags}, timeout=120, check=True)
  assert int(proc.stdout.split()[-1]) == want


def test_use_cpu_cores_leaves_a_started_jax_alone():
  import jax  # pylint: disable=import-outside-toplevel
  from rag_jax import cli  # pylint: disable=import-outside-toplevel
  before = jax.devices()
  cli.use_cpu_cores()
  assert jax.devices() == before


def test_no_tpu_backend_is_tried_without_a_tpu_chip():
  """libtpu (the [test] extra) logs an error at every JAX start where no TPU is; rag_jax keeps
  JAX from trying it (rag_jax._skip_absent_tpu). A topology compile still finds libtpu."""
  environ = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  code = ("import sys, rag_jax, jax; print(jax.devices()[0].platform); "
          "print('started', file=sys.stderr, flush=True); "
          "from jax.experimental import topologies; "
          "print(len(topologies.get_topology_desc('v5e:2x2', 'tpu').devices))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=environ, timeout=120, check=True)
  assert proc.stdout.split() == ["cpu", "4"], proc.stdout
  assert "TPU_WORKER_HOSTNAMES" not in proc.stderr.split("started")[0], proc.stderr
