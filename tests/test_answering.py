"""`rag_jax.ask` answering: the Answerer against the RagModel it wraps, called directly on
unpadded inputs (batching and prompt padding change nothing), the temperature sweep against
the RAG loss, and the default job end to end on real weights (SmolLM2 over MiniLM's passages)."""

import json
import os
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest
import transformers

from conftest import link_built_tokenizers, randomize_
from rag_jax import assets
from rag_jax.ask import answering
from rag_jax.configs import wiki as wiki_config
from rag_jax.encoder import TextEncoder
from test_llama import TINY, _write_gguf

QUESTIONS = ["where is the cat", "is it hot", "who has a hat"]
HITS = [[{"id": f"{q}-{z}", "title": title, "text": text, "score": score}
         for z, (title, text, score) in enumerate(row)]
        for q, row in enumerate([
            [("cat", "the cat sat on the mat", 0.61), ("dog", "a dog", 0.55), ("sun", "hot", 0.2)],
            [("sun", "the sun is hot", 0.7), ("hat", "a hat", 0.69), ("ice", "ice is cold", 0.1)],
            [("hat", "the man has a hat", 0.5), ("cat", "a cat", 0.52), ("dog", "no", 0.49)]])]


@pytest.fixture(scope="module")
def answerer(tmp_path_factory):
  """An Answerer over a tiny random GGUF Llama (its tokenizer: lowercase letters, '.' and
  spaces) behind MiniLM, EOS made unlikely so that answers run to max_new_tokens."""
  directory = tmp_path_factory.mktemp("tiny")
  hf = randomize_(transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)), scale=0.5)
  _write_gguf(directory / "tiny.gguf", hf, gguf.GGMLQuantizationType.F32)
  config = wiki_config.get_config()
  config.update(generator=str(directory / "tiny.gguf"), max_new_tokens=6, doc_temperature=0.05,
                max_prompt_length=24, questions_per_batch=2)
  encoder = TextEncoder.from_pretrained(assets.fetch("all-MiniLM-L6-v2"))
  # The GGUF's built tokenizer goes to a cache of its own, not the user's.
  with pytest.MonkeyPatch.context() as env:
    env.setenv("RAG_JAX_CACHE", str(directory / "cache"))
    return answering.Answerer.from_config(config, encoder, log=lambda _: None)


def _direct(answerer, questions, hits, kind):
  """What the Answerer must return, from the RagModel called once on unpadded inputs."""
  m = answerer.model
  ids, mask = m.contextualize(questions, hits)
  scores = (np.zeros((len(questions), 1)) if hits is None else
            np.array([[h["score"] for h in row] for row in hits])) / answerer.doc_temperature
  seqs = m.generate(ids, mask, scores, kind=kind,
                    decoding="greedy" if kind == "token" else "thorough", num_beams=1,
                    max_length=answerer.max_new_tokens + 1)
  return seqs, m.doc_posteriors(ids, mask, scores, seqs, kind=kind), np.asarray(
      jax.nn.softmax(scores, axis=1))


