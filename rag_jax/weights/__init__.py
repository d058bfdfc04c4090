"""Checkpoints -> (Flax module, param pytree), without torch at run time.

A checkpoint is an HF directory (`config.json` and `model.safetensors`, a sharded
`model.safetensors.index.json`, or a legacy `pytorch_model.bin`), a GGUF file (a Llama), an
`asset:NAME` or a hub name when the network allows. Supported: `bert` / `dpr` (BertModel,
DPRQuestionEncoder, DPRContextEncoder, sentence-transformers BERT models such as
all-MiniLM-L6-v2), `bart` (BartModel, BartForConditionalGeneration) and `llama`
(LlamaForCausalLM, GGUF). A checkpoint never loads half-right: anything missing, misshapen or
unexpected is a one-line `WeightsError`.

Modules: `errors` (WeightsError, a leaf), `hub` (where a checkpoint is), `state` (state dict
readers and the conversion to our params), one per architecture with its name map beside its
loader (`bert`, `bart`, `llama`), `gguf_file` (llama.cpp's format), `tokenizer`, `loader`
(dispatch), and `tiny` (tiny random checkpoints for `:tiny` and the tests).
"""

from rag_jax.weights.bart import bart_names, load_bart
from rag_jax.weights.bert import bert_names, load_bert
from rag_jax.weights.errors import WeightsError
from rag_jax.weights.hub import read_json, resolve
from rag_jax.weights.llama import llama_names, load_llama
from rag_jax.weights.loader import load, load_generator
from rag_jax.weights.state import convert_state_dict, read_state_dict
from rag_jax.weights.tokenizer import load_tokenizer, load_tokenizer_if_present
