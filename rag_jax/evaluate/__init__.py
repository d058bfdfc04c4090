"""Evaluation: `python -m rag_jax.evaluate` (__main__: flags), evaluation from predict functions
(evaluation) and the paper's metrics (metrics)."""
