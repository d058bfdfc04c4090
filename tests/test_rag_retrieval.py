"""RagModel on a live Retriever: retrieval, doc scores, loss, and a hot-swapped index; the
contexts are `RagModel.contextualize`'s, the one path from passages to generator inputs."""

import json

import jax
import numpy as np
import transformers
import pytest

from conftest import randomize_
from rag_jax.index import saved
from rag_jax.index.retriever import Retriever
from rag_jax.model import RagModel

WORDS = ("alpha beta gamma delta river mountain city king queen music art science war peace "
         "planet star ocean forest paper stone").split()


def _tokenizer(path):
  path.mkdir(parents=True, exist_ok=True)
  (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                            WORDS) + "\n")
  tok = transformers.BertTokenizerFast(str(path / "vocab.txt"))
  tok.save_pretrained(path)
  return tok


def _retrieve(model, retriever, questions, k=2):
  """The retriever's top k and the generator's inputs for them: contexts [B * k, L], doc
  scores [B, k] (q . d from the index), the frozen d(z) [B, k, D], the hits, who answered."""
  results = retriever.retrieve(list(questions), k)
  ids, mask = model.contextualize(questions, [r["hits"] for r in results])
  return {"context_input_ids": ids, "context_attention_mask": mask,
          "doc_scores": np.array([[h["score"] for h in r["hits"]] for r in results], np.float32),
          "doc_embeds": np.stack([r["vectors"] for r in results]).astype(np.float32),
          "hits": [r["hits"] for r in results], "index": results[0]["index"]}


@pytest.mark.slow
def test_rag_model_retrieves_scores_and_follows_a_swapped_index(tmp_path):
  q_config = transformers.DPRConfig(vocab_size=25, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32,
                                    max_position_embeddings=64)
  g_config = transformers.BartConfig(vocab_size=40, d_model=16, encoder_layers=1,
                                     decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=128)
  config = transformers.RagConfig.from_question_encoder_generator_configs(
      q_config, g_config, n_docs=2, max_combined_length=48)
  hf = randomize_(transformers.RagTokenForGeneration(config))
  rag_dir, q_dir = tmp_path / "rag", tmp_path / "q"
  hf.save_pretrained(rag_dir)
  _tokenizer(rag_dir / "question_encoder_tokenizer")
  _tokenizer(rag_dir / "generator_tokenizer")
  hf.rag.question_encoder.save_pretrained(q_dir)  # doubles as the document encoder here
  _tokenizer(q_dir)

  model = RagModel.from_pretrained(rag_dir)
  encoder = model.question_text_encoder()
  indexes = []
  for name, topic in (("a", WORDS[:10]), ("b", WORDS[10:])):
    src = tmp_path / f"{name}.jsonl"
    rng = np.random.default_rng(len(name))
    src.write_text("".join(json.dumps({"title": f"{name}{i}",
                                       "text": " ".join(rng.choice(topic, 12))}) + "\n"
                           for i in range(6)))
    saved.build_index(src, encoder, q_dir, tmp_path / name, dtype="float32", progress=False,
                      log=lambda m: None)
    indexes.append(saved.load_index(tmp_path / name, encoder=encoder))

  retriever = Retriever(encoder, indexes[0])
  questions = ["river king", "star ocean paper"]
  batch = _retrieve(model, retriever, questions)
  assert batch["context_input_ids"].shape == (4, 48) and batch["doc_scores"].shape == (2, 2)
  assert all(h["title"].startswith("a") for row in batch["hits"] for h in row)
  # The index's scores are q . d(z) of this model's question encoder.
  q_ids, q_mask = encoder.tokenize(questions)
  recomputed = model.rag.doc_scores(model.params, q_ids, q_mask, batch["doc_embeds"])
  np.testing.assert_allclose(recomputed, batch["doc_scores"], rtol=1e-4, atol=1e-4)
  labels = np.array([[2, 0, 7, 9, 2], [2, 0, 11, 2, 1]], np.int32)
  loss = model.loss(batch["context_input_ids"], batch["context_attention_mask"],
                    batch["doc_scores"], labels)
  assert np.isfinite(loss).all()
  grads = jax.jit(jax.grad(lambda p: model.rag.loss(
      p, batch["context_input_ids"], batch["context_attention_mask"],
      model.rag.doc_scores(p, q_ids, q_mask, batch["doc_embeds"]), labels).sum()))(model.params)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["question_encoder"]))

  retriever.swap(indexes[1])  # new knowledge, same model
  after = _retrieve(model, retriever, questions)
  assert all(h["title"].startswith("b") for row in after["hits"] for h in row)
  assert after["index"].endswith("b")
  assert not np.array_equal(after["context_input_ids"], batch["context_input_ids"])
