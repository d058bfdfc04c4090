"""The shapes of a training config's models without their weights: the HF config.json fields
of the hub names the configs use (what changes the compiled step: shapes, dropout, special
tokens), a local checkpoint's config.json, or `model.tiny`'s."""

import json
import pathlib
from typing import Dict, Tuple

from rag_jax.compile.targets import InputError
from rag_jax.weights import tiny

# HF config.json fields of the architectures the configs name (shapes, dropout and special
# tokens: what changes the compiled step). Weights are never read.
DPR_QUESTION_ENCODER_BASE = dict(
    model_type="dpr", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=0,
    projection_dim=0)
BART_LARGE = dict(
    model_type="bart", vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
    encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
    decoder_ffn_dim=4096, max_position_embeddings=1024, activation_function="gelu",
    dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, scale_embedding=False,
    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    forced_bos_token_id=0, forced_eos_token_id=2)
BART_BASE = dict(BART_LARGE, d_model=768, encoder_layers=6, decoder_layers=6,
                 encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                 decoder_ffn_dim=3072)
ARCHITECTURES: Dict[str, dict] = {
    "facebook/dpr-question_encoder-single-nq-base": DPR_QUESTION_ENCODER_BASE,
    "facebook/dpr-question_encoder-multiset-base": DPR_QUESTION_ENCODER_BASE,
    "facebook/bart-large": BART_LARGE,
    "facebook/bart-base": BART_BASE,
}
# HF RAG checkpoints (`model.rag_checkpoint`): their question encoder and generator.
RAG_CHECKPOINTS = {
    name: ("facebook/dpr-question_encoder-single-nq-base", "facebook/bart-large")
    for name in ("facebook/rag-token-nq", "facebook/rag-sequence-nq", "facebook/rag-token-base",
                 "facebook/rag-sequence-base")}
TINY_VOCAB = 1000  # `model.tiny`: its vocabulary is the data's words; this stands in for it


def _hf_config(spec: str, role: str) -> dict:
  """The HF config.json fields of a checkpoint name: a local directory's config.json, or
  ARCHITECTURES."""
  if spec in ARCHITECTURES:
    return dict(ARCHITECTURES[spec])
  local = pathlib.Path(str(spec)).expanduser()
  if (local / "config.json").is_file():
    return json.loads((local / "config.json").read_text())
  raise InputError(f"unknown {role} architecture {spec!r}: rag_jax.compile knows "
                   f"{', '.join(sorted(ARCHITECTURES))}, or reads config.json from a local "
                   "checkpoint directory (no weights)")


def architectures(config) -> Tuple[dict, dict]:
  """(question encoder, generator) HF config dicts of a training config."""
  m = config.model
  if m.tiny:
    return (dict(tiny.QUESTION_ENCODER, vocab_size=TINY_VOCAB),
            dict(tiny.GENERATOR, vocab_size=TINY_VOCAB))
  if m.rag_checkpoint:
    if m.rag_checkpoint in RAG_CHECKPOINTS:
      q, g = RAG_CHECKPOINTS[m.rag_checkpoint]
      return _hf_config(q, "question encoder"), _hf_config(g, "generator")
    hf = _hf_config(m.rag_checkpoint, "RAG checkpoint")
    if "question_encoder" not in hf or "generator" not in hf:
      raise InputError(f"{m.rag_checkpoint}: its config.json is not a RAG config (no "
                       "question_encoder / generator)")
    return dict(hf["question_encoder"]), dict(hf["generator"])
  return (_hf_config(m.question_encoder, "question encoder"),
          _hf_config(m.generator, "generator"))