@pytest.mark.parametrize("kind", ["token", "sequence"])
@pytest.mark.slow
def test_answers_equal_the_model_called_directly(answerer, kind):
  """Batches of 2 (the last one padded with a repeated row), prompts padded to the
  bucket: the same answers, priors and posteriors as one unpadded call."""
  answerer.kind = kind
  got = answerer.answer(QUESTIONS, HITS)
  seqs, post, prior = _direct(answerer, QUESTIONS, HITS, kind)
  tok, eos = answerer.model.generator_tokenizer, answerer.model.rag.gen.eos_token_id
  for b, r in enumerate(got):
    row = list(seqs[b, 1:])
    n = row.index(eos) if eos in row else len(row)
    assert n > 0 and r["answer"] == tok.decode(row[:n], skip_special_tokens=True).strip()
    assert "".join(r["tokens"]) == tok.decode(row[:n])
    np.testing.assert_allclose(r["posteriors"], post[b, :, :n], rtol=1e-4, atol=1e-6)
    whole = post[b, :, :n].mean(axis=1) if kind == "token" else post[b, :, n - 1]
    assert [p["id"] for p in r["passages"]] == [h["id"] for h in HITS[b]]
    np.testing.assert_allclose([p["prior"] for p in r["passages"]], prior[b], rtol=1e-5)
    np.testing.assert_allclose([p["posterior"] for p in r["passages"]], whole, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(sum(p["posterior"] for p in r["passages"]), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_closed_book_is_the_generator_alone(answerer):
  answerer.kind = "token"
  got = answerer.answer(QUESTIONS, None)
  seqs, _, _ = _direct(answerer, QUESTIONS, None, "token")
  ids, _ = answerer.model.contextualize(QUESTIONS, None)
  tok = answerer.model.generator_tokenizer
  assert tok.decode(ids[0][ids[0] != answerer.model.rag.gen.pad_token_id]) == QUESTIONS[0]
  for b, r in enumerate(got):
    assert r["passages"] == [] and r["posteriors"] is None
    assert r["answer"] == tok.decode(seqs[b, 1:], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_temperature_sweep_equals_the_rag_loss(answerer):
  """Each temperature's figure is the RAG loss of the gold answers (start token + answer,
  no EOS) with the scores divided by it, per answer token, averaged over questions."""
  m, gold = answerer.model, ["on the mat", "yes", "the man"]
  sweep = answerer.temperature_sweep(QUESTIONS, HITS, gold, [0.05, 1.0])
  ids, mask = m.contextualize(QUESTIONS, HITS)
  rows = [[m.rag.gen.start_token_id] + m.generator_tokenizer(a, add_special_tokens=False)[
      "input_ids"] for a in gold]
  labels = np.full((3, max(map(len, rows))), m.rag.gen.pad_token_id, np.int32)
  for i, r in enumerate(rows):
    labels[i, :len(r)] = r
  scores = np.array([[h["score"] for h in row] for row in HITS], np.float32)
  lengths = np.array([len(r) - 1 for r in rows])
  for t in (0.05, 1.0):
    for kind in ("token", "sequence"):
      nll = np.asarray(m.loss(ids, mask, scores / t, labels, kind=kind, exclude_bos_score=False))
      assert sweep[t][kind] == pytest.approx(np.mean(nll / lengths), rel=1e-4), (t, kind)
  assert sweep[0.05]["token"] != pytest.approx(sweep[1.0]["token"])


def test_heatmaps_one_file_per_answered_question(answerer, tmp_path):
  answerer.kind = "token"
  results = answerer.answer(QUESTIONS[:2], HITS[:2])
  assert answering.write_heatmaps(results[:1], tmp_path / "one.png") == [tmp_path / "one.png"]
  written = answering.write_heatmaps(results, tmp_path / "map.png")
  assert written == [tmp_path / "map-1.png", tmp_path / "map-2.png"]
  assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
  assert answering.write_heatmaps(answerer.answer(QUESTIONS[:1], None), tmp_path / "cb.png") == []


def test_bad_settings_are_refused_before_loading():
  config = wiki_config.get_config()
  for field, value, message in [("kind", "soft", "kind must be one of"),
                                ("doc_temperature", 0.0, "doc_temperature must be positive"),
                                ("max_new_tokens", 0, "must be positive"),
                                ("max_prompt_length", 8, "max_prompt_length must be at least")]:
    bad = wiki_config.get_config()
    bad[field] = value
    with pytest.raises(ValueError, match=message):
      answering.check_config(bad)
  assert answering.check_config(config).kind == "token"


@pytest.mark.slow
def test_the_default_job_answers_from_its_passages(tmp_path):
  """`python -m rag_jax.ask` as a user runs it (any directory), on real weights: MiniLM over
  a few embedded articles, SmolLM2-135M-Instruct answering; --json and --heatmap."""
  articles = [a for a in assets.wiki_summaries()
              if a["title"] in ("War and Peace", "Jupiter", "Mona Lisa", "Brazil", "Cologne")]
  corpus = tmp_path / "articles.jsonl"
  corpus.write_text("".join(json.dumps(a) + "\n" for a in articles))
  env = dict(os.environ, RAG_JAX_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
  # The assets come from the real cache (a fresh one would fetch them again), and so does
  # SmolLM2's built tokenizer: the index is what this cache builds.
  minilm, smollm2 = assets.fetch("all-MiniLM-L6-v2"), assets.fetch("smollm2-135m-instruct")
  link_built_tokenizers(tmp_path / "cache")
  proc = subprocess.run(
      [sys.executable, "-m", "rag_jax.ask", f"--config.corpus={corpus}",
       f"--config.encoder={minilm}", f"--config.generator={smollm2}", "--k=2",
       "--config.max_new_tokens=20", "--json", "--heatmap", str(tmp_path / "map.png"),
       "--question", "Who wrote the novel War and Peace?",
       "--question", "Who painted the Mona Lisa?"],
      capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [set(r) for r in lines] == [{"question", "answer", "passages"}] * 2
  tolstoy, leonardo = lines
  assert "Tolstoy" in tolstoy["answer"] and "Leonardo" in leonardo["answer"], lines
  for r, title in ((tolstoy, "War and Peace"), (leonardo, "Mona Lisa")):
    assert [set(p) for p in r["passages"]] == [{"id", "title", "score", "prior", "posterior",
                                                "text"}] * 2
    assert r["passages"][0]["title"] == title
    assert max(r["passages"], key=lambda p: p["posterior"])["title"] == title
  assert (tmp_path / "map-1.png").is_file() and (tmp_path / "map-2.png").is_file()
  assert "building the index" in proc.stderr and "generator" in proc.stderr
  # The generator alone, on the same question, each line of standard input answered as it
  # comes (--interactive; a blank line is skipped with a note): no passages, another answer;
  # the index is not built again (nor read: closed book retrieves nothing).
  proc = subprocess.run(
      [sys.executable, "-m", "rag_jax.ask", f"--config.corpus={corpus}",
       f"--config.encoder={minilm}", f"--config.generator={smollm2}",
       "--config.max_new_tokens=20", "--json", "--closed-book", "--interactive"],
      input="Who wrote the novel War and Peace?\n\nWho painted the Mona Lisa?\n",
      capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  closed = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [r["question"] for r in closed] == ["Who wrote the novel War and Peace?",
                                             "Who painted the Mona Lisa?"]
  assert closed[0]["passages"] == [] and closed[0]["answer"]
  assert closed[0]["answer"] != tolstoy["answer"]
  assert "a blank line" in proc.stderr and "building the index" not in proc.stderr


def test_a_batch_is_padded_to_a_power_of_two_at_most_questions_per_batch():
  assert [answering.Answerer(None, questions_per_batch=8).batch_rows(n)
          for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
  assert [answering.Answerer(None, questions_per_batch=6).batch_rows(n)
          for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
