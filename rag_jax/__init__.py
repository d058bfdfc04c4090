"""rag_jax: Retrieval-Augmented Generation (Lewis et al. 2020) in JAX/Flax."""

import os

# rag_jax uses transformers for tokenizers and configs only, so its advice at import that
# PyTorch is missing is noise (every command printed it). This silences all of transformers'
# advisory warnings in the process (and its children), and only if transformers is imported
# after rag_jax; a value the user set is kept.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# pylint: disable=wrong-import-position
from rag_jax.model import RagModel
from rag_jax.rag import RagConfig

__version__ = "0.1.0"
