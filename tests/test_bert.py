"""Flax BERT / DPR / sentence-transformers encoders against HF PyTorch on random weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import max_abs, padded_batch, randomize_, rel_err
from rag_jax import weights

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
            hidden_act="gelu")
LENGTHS = [7, 3, 11, 1]


def _inputs(rng):
  ids, mask = padded_batch(rng, LENGTHS, TINY["vocab_size"], pad_id=0)
  types = (rng.random(ids.shape) < 0.5).astype(np.int32) * mask
  return ids, mask, types


def _run(module, params, ids, mask, types=None):
  return jax.jit(module.apply)({"params": params}, ids, mask, types)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_bert_model_matches_hf(tmp_path, rng, act):
  hf = randomize_(transformers.BertModel(transformers.BertConfig(**{**TINY, "hidden_act": act})))
  hf.save_pretrained(tmp_path)
  ids, mask, types = _inputs(rng)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types))
  module, params = weights.load_bert(tmp_path)
  assert module.config.pooling == "pooler"
  hidden, pooled = _run(module, params, ids, mask, types)
  valid = mask.astype(bool)
  assert max_abs(np.asarray(hidden)[valid], ref.last_hidden_state.numpy()[valid]) < 1e-4
  assert max_abs(pooled, ref.pooler_output.numpy()) < 1e-4


@pytest.mark.parametrize("kind", ["question", "context"])
@pytest.mark.parametrize("projection_dim", [0, 16])
def test_dpr_encoders_match_hf(tmp_path, rng, kind, projection_dim):
  config = transformers.DPRConfig(**TINY, projection_dim=projection_dim)
  cls = transformers.DPRQuestionEncoder if kind == "question" else transformers.DPRContextEncoder
  hf = randomize_(cls(config), seed=1)
  hf.save_pretrained(tmp_path)
  ids, mask, _ = _inputs(rng)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).pooler_output.numpy()
  module, params = weights.load_bert(tmp_path)
  assert module.config.pooling == "cls" and module.config.output_dim == ref.shape[-1]
  _, pooled = _run(module, params, ids, mask)
  assert pooled.shape == ref.shape
  assert max_abs(pooled, ref) < 1e-4


def _sentence_transformers_dir(path, seed=2):
  """A BERT saved in sentence-transformers' layout: mean pooling, then Normalize."""
  hf = randomize_(transformers.BertModel(transformers.BertConfig(**TINY)), seed=seed)
  hf.save_pretrained(path)
  modules = [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize",
       "type": "sentence_transformers.models.Normalize"}]
  (path / "modules.json").write_text(json.dumps(modules))
  (path / "1_Pooling").mkdir()
  (path / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": TINY["hidden_size"], "pooling_mode_cls_token": False,
       "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
  return hf


def torch_mean_pool_normalize(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
  """sentence-transformers' Pooling(mean) + Normalize, written out."""
  m = mask.unsqueeze(-1).float()
  pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
  return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


def test_sentence_transformers_layout_mean_pooling(tmp_path, rng):
  hf = _sentence_transformers_dir(tmp_path)
  ids, mask, _ = _inputs(rng)
  with torch.no_grad():
    hidden = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  ref = torch_mean_pool_normalize(hidden, torch.tensor(mask))
  module, params = weights.load_bert(tmp_path)
  assert (module.config.pooling, module.config.normalize) == ("mean", True)
  _, pooled = _run(module, params, ids, mask)
  assert max_abs(pooled, ref) < 1e-4
  np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_bfloat16_close_to_float32(tmp_path, rng):
  randomize_(transformers.DPRQuestionEncoder(transformers.DPRConfig(**TINY, projection_dim=16)),
             scale=0.05).save_pretrained(tmp_path)
  ids, mask, _ = _inputs(rng)
  m32, p = weights.load_bert(tmp_path)
  m16, _ = weights.load_bert(tmp_path, dtype=jnp.bfloat16)
  _, ref = _run(m32, p, ids, mask)
  _, out = _run(m16, p, ids, mask)
  assert out.dtype == jnp.float32  # pooled vectors leave in float32
  assert rel_err(out, ref) < 2e-2


def test_pooling_override_and_pytorch_bin(tmp_path, rng):
  hf = randomize_(transformers.BertModel(transformers.BertConfig(**TINY)), seed=3)
  hf.config.save_pretrained(tmp_path)  # The legacy layout: config.json + pytorch_model.bin.
  torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
  ids, mask, _ = _inputs(rng)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  module, params = weights.load_bert(tmp_path, pooling="cls")
  _, pooled = _run(module, params, ids, mask)
  assert max_abs(pooled, ref[:, 0].numpy()) < 1e-4


@pytest.mark.slow
def test_remat_full_changes_no_numbers(tmp_path, rng):
  randomize_(transformers.BertModel(transformers.BertConfig(**TINY))).save_pretrained(tmp_path)
  module, params = weights.load_bert(tmp_path)
  ids, mask, types = _inputs(rng)
  loss = lambda m: lambda p: m.apply({"params": p}, ids, mask, types)[1].sum()
  ref = jax.grad(loss(module))(params)
  out = jax.grad(loss(module.clone(remat="full")))(params)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    assert max_abs(a, b) < 1e-5 * max(1.0, float(np.abs(b).max()))
