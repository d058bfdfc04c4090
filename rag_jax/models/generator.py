"""One generator interface: everything RAG's loss and decoding ask of a generator.

The RAG code (rag.py: the loss, the doc posteriors; decoding.py: greedy and beam search,
RAG-Token, RAG-Sequence thorough and fast) reaches a generator only through `Generator`:

    target_logits(params, context_ids, context_mask, targets)    teacher forcing, [N, T, V]
    prefill(params, context_ids, context_mask, length, copies=C, group=G) -> cache
    step(params, tokens, cache) -> (logits, cache)                any number of new positions
    reorder(cache, rows, group) -> cache                          beam search
    pad_token_id, eos_token_id, start_token_id, bos_token_id,
    forced_bos_token_id, forced_eos_token_id, vocab_size, has_encoder

Two implementations, neither special-cased by the RAG code:
  `BartGenerator`: an encoder-decoder. `prefill` encodes the contexts and projects each
    decoder layer's cross-attention keys/values once.
  `DecoderOnlyGenerator`: a Llama. The context is the prompt and the target follows it:
    `prefill` runs the prompts into a KV cache. Contexts of different lengths are padded on
    either side (the model counts each row's positions from its mask, and never attends to
    padding), so every target starts at column S, right after the padded context;
    `contexts.join_contexts` right-pads them.
Both read the C continuations (beams, or scored candidates) of a context against one copy of
what they condition on (layers.share_rows), never C copies.

A target row, for both, starts with `start_token_id` (BART's decoder start token; for a
decoder-only model a token that follows the prompt, e.g. a newline) and the logits at
position i predict its token i + 1: the labels of HF's RAG, unshifted.

Shapes: N = rows (B * C * G: examples x copies x contexts per example), S = context length,
T = target positions, L = cache length, V = vocabulary.
"""

import dataclasses
from typing import Any, ClassVar, Dict, Optional, Protocol, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from rag_jax.models import bart as bart_lib
from rag_jax.models import layers
from rag_jax.models import llama as llama_lib

Array = jax.Array
Rngs = Optional[Dict[str, Array]]


class Generator(Protocol):
  """What RAG needs from a generator (see the module docstring)."""
  module: nn.Module
  has_encoder: bool          # soft retrieval mixes encoder states: only with an encoder
  start_token_id: int        # every target row starts with it
  pad_token_id: int
  eos_token_id: int
  bos_token_id: Optional[int]
  forced_bos_token_id: Optional[int]
  forced_eos_token_id: Optional[int]
  vocab_size: int

  def target_logits(self, params, context_ids: Array, context_mask: Array, targets: Array, *,
                    deterministic: bool = True, rngs: Rngs = None) -> Array:
    """[N, S] contexts, [N, T] targets -> float32 logits [N, T, V], teacher forced."""

  def prefill(self, params, context_ids: Array, context_mask: Array, length: int, *,
              copies: int = 1, group: int = 1) -> Any:
    """[B * G, S] contexts -> a cache of B * C * G rows for `length` new positions, ordered
    (example, copy, context of the group); the C copies share one reading of each context."""

  def step(self, params, tokens: Array, cache: Any) -> Tuple[Array, Any]:
    """[N, T] new tokens -> float32 logits [N, T, V] and the advanced cache."""

  def reorder(self, cache: Any, rows: Array, group: int = 1) -> Any:
    """The cache with row block i taken from block rows[i] (blocks of `group` rows)."""


@flax.struct.dataclass
class BartCache:
  """BART's decoding state: the decoder cache and the mask of its encoder rows."""
  decoder: bart_lib.DecoderCache
  context_mask: Optional[Array]  # [B * G, S], one row per encoder row of the cache


@dataclasses.dataclass(frozen=True)
class BartGenerator:
  """`Generator` over a Bart (encoder-decoder).

  Attributes:
    module: the Bart (unscanned for prefill / step: a cache per layer).
    start_token_id: None: the config's decoder_start_token_id.
  """
  module: bart_lib.Bart
  start_token_id: Optional[int] = None
  has_encoder: ClassVar[bool] = True

  def __post_init__(self):
    if self.start_token_id is None:
      object.__setattr__(self, "start_token_id", self.module.config.decoder_start_token_id)

  pad_token_id = property(lambda self: self.module.config.pad_token_id)
  eos_token_id = property(lambda self: self.module.config.eos_token_id)
  bos_token_id = property(lambda self: self.module.config.bos_token_id)
  forced_bos_token_id = property(lambda self: self.module.config.forced_bos_token_id)
  forced_eos_token_id = property(lambda self: self.module.config.forced_eos_token_id)
  vocab_size = property(lambda self: self.module.config.vocab_size)

  def _apply(self, params, *args, method, deterministic: bool = True, rngs: Rngs = None,
             **kwargs):
    return self.module.apply({"params": params}, *args, method=method,
                             deterministic=deterministic, rngs=rngs, **kwargs)

  def encode(self, params, context_ids: Array, context_mask: Optional[Array], *,
             deterministic: bool = True, rngs: Rngs = None) -> Array:
    """[N, S] -> encoder states [N, S, D] (soft retrieval mixes these)."""
    return self._apply(params, context_ids, context_mask, method=bart_lib.Bart.encode,
                       deterministic=deterministic, rngs=rngs)

  def decode(self, params, targets: Array, states: Array, states_mask: Optional[Array], *,
             deterministic: bool = True, rngs: Rngs = None) -> Array:
    """[N, T] targets over encoder states [N, S, D] -> float32 logits [N, T, V]."""
    return self._apply(params, targets, states, states_mask, method=bart_lib.Bart.decode,
                       deterministic=deterministic, rngs=rngs)

  def target_logits(self, params, context_ids, context_mask, targets, *, deterministic=True,
                    rngs=None):
    states = self.encode(params, context_ids, context_mask, deterministic=deterministic,
                         rngs=rngs)
    return self.decode(params, targets, states, context_mask, deterministic=deterministic,
                       rngs=rngs)

  def prefill(self, params, context_ids, context_mask, length, *, copies=1, group=1):
    # The encoder runs and the cross-attention keys/values are projected once per context;
    # only the self-attention buffers are per decoder row (DecoderCache.cross_copies).
    states = self.encode(params, context_ids, context_mask)
    cache = self.module.apply({"params": params}, states, length,
                              method=bart_lib.Bart.init_cache)
    cache = cache.replace(self_attn=layers.expand_rows(cache.self_attn, copies, group),
                          cross_copies=copies, cross_group=group)
    return BartCache(cache, context_mask)

  def step(self, params, tokens, cache):
    logits, decoder = self._apply(params, tokens, cache.decoder, cache.context_mask,
                                  method=bart_lib.Bart.decode_step)
    return logits, cache.replace(decoder=decoder)

  def reorder(self, cache, rows, group=1):
    # Beams never change example, so the encoder rows they share stay where they are.
    decoder = cache.decoder
    return cache.replace(decoder=decoder.replace(
        self_attn=layers.take_rows(decoder.self_attn, rows, group)))


