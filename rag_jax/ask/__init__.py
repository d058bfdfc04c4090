"""The main job: `python -m rag_jax.ask` (__main__: flags) answers questions from the embedded
Wikipedia with SmolLM2; the answerer, and the posterior heatmaps."""
