"""Shared fixtures: tiny random HF PyTorch models saved with `save_pretrained`; the environment
of subprocesses that need several (fake CPU) devices; the suite's JAX settings."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch  # none of these imports jax: the settings below come first for it

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every process of the suite (xdist's workers and the subprocesses the tests start, which
# inherit the environment) shares one persistent XLA compilation cache in the checkout, so
# that the programs compiled again and again (the tiny train step in each subprocess run, a
# new RagModel's jits over the same shapes) compile once per run. CPU only: no process of the
# suite drives an accelerator, and the TPU plugin of the [test] extra (libtpu, for
# rag_jax.compile's targets) need not start in each. Set before anything imports jax.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA:CPU set to compile fast: its LLVM passes at -O0, and its older loop emitters for fusions
# (the MLIR fusion emitters take about twice as long on small programs). Compiling the
# suite's many small programs is most of its time, and the code made this way runs them
# about as fast; the processes on real weights (SmolLM2 answering a question or two) spend
# less in all with these flags too. No fast-math either way; every comparison of the suite
# holds with and without these flags.
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([*os.environ.get("XLA_FLAGS", "").split(), *_FAST_COMPILE])


# The driver of `run_commands`: runs the entry point's top-level imports once, then per case
# forks a child that runs the entry point as `python -m` would (runpy, run_name="__main__";
# its flags are defined there, as in a fresh process), its stdout and stderr in files. JAX
# has started no backend and no thread before a fork.
_COMMANDS = r"""
import ast, importlib.util, json, os, runpy, signal, sys, traceback
module, cases, envs, out = sys.argv[1], *map(json.loads, sys.argv[2:4]), sys.argv[4]
spec = importlib.util.find_spec(module + ".__main__") or importlib.util.find_spec(module)
tree = ast.parse(open(spec.origin).read())
imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
exec(compile(ast.Module(imports, type_ignores=[]), spec.origin, "exec"), {})
for i, args in enumerate(cases):
  sys.stdout.flush(); sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      for name, fd in (("out", 1), ("err", 2)):
        os.dup2(os.open(f"{out}/{i}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      signal.alarm(300)
      os.environ.update(envs[i])
      sys.argv = [module, *args]
      runpy.run_module(module, run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
    except BaseException:  # as the interpreter would: the traceback, status 1
      traceback.print_exc()
    finally:
      sys.stdout.flush(); sys.stderr.flush()
      os._exit(code)
  _, status = os.waitpid(pid, 0)
  with open(f"{out}/{i}.code", "w") as f:
    f.write(str(os.waitstatus_to_exitcode(status)))
"""


def run_commands(module: str, cases: Sequence[Sequence[str]], env: Optional[Dict[str, str]]
                 = None, cwd=ROOT, case_env: Optional[Sequence[Dict[str, str]]] = None
                 ) -> List[subprocess.CompletedProcess]:
  """`python -m MODULE *args` for each case, one after another, as `subprocess.run` would
  give them (returncode, stdout, stderr). Each case runs in a process of its own, forked
  from one interpreter that ran the entry point's imports once, so that a test of many
  cases does not pay the start-up (most of a bad-input case's time) for each.

  Args:
    module: the entry point, e.g. "rag_jax.ask".
    cases: the argument lists.
    env: the environment (default: `subprocess_env()`).
    cwd: the working directory.
    case_env: per case, variables added to `env` for that case alone.
  """
  case_env = case_env or [{}] * len(cases)
  with tempfile.TemporaryDirectory() as out:
    subprocess.run([sys.executable, "-c", _COMMANDS, module, json.dumps([list(c) for c in cases]),
                    json.dumps(list(case_env)), out],
                   env=subprocess_env() if env is None else env, cwd=cwd, check=True,
                   timeout=900)
    read = lambda i, name: (pathlib.Path(out) / f"{i}.{name}").read_text()
    return [subprocess.CompletedProcess([module, *case], int(read(i, "code")), read(i, "out"),
                                        read(i, "err")) for i, case in enumerate(cases)]


def link_built_tokenizers(cache: pathlib.Path) -> None:
  """Links the real cache's built tokenizers (SmolLM2's, built once from its GGUF by
  rag_jax.weights.gguf_file) into a test's own RAG_JAX_CACHE, which builds the rest."""
  from rag_jax import assets  # pylint: disable=import-outside-toplevel  (jax's settings first)
  (assets.cache_dir() / "tokenizers").mkdir(parents=True, exist_ok=True)
  cache.mkdir(parents=True, exist_ok=True)
  (cache / "tokenizers").symlink_to(assets.cache_dir() / "tokenizers")


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
  """Perturbs every parameter and buffer-like float tensor, so that no LayerNorm weight is
  1, no bias is 0 and a mistake in any of them shows in the outputs."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.state_dict().items():
      if p.is_floating_point() and "position_ids" not in name:
        p.add_(scale * torch.randn(p.shape, generator=gen))
  return model.eval()


def padded_batch(rng: np.random.Generator, lengths, vocab: int, pad_id: int, low: int = 3):
  """Random ids [B, max(lengths)] right-padded with pad_id, and the mask."""
  max_len = max(lengths)
  ids = rng.integers(low, vocab, size=(len(lengths), max_len))
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
  ids = np.where(mask == 1, ids, pad_id)
  return ids.astype(np.int32), mask.astype(np.int32)


def subprocess_env(devices: Optional[int] = None) -> Dict[str, str]:
  """This process's environment, with the repository first on PYTHONPATH.

  Args:
    devices: also ask for this many CPU devices (XLA_FLAGS, JAX_PLATFORMS=cpu): jax fixes the
      device count when it starts, so tests of meshes run in a fresh interpreter.
  """
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo,
                                                                  os.environ.get("PYTHONPATH")])))
  if devices is not None:
    env.update(XLA_FLAGS=f"{os.environ['XLA_FLAGS']} "
                         f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
  return env


def task_config(task: str, arg: str = "tiny", **overrides):
  """experiments/TASK.py's config `arg`, with dotted fields overridden: `task_config("nq",
  **{"retrieval.k": 2})`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(task, os.path.join(root, "experiments",
                                                                   f"{task}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from rag_jax.train import setup  # pylint: disable=import-outside-toplevel
  return setup.override(module.get_config(arg), **overrides)


def whole_prompts(tokenizer, contexts: Sequence[Tuple[str, str, str]],
                  render: Callable[[str, str, str], str], *, limit: int,
                  pad_token_id: int) -> Tuple[np.ndarray, np.ndarray]:
  """The reference for decoder-only contexts: each whole prompt string tokenized at once,
  truncated by shortening its passage text until it fits, left-padded (as the library made
  its prompts before contexts were joined from tokenized parts).

  Args:
    tokenizer: the generator's HF tokenizer.
    contexts: N (title, text, question) triples.
    render: (title, text, question) -> the prompt string.
    limit: the most tokens a prompt keeps.
    pad_token_id: the id of the padding.
  Returns:
    ids, mask: [N, S] int32, S the longest prompt (<= limit), padded on the left.
  """
  rows = []
  for title, text, question in contexts:
    encode = lambda body: tokenizer(render(title, body, question))["input_ids"]
    ids = encode(text)
    if len(ids) > limit:
      # Shorten the passage by the excess until the prompt fits (the tokens of a prefix of
      # the text need not add up exactly, hence the loop); the question stays whole, and
      # only a question that alone is too long is cut, from the left.
      text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
      keep = len(text_ids)
      while len(ids) > limit and keep > 0:
        keep = max(0, keep - (len(ids) - limit))
        ids = encode(tokenizer.decode(text_ids[:keep]))
    rows.append(ids[-limit:])
  width = max(len(r) for r in rows)
  ids = np.full((len(rows), width), pad_token_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    if r:
      ids[i, -len(r):], mask[i, -len(r):] = r, 1
  return ids, mask


def max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_err(a, ref) -> float:
  return max_abs(a, ref) / float(np.max(np.abs(np.asarray(ref, np.float64))))


@pytest.fixture(autouse=True)
def _seed_torch():
  """Seeds torch's global generator before every test. HF models draw their initial weights
  from it (randomize_ only perturbs them), so without this a test's weights would depend on
  which tests ran before it."""
  torch.manual_seed(0)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def pytest_configure(config):
  """`slow`: the tests that take more than a few seconds each (processes of their own, real
  weights, whole training runs). `pytest -m "not slow"` is the quick loop while developing;
  CI and the README's test command run everything. Markers are strict: a misspelt one is an
  error, not a test that silently runs unmarked."""
  config.addinivalue_line("markers", "slow: takes more than a few seconds; "
                          "`-m \"not slow\"` leaves it out")
  config.option.strict_markers = True
  # xdist's `--dist loadfile` would reorder the files by their number of tests, not in
  # pytest_collection_modifyitems' order (`--no-loadscope-reorder`, set here so that the
  # README's command needs no flag for it).
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


# The longest files, longest first, as the last full run measured them (benchmarks/RESULTS.md,
# the suite's durations): started first, they leave no worker alone at the end.
LONGEST_FIRST = ("test_faults.py", "test_notebooks.py", "test_answering.py", "test_train.py",
                 "test_multihost.py", "test_train_processes.py", "test_decoding.py",
                 "test_rag_generators.py", "test_rag.py", "test_llama.py", "test_scan_layers.py",
                 "test_ask.py", "test_cli.py", "test_compile.py", "test_index.py")


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """LONGEST_FIRST's files first, then the files with the most `slow` tests (a stable sort, the
  same on every xdist worker): `--dist loadfile` hands out whole files in this order."""
  slow = {}
  for item in items:
    slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
  rank = lambda path: (LONGEST_FIRST.index(path.name) if path.name in LONGEST_FIRST
                       else len(LONGEST_FIRST))
  items.sort(key=lambda item: (rank(item.path), -slow[item.path]))
