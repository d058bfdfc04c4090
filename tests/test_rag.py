"""RagModel against HF PyTorch RagTokenForGeneration / RagSequenceForGeneration."""

import flax
import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import max_abs, padded_batch, randomize_
from rag_jax import weights
from rag_jax.contexts import format_context
from rag_jax.model import RagModel
from rag_jax.rag import RagConfig

Q = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
         intermediate_size=37, max_position_embeddings=64, projection_dim=0)
G = dict(vocab_size=101, d_model=32, encoder_layers=2, decoder_layers=2,
         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
         decoder_ffn_dim=41, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
         eos_token_id=2, decoder_start_token_id=2)
PAD, BOS, EOS = 1, 0, 2
CLASSES = {"token": transformers.RagTokenForGeneration,
           "sequence": transformers.RagSequenceForGeneration}


def _save_rag(path, kind, n_docs, seed=0):
  config = transformers.RagConfig.from_question_encoder_generator_configs(
      transformers.DPRConfig(**Q), transformers.BartConfig(**G), n_docs=n_docs)
  hf = randomize_(CLASSES[kind](config), seed=seed)
  hf.save_pretrained(path)
  return hf


def _batch(rng, n_docs, label_lengths=(6, 3, 5), bos_first=False):
  b = len(label_lengths)
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=b * n_docs), G["vocab_size"], PAD)
  doc_scores = rng.standard_normal((b, n_docs)).astype(np.float32) * 2
  labels, mask = padded_batch(rng, label_lengths, G["vocab_size"], PAD)
  labels[:, 0] = EOS  # decoder start, as generated sequences have it
  if bos_first:
    labels[:, 1] = BOS
  for i, n in enumerate(label_lengths):
    labels[i, n - 1] = EOS
  return ctx, ctx_mask, doc_scores, labels


def _hf_loss(hf, ctx, ctx_mask, doc_scores, labels, epsilon, **kwargs):
  hf.config.label_smoothing = epsilon
  with torch.no_grad():
    out = hf(context_input_ids=torch.tensor(ctx, dtype=torch.long),
             context_attention_mask=torch.tensor(ctx_mask),
             doc_scores=torch.tensor(doc_scores), labels=torch.tensor(labels, dtype=torch.long),
             n_docs=doc_scores.shape[1], reduce_loss=False, **kwargs)
  return out.loss.numpy()


@pytest.mark.parametrize("kind", ["token", "sequence"])
@pytest.mark.parametrize("n_docs", [1, 3, 5])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_loss_matches_hf(tmp_path, rng, kind, n_docs, epsilon):
  hf = _save_rag(tmp_path, kind, n_docs)
  model = RagModel.from_pretrained(tmp_path)
  assert model.config.n_docs == n_docs
  batch = _batch(rng, n_docs)
  ref = _hf_loss(hf, *batch, epsilon)
  ours = np.asarray(model.loss(*batch, kind=kind, epsilon=epsilon))
  assert ours.shape == (3,)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)


@pytest.mark.parametrize("exclude_bos_score", [False, True])
def test_sequence_exclude_bos_score_matches_hf(tmp_path, rng, exclude_bos_score):
  hf = _save_rag(tmp_path, "sequence", 3, seed=1)
  model = RagModel.from_pretrained(tmp_path)
  batch = _batch(rng, 3, bos_first=True)
  ref = _hf_loss(hf, *batch, 0.0, exclude_bos_score=exclude_bos_score)
  ours = model.loss(*batch, kind="sequence", exclude_bos_score=exclude_bos_score)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_sequence_counts_the_document_prior_where_hf_drops_it(tmp_path, rng):
  """HF adds log p(z|x) to the second target position, so a target whose second position is
  padding (a one-token answer; a pad generated there) loses it. rag_jax keeps it: both against
  the definition, from HF's own per-document logits."""
  z = 3
  hf = _save_rag(tmp_path, "sequence", z, seed=5)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask = padded_batch(rng, rng.integers(4, 15, size=3 * z), G["vocab_size"], PAD)
  doc_scores = (rng.standard_normal((3, z)) * 2).astype(np.float32)
  labels = np.array([[EOS, 7, 8, 9, EOS, PAD],     # an ordinary target
                     [EOS, EOS, PAD, PAD, PAD, PAD],  # one token: position 1 is padding
                     [EOS, 7, PAD, 8, 9, EOS]], np.int32)  # a pad generated at position 1
  with torch.no_grad():
    out = hf(context_input_ids=torch.tensor(ctx, dtype=torch.long),
             context_attention_mask=torch.tensor(ctx_mask), doc_scores=torch.tensor(doc_scores),
             labels=torch.tensor(labels, dtype=torch.long), n_docs=z, reduce_loss=False)
  logits = out.logits.numpy().astype(np.float64).reshape(3, z, labels.shape[1], -1)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.concatenate([labels[:, 1:], np.full((3, 1), PAD)], 1)
  token_lp = np.take_along_axis(lp, np.broadcast_to(targets[:, None, :, None], lp.shape[:3] + (1,)),
                                -1)[..., 0]
  seq_lp = (token_lp * (targets != PAD)[:, None]).sum(-1)                       # [3, Z]
  doc_lp = doc_scores - np.log(np.exp(doc_scores.astype(np.float64)).sum(1, keepdims=True))
  nll = lambda s: -np.log(np.exp(s).sum(1))
  ours = np.asarray(model.loss(ctx, ctx_mask, doc_scores, labels, kind="sequence"))
  np.testing.assert_allclose(ours, nll(seq_lp + doc_lp), rtol=1e-5)
  hf_loss = out.loss.numpy()
  np.testing.assert_allclose(hf_loss[0], ours[0], rtol=1e-5)
  np.testing.assert_allclose(hf_loss[1:], nll(seq_lp)[1:], rtol=1e-5)  # no prior in HF's
  assert np.all(np.abs(hf_loss[1:] - ours[1:]) > 1e-2)


