"""Tiny random checkpoints in HF's directory layout, for the `:tiny` configs and the tests.

`write(directory, words)` writes a DPR question encoder and a BART generator, each a
`config.json`, a `model.safetensors` under HF's parameter names and a word-level WordPiece
tokenizer over `words`, so that every loader, the index builder and the trainer run on them
exactly as on real checkpoints, in seconds and with no model hub.

The generator's vocabulary puts [CLS] / [PAD] / [SEP] at 0 / 1 / 2, BART's <s> / <pad> / </s>.
With `generator_kind="llama"` the generator is a decoder-only Llama instead, tokenized as
SmolLM2-Instruct is: no special tokens added to a text, and a chat template ([CLS] opens a
turn, [SEP] ends it and is the EOS).
"""

import json
import pathlib
import shutil
import tempfile
from typing import Iterable, Optional

import flax
import jax
import numpy as np
import safetensors.numpy

from rag_jax.models import bart as bart_lib
from rag_jax.models import bert as bert_lib
from rag_jax.models import llama as llama_lib
from rag_jax.weights.bart import bart_names
from rag_jax.weights.bert import bert_names
from rag_jax.weights.llama import llama_names

QUESTION_ENCODER = dict(model_type="dpr", vocab_size=0, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, projection_dim=0,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
GENERATOR = dict(model_type="bart", vocab_size=0, d_model=32, encoder_layers=2,
                 decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                 dropout=0.1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=2)
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BART_SPECIALS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]  # <s> <pad> </s> <unk> <mask>
LLAMA = dict(model_type="llama", vocab_size=0, hidden_size=32, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, tie_word_embeddings=True, attention_dropout=0.1,
             bos_token_id=0, pad_token_id=1, eos_token_id=2)
CHAT_TEMPLATE = ("{% for m in messages %}[CLS] {{ m['role'] }} {{ m['content'] }} [SEP] "
                 "{% endfor %}{% if add_generation_prompt %}[CLS] assistant{% endif %}")
GENERATOR_KINDS = ("bart", "llama")


def _hf_arrays(params, names) -> dict:
  """Our param tree -> {HF name: array}, the inverse of `state.convert_state_dict`."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel":  # [in..., out...] -> nn.Linear's [out, in]
      n_in = 2 if path[-2] == "out" and value.ndim == 3 else 1
      value = value.reshape(int(np.prod(value.shape[:n_in])), -1).T
    elif path[-1] == "bias":
      value = value.reshape(-1)
    out[names(path)[0]] = np.ascontiguousarray(value)
  return out


def _random_params(module, std: float, rng: np.random.Generator, *args) -> dict:
  """`module.init`'s params drawn in NumPy: the same distributions as the models' own
  initializers (`layers.dense_init`: normal(0, std) kernels and embeddings, zero biases, unit
  scales), from the shapes alone: Flax's init runs the model's forward pass, compiling each
  of its ops once in every process that writes a fresh `:tiny` workdir; tracing it for the
  shapes compiles nothing. (A new kind of param is an error here until it is given its init.)
  """
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
  def draw(path, leaf):
    name = path[-1].key
    shape = flax.linen.meta.unbox(leaf).shape
    if name in ("kernel", "embedding"):
      return rng.normal(0.0, std, shape).astype(np.float32)
    if name in ("bias", "final_logits_bias"):
      return np.zeros(shape, np.float32)
    if name == "scale":
      return np.ones(shape, np.float32)
    raise ValueError(f"no initializer for the param {jax.tree_util.keystr(path)}")
  return jax.tree_util.tree_map_with_path(
      draw, shapes, is_leaf=lambda x: isinstance(x, flax.linen.meta.AxisMetadata))


def _shapes(base: dict, overrides: Optional[dict], vocab: int) -> dict:
  """An HF config: `base` with `overrides`, the vocabulary at least the tokenizer's."""
  config = dict(base, **(overrides or {}))
  config["vocab_size"] = max(vocab, config.get("vocab_size") or 0)
  return config


