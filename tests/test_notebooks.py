"""The notebooks run on tiny settings (their settings cell reads RAG_JAX_NB_* variables) and
show what they claim: quickstart's answer holds the expected word and its heatmap is drawn,
finetune's loss falls and its curve is drawn (20 steps, before the first eval), hot_swap's
answer changes to the edited fact.

Each runs in a fresh kernel (nbclient, ipykernel) with a cache of its own (the real cache's
assets linked in) and one JAX compilation cache for all three, so that hot_swap reuses the
programs quickstart compiled (the same k, batch and answer length).
"""

import json
import os
import pathlib

import nbclient
import nbformat
import pytest

from conftest import link_built_tokenizers
from rag_jax import assets

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
TINY = {"RAG_JAX_NB_ARTICLES": "30", "RAG_JAX_NB_QUESTIONS": "1", "RAG_JAX_NB_K": "2",
        "RAG_JAX_NB_NEW_TOKENS": "12", "RAG_JAX_NB_STEPS": "20"}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("cache")
  for name in ("all-MiniLM-L6-v2", "smollm2-135m-instruct", "wiki-summaries-en"):
    (cache / name).symlink_to(assets.fetch(name))
  link_built_tokenizers(cache)
  return {**TINY, "RAG_JAX_CACHE": str(cache),
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache"))}


def run(name: str, env) -> nbformat.NotebookNode:
  """The notebook, executed in notebooks/ with `env` added to this process's environment."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(NOTEBOOKS)}}
                          ).execute(env={**os.environ, **env})
  return nb


def printed(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


def answers(nb):
  return [line[3:] for line in printed(nb).splitlines() if line.startswith("A: ")]


def pngs(nb):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
          if "image/png" in o.get("data", {})]


def test_stored_without_outputs():
  for path in sorted(NOTEBOOKS.glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in nb.cells if c.cell_type == "code"), path.name
    assert "google.colab" in nb.cells[0].source and "REPO_URL" in nb.cells[0].source


@pytest.mark.slow
def test_quickstart_answers_from_the_embedded_wikipedia(kernel_env):
  nb = run("quickstart.ipynb", kernel_env)
  out = printed(nb)
  assert "Who painted the Mona Lisa? -> ['Mona Lisa'," in out
  assert len(answers(nb)) == 1 and "Leonardo" in answers(nb)[0]
  passages = [line for line in out.splitlines() if line.lstrip().startswith("prior ")]
  assert len(passages) == 2 and "Mona Lisa: " in passages[0]
  assert len(pngs(nb)) == 1  # the heatmap, inline


@pytest.mark.slow
def test_finetune_loss_falls(kernel_env, tmp_path):
  nb = run("finetune.ipynb", {**kernel_env, "RAG_JAX_NB_WORKDIR": str(tmp_path)})
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [m["loss"] for m in lines if "loss" in m]
  assert [m["step"] for m in lines if "loss" in m] == list(range(1, 21))
  assert losses[-1] < 0.7 * losses[0]
  assert f"-> {losses[-1]:.3f} at step 20" in printed(nb)
  assert len(pngs(nb)) == 1  # the loss curve


@pytest.mark.slow
def test_hot_swap_answer_follows_the_new_index(kernel_env):
  nb = run("hot_swap.ipynb", kernel_env)
  before, after = answers(nb)
  assert "Tolstoy" in before and "Chekhov" not in before
  assert "Chekhov" in after and "Tolstoy" not in after
  tops = [line for line in printed(nb).splitlines() if "top passage" in line]
  assert [t.split(":")[0] for t in tops] == ["index-v1", "index-v2"]
  assert all("'War and Peace'" in t for t in tops)
