"""The one error of checkpoint loading. A leaf: imports nothing of rag_jax."""


class WeightsError(ValueError):
  """A checkpoint that cannot be loaded; the message says why in one line."""
