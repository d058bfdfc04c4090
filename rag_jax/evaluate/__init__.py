"""Evaluation: `python -m rag_jax.evaluate` (__main__: flags), the `Evaluator` of predict
functions (evaluation) and the paper's metrics (metrics). A training run's predict function is
`rag_jax.train.predict`'s."""
