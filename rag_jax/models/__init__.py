"""Pure Flax (linen) modules: no I/O, no mesh."""

from rag_jax.models.bart import Bart, BartConfig, DecoderCache, shift_tokens_right
from rag_jax.models.bert import BertConfig, BertEncoder
from rag_jax.models.generator import BartGenerator, DecoderOnlyGenerator, Generator, adapt
from rag_jax.models.layers import KVCache
from rag_jax.models.llama import Llama, LlamaCache, LlamaConfig
