"""Ahead-of-time compilation of the train step for a machine you do not have:
`python -m rag_jax.compile` (__main__: flags)."""
