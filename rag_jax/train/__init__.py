"""Training: `python -m rag_jax.train` (__main__: flags), the loop (loop), the step, its state
and optimizer (step, optimizer), the run's setup (setup), a batch's retrieval (retrieval), the
run's predict function for evaluation (predict), the input pipeline and the :wiki demos
(demo)."""
