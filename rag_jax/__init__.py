"""rag_jax: Retrieval-Augmented Generation (Lewis et al. 2020) in JAX/Flax."""

from rag_jax.rag import RagConfig, RagModel

__version__ = "0.1.0"
