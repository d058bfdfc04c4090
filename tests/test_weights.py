"""Loading errors name the problem in one line; nothing loads half-right."""

import json

import pytest
import torch
import transformers

from conftest import randomize_
from rag_jax import weights

TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64)


@pytest.fixture
def bert_dir(tmp_path):
  randomize_(transformers.BertModel(transformers.BertConfig(**TINY_BERT))).save_pretrained(tmp_path)
  return tmp_path


def _error(fn, *args, **kwargs) -> str:
  with pytest.raises(weights.WeightsError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_missing_directory(tmp_path):
  assert "no such directory" in _error(weights.load, tmp_path / "nope")


def test_missing_config(bert_dir):
  (bert_dir / "config.json").unlink()
  assert "config.json: missing file" in _error(weights.load_bert, bert_dir)


def test_missing_weights_file(bert_dir):
  (bert_dir / "model.safetensors").unlink()
  assert "missing file" in _error(weights.load_bert, bert_dir)


def test_corrupt_weights_file(bert_dir):
  path = bert_dir / "model.safetensors"
  path.write_bytes(path.read_bytes()[:1000])
  assert "unreadable safetensors file" in _error(weights.load_bert, bert_dir)


def test_unsupported_architecture(tmp_path):
  config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
  transformers.GPT2Model(config).save_pretrained(tmp_path)
  message = _error(weights.load, tmp_path)
  assert "unsupported architecture 'gpt2'" in message
  assert "unsupported architecture 'gpt2'" in _error(weights.load_bart, tmp_path)


def test_shape_mismatch_names_the_parameter(bert_dir):
  config = json.loads((bert_dir / "config.json").read_text())
  config["intermediate_size"] = 40
  (bert_dir / "config.json").write_text(json.dumps(config))
  message = _error(weights.load_bert, bert_dir)
  assert str(bert_dir) in message
  assert "parameter encoder.layer.0.intermediate.dense." in message
  assert "has shape (37" in message and "expected (40" in message


def test_missing_parameter_is_named(bert_dir):
  config = json.loads((bert_dir / "config.json").read_text())
  config["num_hidden_layers"] = 3
  (bert_dir / "config.json").write_text(json.dumps(config))
  assert "missing parameter encoder.layer.2." in _error(weights.load_bert, bert_dir)


def test_unexpected_parameter_is_an_error(bert_dir):
  config = json.loads((bert_dir / "config.json").read_text())
  config["num_hidden_layers"] = 1
  (bert_dir / "config.json").write_text(json.dumps(config))
  assert "unexpected parameter encoder.layer.1." in _error(weights.load_bert, bert_dir)


def test_mbart_style_config_is_refused(tmp_path):
  config = transformers.BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                   encoder_ffn_dim=8, decoder_ffn_dim=8)
  transformers.BartForConditionalGeneration(config).save_pretrained(tmp_path)
  data = json.loads((tmp_path / "config.json").read_text())
  data["normalize_before"] = True
  (tmp_path / "config.json").write_text(json.dumps(data))
  assert "normalize_before" in _error(weights.load_bart, tmp_path)


def test_unreachable_hub_name(monkeypatch):
  import huggingface_hub

  def offline(*args, **kwargs):
    raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  message = _error(weights.load, "no-such-org/no-such-model-rag-jax")
  assert message.startswith("no-such-org/no-such-model-rag-jax: no such directory, and the hub "
                            "download failed: We couldn't connect")


def test_torch_bin_with_a_non_tensor_entry(tmp_path):
  model = transformers.BertModel(transformers.BertConfig(**TINY_BERT))
  model.config.save_pretrained(tmp_path)
  state = dict(model.state_dict(), extra=3)
  torch.save(state, tmp_path / "pytorch_model.bin")
  assert "entry extra is a int, not a tensor" in _error(weights.load, tmp_path)


def test_corrupt_torch_bin(tmp_path):
  transformers.BertModel(transformers.BertConfig(**TINY_BERT)).config.save_pretrained(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")
  assert "unreadable torch checkpoint" in _error(weights.load, tmp_path)


def test_unknown_activation_fails_at_load(bert_dir):
  config = json.loads((bert_dir / "config.json").read_text())
  config["hidden_act"] = "swiglu_nope"
  (bert_dir / "config.json").write_text(json.dumps(config))
  assert "unsupported activation function 'swiglu_nope'" in _error(weights.load_bert, bert_dir)


def test_tokenizer_loads_from_the_same_directory(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
  tok = weights.load_tokenizer(tmp_path)
  assert tok("hello world")["input_ids"] == [2, 5, 6, 3]


@pytest.mark.parametrize("kind", ["bert", "bart", "llama"])
def test_tiny_params_have_flax_inits_tree_shapes_and_distributions(kind):
  """weights.tiny draws its params in NumPy: the tree and shapes of the module's own `init`,
  and its initializers' distributions (normal(0, 0.02) matrices, zero biases, unit scales)."""
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from rag_jax.models import bart, bert, llama  # pylint: disable=import-outside-toplevel
  from rag_jax.weights import tiny  # pylint: disable=import-outside-toplevel
  module, base, n_ids = {
      "bert": (lambda c: bert.BertEncoder(bert.BertConfig.from_hf(c)), tiny.QUESTION_ENCODER, 2),
      "bart": (lambda c: bart.Bart(bart.BartConfig.from_hf(c)), tiny.GENERATOR, 3),
      "llama": (lambda c: llama.Llama(llama.LlamaConfig.from_hf(c)), tiny.LLAMA, 2)}[kind]
  # pylint: disable=protected-access
  module = module(tiny._shapes(base, {"hidden_size": 64, "d_model": 64}, 500))
  ids = [np.ones((1, 4), np.int32)] * n_ids
  ours = flax.traverse_util.flatten_dict(
      tiny._random_params(module, 0.02, np.random.default_rng(0), *ids))
  flax_init = flax.traverse_util.flatten_dict(
      flax.linen.meta.unbox(module.init(jax.random.PRNGKey(0), *ids)["params"]))
  assert ours.keys() == flax_init.keys()
  for path, ref in flax_init.items():
    ref, value = np.asarray(ref), ours[path]
    assert value.shape == ref.shape and value.dtype == ref.dtype == np.float32, path
    if path[-1] in ("kernel", "embedding"):
      assert value.mean() == pytest.approx(0, abs=0.003), path
      assert value.std() == pytest.approx(ref.std(), rel=0.1) and ref.std() == pytest.approx(
          0.02, rel=0.1), path
    else:
      np.testing.assert_array_equal(value, ref, err_msg=str(path))