@pytest.mark.slow
def test_marginalized_logits_match_hf_do_marginalize(tmp_path, rng):
  hf = _save_rag(tmp_path, "token", 4, seed=2)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask, doc_scores, labels = _batch(rng, 4)
  with torch.no_grad():
    ref = hf(context_input_ids=torch.tensor(ctx, dtype=torch.long),
             context_attention_mask=torch.tensor(ctx_mask), doc_scores=torch.tensor(doc_scores),
             decoder_input_ids=torch.tensor(labels, dtype=torch.long), n_docs=4,
             do_marginalize=True).logits.numpy()
  ours = model.rag.marginal_log_probs(model.params, ctx, ctx_mask, doc_scores, labels)
  assert ours.shape == ref.shape
  assert max_abs(ours, ref) < 1e-4


@pytest.mark.parametrize("kind", ["token", "sequence"])
@pytest.mark.slow
def test_gradients_match_torch_autograd(tmp_path, rng, kind):
  n_docs = 3
  hf = _save_rag(tmp_path, kind, n_docs, seed=3)
  hf.train(False)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask, _, labels = _batch(rng, n_docs)
  q_ids, q_mask = padded_batch(rng, [5, 9, 7], Q["vocab_size"], 0)
  doc_embeds = rng.standard_normal((3, n_docs, Q["hidden_size"])).astype(np.float32)

  # Torch: doc scores from the question encoder, loss, backward.
  hf.zero_grad()
  t_docs = torch.tensor(doc_embeds, requires_grad=True)
  q = hf.rag.question_encoder(torch.tensor(q_ids, dtype=torch.long),
                              attention_mask=torch.tensor(q_mask))[0]
  scores = torch.bmm(q.unsqueeze(1), t_docs.detach().transpose(1, 2)).squeeze(1)
  hf.config.label_smoothing = 0.0
  loss = hf(context_input_ids=torch.tensor(ctx, dtype=torch.long),
            context_attention_mask=torch.tensor(ctx_mask), doc_scores=scores,
            labels=torch.tensor(labels, dtype=torch.long), n_docs=n_docs,
            reduce_loss=False).loss.sum()
  loss.backward()
  hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}

  def total(params, docs):
    scores = model.rag.doc_scores(params, q_ids, q_mask, docs)
    return model.rag.loss(params, ctx, ctx_mask, scores, labels, kind=kind).sum()

  value, (grads, doc_grads) = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(model.params,
                                                                                doc_embeds)
  np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
  assert not np.any(np.asarray(doc_grads))  # the documents are frozen
  # The question encoder's gradient, mapped into our layout with the loader's own mapping.
  prefix = "rag.question_encoder.question_encoder.bert_model."
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          grads["question_encoder"])
  ref = weights.convert_state_dict(
      hf_grads, abstract, lambda p: tuple(prefix + n for n in weights.bert_names(p)),
      scope=prefix, ignore=[r".*"])
  flat_ours = flax.traverse_util.flatten_dict(grads["question_encoder"])
  flat_ref = flax.traverse_util.flatten_dict(ref)
  scale = max(float(np.abs(v).max()) for v in flat_ref.values())
  assert scale > 1e-3  # the gradient does reach the question encoder
  for path, g in flat_ours.items():
    assert max_abs(g, flat_ref[path]) < 1e-4 * max(1.0, scale), path
  # And the generator's gradient matches too.
  prefix = "rag.generator."
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), grads["generator"])
  ref = weights.convert_state_dict(
      hf_grads, abstract, lambda p: tuple(prefix + n for n in weights.bart_names(p)),
      scope=prefix, ignore=[r".*"], optional={prefix + "final_logits_bias": np.zeros})
  flat_ours = flax.traverse_util.flatten_dict(grads["generator"])
  flat_ref = flax.traverse_util.flatten_dict(ref)
  for path, g in flat_ours.items():
    if path == ("final_logits_bias",):  # a buffer in torch: no gradient there
      continue
    scale = max(1.0, float(np.abs(flat_ref[path]).max()))
    assert max_abs(g, flat_ref[path]) < 1e-4 * scale, path