def _tokenizer(directory: pathlib.Path, specials, words, **kwargs):
  # Lazy, as in rag_jax.weights.tokenizer: training imports this module for `:tiny`, and only
  # writing a checkpoint needs transformers.
  import transformers  # pylint: disable=import-outside-toplevel
  vocab = directory / "vocab.txt"
  vocab.write_text("\n".join(specials + list(words)) + "\n")
  tok = transformers.BertTokenizerFast(str(vocab), **kwargs)
  tok.save_pretrained(str(directory))
  return tok


def _chat_tokenizer(directory: pathlib.Path, words):
  """A word-level tokenizer that adds no special tokens, with a chat template."""
  # Lazy, as `_tokenizer`'s transformers.
  import tokenizers  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  vocab = {w: i for i, w in enumerate(BART_SPECIALS + list(words))}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.Lowercase()
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="[CLS]", pad_token="[PAD]", eos_token="[SEP]",
      unk_token="[UNK]", mask_token="[MASK]")
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(str(directory))


def write(directory, words: Iterable[str], seed: int = 0, *,
          question_encoder: Optional[dict] = None, generator: Optional[dict] = None,
          generator_kind: str = "bart") -> pathlib.Path:
  """Writes `question_encoder/` and `generator/` under `directory` (made atomically: a
  finished directory is reused as it is). Returns `directory`.

  Args:
    directory: where to write.
    words: the vocabulary (lowercase words; both tokenizers lowercase their input).
    seed: the params' seed.
    question_encoder, generator: HF config fields overriding the tiny shapes (e.g. dpr-base
      and bart-base for a benchmark); a vocab_size there is kept if it covers the words.
    generator_kind: "bart" or "llama" (see the module docstring).
  """
  if generator_kind not in GENERATOR_KINDS:
    raise ValueError(f"generator_kind must be one of {GENERATOR_KINDS}, got {generator_kind!r}")
  directory = pathlib.Path(directory)
  if (directory / "generator" / "model.safetensors").is_file():
    return directory
  words = sorted(set(words))
  directory.parent.mkdir(parents=True, exist_ok=True)
  # A private temporary directory renamed into place: concurrent writers (the processes of a
  # multi-host test) each finish their own, and the first rename wins.
  work = pathlib.Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
  rng = np.random.default_rng(seed)
  ids = np.ones((1, 4), np.int32)

  q_hf = _shapes(QUESTION_ENCODER, question_encoder, len(BERT_SPECIALS) + len(words))
  q_module = bert_lib.BertEncoder(bert_lib.BertConfig.from_hf(q_hf))
  q_params = _random_params(q_module, q_module.config.initializer_range, rng, ids, ids)
  q_dir = work / "question_encoder"
  q_dir.mkdir(exist_ok=True)
  (q_dir / "config.json").write_text(json.dumps(q_hf, indent=1))
  prefix = "question_encoder.bert_model."
  safetensors.numpy.save_file(
      _hf_arrays(q_params, lambda p: [prefix + n for n in bert_names(p)]),
      str(q_dir / "model.safetensors"))
  _tokenizer(q_dir, BERT_SPECIALS, words)

  g_dir = work / "generator"
  g_dir.mkdir(exist_ok=True)
  if generator_kind == "llama":
    g_hf = _shapes(LLAMA, generator, len(BART_SPECIALS) + len(words))
    g_module = llama_lib.Llama(llama_lib.LlamaConfig.from_hf(g_hf))
    g_params = _random_params(g_module, g_module.config.initializer_range, rng, ids, ids)
    names = llama_names
    _chat_tokenizer(g_dir, words)
  else:
    g_hf = _shapes(GENERATOR, generator, len(BART_SPECIALS) + len(words))
    g_module = bart_lib.Bart(bart_lib.BartConfig.from_hf(g_hf))
    g_params = _random_params(g_module, g_module.config.init_std, rng, ids, ids, ids)
    names = bart_names
    _tokenizer(g_dir, BART_SPECIALS, words, cls_token="[CLS]", pad_token="[PAD]",
               sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")
  (g_dir / "config.json").write_text(json.dumps(g_hf, indent=1))
  safetensors.numpy.save_file(_hf_arrays(g_params, names), str(g_dir / "model.safetensors"))
  try:
    work.rename(directory)
  except OSError:  # another writer finished first
    shutil.rmtree(work)
  return directory
