"""Decoding against HF generate and against the definition of the processors."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import padded_batch
from rag_jax import decoding
from rag_jax.rag import RagModel
from test_rag import G, PAD, _save_rag


@pytest.mark.parametrize("n_docs", [1, 3, 5])
@pytest.mark.parametrize("max_length", [6, 12])
def test_rag_token_greedy_matches_hf_generate(tmp_path, rng, n_docs, max_length):
  hf = _save_rag(tmp_path, "token", n_docs, seed=n_docs)
  model = RagModel.from_pretrained(tmp_path)
  b = 3
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=b * n_docs), G["vocab_size"], PAD)
  doc_scores = (rng.standard_normal((b, n_docs)) * 2).astype(np.float32)
  with torch.no_grad():
    ref = hf.generate(context_input_ids=torch.tensor(ctx, dtype=torch.long),
                      context_attention_mask=torch.tensor(ctx_mask),
                      doc_scores=torch.tensor(doc_scores), n_docs=n_docs, num_beams=1,
                      max_length=max_length).numpy()
  ours = model.generate(ctx, ctx_mask, doc_scores, max_length=max_length)
  np.testing.assert_array_equal(ours, ref)


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
  hf = lp.LogitsProcessorList([
      lp.NoRepeatNGramLogitsProcessor(2), lp.MinLengthLogitsProcessor(4, 2),
      lp.ForcedBOSTokenLogitsProcessor(0), lp.ForcedEOSTokenLogitsProcessor(max_length, 2)])
  expected = hf(torch.tensor(seq), torch.tensor(scores)).numpy()
  ours = decoding.Processors(eos_token_id=2, max_length=max_length, min_length=4,
                             no_repeat_ngram_size=2, forced_bos_token_id=0,
                             forced_eos_token_id=2)
  padded = np.pad(seq, ((0, 0), (0, max_length - cur_len)), constant_values=1)
  out = np.asarray(ours(jnp.asarray(scores), jnp.asarray(padded), jnp.int32(cur_len)))
  np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
  np.testing.assert_allclose(out[np.isfinite(out)], expected[np.isfinite(expected)])