@pytest.mark.slow
def test_missing_documents_stay_finite(tmp_path, rng):
  _save_rag(tmp_path, "token", 3, seed=4)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask, doc_scores, labels = _batch(rng, 3)
  doc_scores[0, 1:] = -np.inf   # all but one missing
  doc_scores[1, 0] = -np.inf    # one missing
  doc_scores[2, :] = -np.inf    # a padding example: no documents at all
  for kind in ("token", "sequence", "soft"):
    for eps in (0.0, 0.1):
      fn = lambda p, s: model.rag.loss(p, ctx, ctx_mask, s, labels, kind=kind, epsilon=eps).sum()
      value, (g_params, g_scores) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(
          model.params, doc_scores)
      assert np.isfinite(value), (kind, eps)
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(g_params)), (kind, eps)
      assert np.isfinite(g_scores).all(), (kind, eps)
      losses = model.loss(ctx, ctx_mask, doc_scores, labels, kind=kind, epsilon=eps)
      assert float(losses[2]) == 0.0
  # A single remaining document is RAG with n_docs=1: token and sequence agree there.
  single = model.loss(ctx[:3], ctx_mask[:3], doc_scores[:1, :3], labels[:1], kind="token")
  seq = model.loss(ctx[:3], ctx_mask[:3], doc_scores[:1, :3], labels[:1], kind="sequence")
  np.testing.assert_allclose(single, seq, rtol=1e-5)


@pytest.mark.slow
def test_soft_retrieval_gradient_reaches_doc_scores(tmp_path, rng):
  _save_rag(tmp_path, "token", 3, seed=5)
  model = RagModel.from_pretrained(tmp_path)
  ctx, ctx_mask, doc_scores, labels = _batch(rng, 3)
  fn = lambda s: model.rag.loss(model.params, ctx, ctx_mask, s, labels, kind="soft").sum()
  g = jax.jit(jax.grad(fn))(doc_scores)
  assert np.abs(g).max() > 1e-4
  # One document (all others missing) reduces soft retrieval to that document's NLL.
  one = doc_scores.copy()
  one[:, 1:] = -np.inf
  soft = model.loss(ctx, ctx_mask, one, labels, kind="soft")
  token = model.loss(ctx, ctx_mask, one, labels, kind="token")
  np.testing.assert_allclose(soft, token, rtol=1e-4)


def test_config_label_smoothing_and_generator_prefix(tmp_path, rng):
  hf = _save_rag(tmp_path, "token", 3, seed=6)
  config = __import__("json").loads((tmp_path / "config.json").read_text())
  config["label_smoothing"] = 0.1
  config["generator"]["prefix"] = "gen: "
  (tmp_path / "config.json").write_text(__import__("json").dumps(config))
  model = RagModel.from_pretrained(tmp_path)
  assert model.config.prefix == "gen: " and model.config.label_smoothing == 0.1
  batch = _batch(rng, 3)
  np.testing.assert_allclose(model.loss(*batch), _hf_loss(hf, *batch, 0.1), rtol=1e-5)


def test_format_context_matches_hf_retriever():
  config = RagConfig(prefix="p: ")
  assert format_context('"Aaron"', "Aaron is a  prophet.", "who is aaron", config) == \
      "p: Aaron / Aaron is a prophet. // who is aaron"


def test_not_a_rag_checkpoint(tmp_path):
  transformers.BartForConditionalGeneration(transformers.BartConfig(**G)).save_pretrained(tmp_path)
  with pytest.raises(weights.WeightsError, match="unsupported architecture 'bart'"):
    RagModel.from_pretrained(tmp_path)