@dataclasses.dataclass(frozen=True)
class DecoderOnlyGenerator:
  """`Generator` over a Llama: the context is the prompt, the target follows it.

  Attributes:
    module: the Llama.
    start_token_id: the token every target starts with, fed right after the prompt (its
      logits predict the first answer token). None: the config's bos_token_id, else its
      eos. `RagModel.from_parts` picks a newline when the tokenizer has one.
    pad_token_id: pads targets and prompts. None: the config's, unless it is missing or is
      the EOS (SmolLM2 pads with its EOS), then the BOS: RAG scores a target up to its
      first pad (HF's rule), so a pad equal to EOS would never score, nor train, the end
      of an answer.
  """
  module: llama_lib.Llama
  start_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  has_encoder: ClassVar[bool] = False
  forced_bos_token_id: ClassVar[Optional[int]] = None
  forced_eos_token_id: ClassVar[Optional[int]] = None

  def __post_init__(self):
    c = self.module.config
    if self.start_token_id is None:
      object.__setattr__(self, "start_token_id",
                         c.bos_token_id if c.bos_token_id is not None else self.eos_token_id)
    if self.pad_token_id is None:
      pad = c.pad_token_id
      if pad is None or pad == self.eos_token_id:
        pad = c.bos_token_id
      if pad is None or pad == self.eos_token_id:
        raise ValueError("the Llama has no pad token apart from its EOS, nor a BOS to pad "
                         "with; give DecoderOnlyGenerator a pad_token_id")
      object.__setattr__(self, "pad_token_id", pad)

  @property
  def eos_token_id(self) -> int:
    """The config's EOS (the first, if it lists several)."""
    eos = self.module.config.eos_token_id
    return int(eos[0]) if isinstance(eos, (list, tuple)) else int(eos)

  bos_token_id = property(lambda self: self.module.config.bos_token_id)
  vocab_size = property(lambda self: self.module.config.vocab_size)

  def target_logits(self, params, context_ids, context_mask, targets, *, deterministic=True,
                    rngs=None):
    return self.module.apply({"params": params}, context_ids, context_mask, targets,
                             method=llama_lib.Llama.continuation_logits,
                             deterministic=deterministic, rngs=rngs)

  def prefill(self, params, context_ids, context_mask, length, *, copies=1, group=1):
    # The prompt's keys/values are stored once per context; each copy (beam) writes its own
    # tokens' keys/values into its own buffer of `length` slots (LlamaCache.prefix).
    if context_mask is None:
      context_mask = jnp.ones_like(context_ids)
    return self.module.apply({"params": params}, context_ids, context_mask, length,
                             copies=copies, group=group, method=llama_lib.Llama.prefill)

  def step(self, params, tokens, cache):
    return self.module.apply({"params": params}, tokens, cache,
                             method=llama_lib.Llama.decode_step)

  def reorder(self, cache, rows, group=1):
    # The shared prompts stay; each beam's own buffer, mask and positions move with it.
    own = layers.take_rows((cache.self_attn, cache.mask, cache.positions), rows, group)
    return cache.replace(self_attn=own[0], mask=own[1], positions=own[2])


GENERATORS = (BartGenerator, DecoderOnlyGenerator)
# Caches with rows shared by several decoder rows: reordered by their Generator only.
CACHES = (BartCache, bart_lib.DecoderCache, llama_lib.LlamaCache)


def adapt(generator: Union[nn.Module, Generator],
          start_token_id: Optional[int] = None) -> Generator:
  """The `Generator` of a model: a Bart -> BartGenerator, a Llama -> DecoderOnlyGenerator;
  a Generator is returned as it is (with `start_token_id`, if given, replacing its own).

  Raises:
    TypeError: a module that implements no generator.
  """
  if isinstance(generator, GENERATORS):
    if start_token_id is None or start_token_id == generator.start_token_id:
      return generator
    return dataclasses.replace(generator, start_token_id=start_token_id)
  if isinstance(generator, bart_lib.Bart):
    return BartGenerator(generator, start_token_id)
  if isinstance(generator, llama_lib.Llama):
    return DecoderOnlyGenerator(generator, start_token_id)
  raise TypeError(f"no generator interface for {type(generator).__name__} (expected a Bart or "
                  "a Llama)")
