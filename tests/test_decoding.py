"""Decoding against HF generate and against the definition of the processors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import padded_batch
from rag_jax import decoding
from rag_jax.model import RagModel
from test_rag import G, PAD, _save_rag


def _compare_with_hf(tmp_path, rng, n_docs, seed, batch=3, **options):
  """Generates with HF and with rag_jax from the same random contexts; asserts equal ids."""
  hf = _save_rag(tmp_path, "token", n_docs, seed=seed)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=batch * n_docs), G["vocab_size"],
                               PAD)
  doc_scores = (rng.standard_normal((batch, n_docs)) * 2).astype(np.float32)
  with torch.no_grad():
    ref = hf.generate(context_input_ids=torch.tensor(ctx, dtype=torch.long),
                      context_attention_mask=torch.tensor(ctx_mask),
                      doc_scores=torch.tensor(doc_scores), n_docs=n_docs, **options).numpy()
  decoding_kind = "beam" if options.get("num_beams", 1) > 1 else "greedy"
  ours = model.generate(ctx, ctx_mask, doc_scores, decoding=decoding_kind, **options)
  np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("n_docs", [1, 3, 5])
@pytest.mark.parametrize("max_length", [6, 12])
def test_rag_token_greedy_matches_hf_generate(tmp_path, rng, n_docs, max_length):
  _compare_with_hf(tmp_path, rng, n_docs, seed=n_docs, num_beams=1, max_length=max_length)


def test_processors_follow_their_definitions():
  p = decoding.Processors(eos_token_id=2, max_length=8, min_length=5, no_repeat_ngram_size=2,
                          forced_bos_token_id=0, forced_eos_token_id=2)
  scores = jnp.zeros((1, 10))
  seq = jnp.array([[2, 5, 6, 5, 1, 1, 1, 1]])
  # cur_len 1: only the forced BOS.
  out = np.asarray(p(scores, seq, jnp.int32(1)))
  assert out[0, 0] == 0 and np.isinf(out[0, 1:]).all()
  # cur_len 4 (< min_length): EOS banned; "5 6" was seen and the last token is 5: 6 banned.
  out = np.asarray(p(scores, seq, jnp.int32(4)))
  assert np.isinf(out[0, 2]) and np.isinf(out[0, 6])
  assert np.isfinite(np.delete(out[0], [2, 6])).all()
  # cur_len 7 = max_length - 1: only the forced EOS.
  out = np.asarray(p(scores, seq, jnp.int32(7)))
  assert out[0, 2] == 0 and np.isinf(np.delete(out[0], 2)).all()


def test_greedy_search_on_a_markov_chain():
  # Token t -> t + 1 is the most likely next token; 4 ends the sequence.
  v = 6
  table = jnp.full((v, v), -5.0).at[jnp.arange(v - 1), jnp.arange(1, v)].set(-0.1)

  def step(tokens, cache, cur_len):
    return table[tokens], cache + 1
  p = decoding.Processors(eos_token_id=4, max_length=8)
  seqs, length = decoding.greedy_search(step, jnp.int32(0), batch=2, start_token_id=1,
                                        pad_token_id=0, processors=p)
  assert int(length) == 4
  np.testing.assert_array_equal(np.asarray(seqs)[:, :4], [[1, 2, 3, 4], [1, 2, 3, 4]])


@pytest.mark.parametrize("cur_len", [1, 3, 5, 7])
def test_processors_match_hf_logits_processors(rng, cur_len):
  import transformers.generation.logits_process as lp
  max_length, v = 8, 7
  seq = rng.integers(0, 4, size=(4, cur_len))  # a small alphabet: n-grams repeat
  scores = rng.standard_normal((4, v)).astype(np.float32)
  bad = [[3], [0, 1], [2]]  # [2] is EOS: HF drops it
  hf = lp.LogitsProcessorList([
      lp.NoRepeatNGramLogitsProcessor(2), lp.NoBadWordsLogitsProcessor(bad, eos_token_id=2),
      lp.MinLengthLogitsProcessor(4, 2),
      lp.ForcedBOSTokenLogitsProcessor(0), lp.ForcedEOSTokenLogitsProcessor(max_length, 2)])
  expected = hf(torch.tensor(seq), torch.tensor(scores)).numpy()
  ours = decoding.Processors(eos_token_id=2, max_length=max_length, min_length=4,
                             no_repeat_ngram_size=2, forced_bos_token_id=0,
                             forced_eos_token_id=2, bad_words_ids=tuple(map(tuple, bad)))
  padded = np.pad(seq, ((0, 0), (0, max_length - cur_len)), constant_values=1)
  out = np.asarray(ours(jnp.asarray(scores), jnp.asarray(padded), jnp.int32(cur_len)))
  np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
  np.testing.assert_allclose(out[np.isfinite(out)], expected[np.isfinite(expected)])


@pytest.mark.parametrize("num_beams, n_docs, num_return", [(2, 1, 1), (2, 3, 2), (4, 5, 1),
                                                           (4, 2, 3)])
def test_rag_token_beam_matches_hf_generate(tmp_path, rng, num_beams, n_docs, num_return):
  _compare_with_hf(tmp_path, rng, n_docs, seed=10 + n_docs, num_beams=num_beams,
                   num_return_sequences=num_return, max_length=9)


@pytest.mark.parametrize("options", [
    dict(early_stopping=True, length_penalty=2.0),
    dict(early_stopping="never", length_penalty=0.5, min_length=5),
    dict(no_repeat_ngram_size=2, length_penalty=-1.0),
], ids=["early-lp2", "never-min5", "ngram2-lp-1"])
def test_beam_options_match_hf(tmp_path, rng, options):
  _compare_with_hf(tmp_path, rng, 3, seed=21, batch=2, num_beams=3, num_return_sequences=3,
                   max_length=10, **options)


def test_beam_search_finds_the_best_path_greedy_misses():
  # From the start token 1 greedy takes 2 (p=0.6) and then pays p=0.3 to reach 4; the path
  # through 3 (p=0.4) goes on almost surely and wins: 0.4 * ~1 > 0.6 * 0.3.
  v, eos = 6, 5
  p = np.full((v, v), 1e-6)
  p[1, 2], p[1, 3] = 0.6, 0.4
  p[2, 4], p[2, 2] = 0.3, 0.7 - 1e-3
  p[3, 4] = 0.95
  p[4, eos] = 0.95
  p[eos, eos] = 1.0
  table = jnp.asarray(np.log(p / p.sum(1, keepdims=True)), jnp.float32)

  def step(tokens, cache, cur_len):
    return table[tokens], cache
  procs = decoding.Processors(eos_token_id=eos, max_length=5)
  greedy, _ = decoding.greedy_search(step, jnp.zeros((1,)), batch=1, start_token_id=1,
                                     pad_token_id=0, processors=procs)
  assert np.asarray(greedy)[0, 1] == 2
  seqs, scores, lengths = decoding.beam_search(
      step, jnp.zeros((2,)), batch=1, num_beams=2, start_token_id=1, pad_token_id=0,
      processors=procs, length_penalty=0.0, reorder_cache=decoding.reorder_rows)
  np.testing.assert_array_equal(np.asarray(seqs)[0, 0, :4], [1, 3, 4, eos])
  t = np.asarray(table)
  np.testing.assert_allclose(scores[0, 0], t[1, 3] + t[3, 4] + t[4, eos], rtol=1e-5)
  assert t[1, 3] + t[3, 4] + t[4, eos] > t[1, 2] + t[2, 4] + t[4, eos]  # the greedy path loses


# score_rows 1: the scoring pass goes one candidate per example at a time.
@pytest.mark.parametrize("score_rows", [decoding.THOROUGH_SCORE_ROWS, 1])
@pytest.mark.parametrize("num_beams, n_docs, num_return", [(2, 3, 1), (3, 2, 2), (4, 5, 3)])
@pytest.mark.slow
def test_rag_sequence_thorough_matches_hf_generate(tmp_path, rng, monkeypatch, num_beams,
                                                   n_docs, num_return, score_rows):
  monkeypatch.setattr(decoding, "THOROUGH_SCORE_ROWS", score_rows)
  hf = _save_rag(tmp_path, "sequence", n_docs, seed=30 + n_docs)
  model = RagModel.from_pretrained(tmp_path)
  b = 3
  # Unpadded contexts: HF's per-document beam search reads them without their mask (its RAG
  # passes attention_mask=None to BART's generate), rag_jax with it; the two agree only where
  # nothing is padded. Padded contexts are checked against a brute-force reference in
  # test_rag_generators.py.
  ctx, ctx_mask = padded_batch(rng, [11] * (b * n_docs), G["vocab_size"], PAD)
  doc_scores = (rng.standard_normal((b, n_docs)) * 2).astype(np.float32)
  with torch.no_grad():
    ref = hf.generate(context_input_ids=torch.tensor(ctx, dtype=torch.long),
                      context_attention_mask=torch.tensor(ctx_mask),
                      doc_scores=torch.tensor(doc_scores), n_docs=n_docs, num_beams=num_beams,
                      num_return_sequences=num_return, max_length=8).numpy()
  ours = model.generate(ctx, ctx_mask, doc_scores, kind="sequence", decoding="thorough",
                        num_beams=num_beams, num_return_sequences=num_return, max_length=8)
  _assert_same_or_tied(model, ctx, ctx_mask, doc_scores, ours, ref, num_return)


def _assert_same_or_tied(model, ctx, ctx_mask, doc_scores, ours, ref, num_return):
  """Thorough decoding ranks candidates by a float likelihood, so two candidates whose scores
  tie to rounding (float32 here, float32 in PyTorch, summed in different orders) may come out
  in either order. The same ids as HF, or else, rank by rank, the same likelihood. (A candidate
  with a pad at its second target position, which random weights can generate, would also
  differ: HF drops the document prior there, rag_jax does not; see test_rag.py. CI once drew
  such weights, before conftest seeded torch for every test.)"""
  if np.array_equal(ours, ref):
    return
  assert ours.shape == ref.shape
  b, z = doc_scores.shape

  def nll(rows):  # each returned row under its own example's documents, one call per row
    out = []
    for r, row in enumerate(rows):
      i = r // num_return
      docs = slice(i * z, (i + 1) * z)
      out.append(float(model.loss(ctx[docs], ctx_mask[docs], doc_scores[i:i + 1], row[None],
                                  kind="sequence", exclude_bos_score=True)[0]))
    return np.array(out)
  np.testing.assert_allclose(nll(ours), nll(ref), rtol=2e-6, atol=2e-6)


def test_fast_select_against_brute_force(rng):
  b, z, k, length = 2, 3, 4, 5
  vocab = 3  # a tiny alphabet: the documents' beams share candidates
  seqs = rng.integers(0, vocab, size=(b, z, k, length))
  lengths = np.full((b, z, k), length)
  log_probs = -rng.random((b, z, k)) * 3
  doc_lp = np.log(rng.dirichlet(np.ones(z), size=b))
  seqs[0, 1, 2] = seqs[0, 0, 0]  # the same candidate from two documents
  picks = decoding.fast_select(seqs, log_probs, doc_lp, lengths, num_return=3)
  for i in range(b):
    candidates = {tuple(seqs[i, zz, kk]) for zz in range(z) for kk in range(k)}
    brute = {}
    for y in candidates:  # sum over documents of p(z) p(y|z), p(y|z) = 0 outside z's beam
      p = sum(np.exp(doc_lp[i, zz] + log_probs[i, zz, kk]) for zz in range(z)
              for kk in range(k) if tuple(seqs[i, zz, kk]) == y)
      brute[y] = np.log(p)
    best = sorted(brute.items(), key=lambda item: -item[1])[:3]
    assert [y for y, _ in picks[i]] == [y for y, _ in best]
    np.testing.assert_allclose([s for _, s in picks[i]], [s for _, s in best], rtol=1e-9)


def test_fast_decoding_end_to_end(tmp_path, rng):
  _save_rag(tmp_path, "sequence", 3, seed=40)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=6), G["vocab_size"], PAD)
  doc_scores = (rng.standard_normal((2, 3)) * 2).astype(np.float32)
  out = model.generate(ctx, ctx_mask, doc_scores, kind="sequence", decoding="fast",
                       num_beams=3, num_return_sequences=2, max_length=8)
  assert out.shape[0] == 4 and np.all(out[:, 0] == G["decoder_start_token_id"])
  # Each answer is one of the beams under some document of its example.
  seqs, _, lengths = decoding.generator_beam(
      model.rag.gen, model.params["generator"], ctx, ctx_mask, num_beams=3,
      processors=decoding.Processors(eos_token_id=2, max_length=8, forced_eos_token_id=2))
  seqs = np.asarray(seqs).reshape(2, 3 * 3, -1)
  for row, example in zip(out, (0, 0, 1, 1)):
    trimmed = row[:np.max(np.nonzero(row != PAD)) + 1]
    assert any(np.array_equal(trimmed, s[:len(trimmed)]) and
               np.all(s[len(trimmed):] == PAD) for s in seqs[example])


@pytest.mark.slow
def test_doc_posteriors_and_heatmap(tmp_path, rng):
  from rag_jax.ask import heatmaps
  _save_rag(tmp_path / "m", "token", 4, seed=50)
  model = RagModel.from_pretrained(tmp_path / "m")
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=8), G["vocab_size"], PAD)
  doc_scores = np.array([[3.0, 0.5, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
  seqs = model.generate(ctx, ctx_mask, doc_scores, decoding="beam", num_beams=2, max_length=10)
  post = model.doc_posteriors(ctx, ctx_mask, doc_scores, seqs)
  assert post.shape == (2, 4, seqs.shape[1] - 1)
  np.testing.assert_allclose(post.sum(axis=1), 1.0, rtol=1e-5)
  # Against the definition, from full forward passes per document.
  g = model.generator
  for z in range(4):
    logits = g.apply({"params": model.params["generator"]}, ctx[z:z + 1], ctx_mask[z:z + 1],
                     seqs[:1, :-1])
    lp = jax.nn.log_softmax(logits[0], -1)[np.arange(seqs.shape[1] - 1), seqs[0, 1:]]
    if z == 0:
      joint = np.zeros((4, seqs.shape[1] - 1))
    joint[z] = np.asarray(lp) + np.log(np.exp(doc_scores[0, z]) / np.exp(doc_scores[0]).sum())
  expected = np.exp(joint - np.log(np.exp(joint).sum(0, keepdims=True)))
  np.testing.assert_allclose(post[0], expected, rtol=1e-4, atol=1e-6)
  out = tmp_path / "posteriors.png"
  heatmaps.posterior_heatmap(post[0], [str(t) for t in seqs[0, 1:]], out)
  assert out.stat().st_size > 5000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generation_defaults_come_from_the_checkpoint(tmp_path, rng):
  import json
  hf = _save_rag(tmp_path, "token", 2, seed=60)
  (tmp_path / "generation_config.json").write_text(json.dumps(
      {"num_beams": 3, "max_length": 7, "no_repeat_ngram_size": 2, "bad_words_ids": [[5]]}))
  model = RagModel.from_pretrained(tmp_path)
  assert model.generation_defaults["num_beams"] == 3
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=4), G["vocab_size"], PAD)
  doc_scores = rng.standard_normal((2, 2)).astype(np.float32)
  with torch.no_grad():
    ref = hf.generate(context_input_ids=torch.tensor(ctx, dtype=torch.long),
                      context_attention_mask=torch.tensor(ctx_mask),
                      doc_scores=torch.tensor(doc_scores), n_docs=2, num_beams=3, max_length=7,
                      no_repeat_ngram_size=2, bad_words_ids=[[5]]).numpy()
  np.testing.assert_array_equal(model.generate(ctx, ctx_mask, doc_scores), ref)
  with pytest.raises(TypeError, match="unexpected option 'beams'"):
    model.generate(ctx, ctx_mask, doc_scores, beams=2)
