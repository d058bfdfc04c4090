"""The main job: `python -m rag_jax.ask` (__main__: flags) answers questions from the embedded
Wikipedia with SmolLM2: the retriever over it (retrieval), question files and dev scores
(questions), the answerer (answering) and the posterior heatmaps (heatmaps)."""
