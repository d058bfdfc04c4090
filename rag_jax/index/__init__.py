"""The retrieval index: the passages (`corpus`, read streamed and stored for random access by
row), their vectors (`embed`), the search backends, one module each behind `search.build`
(`exact`, `approx` and their on-device layout `ondevice`; `scann_search`, `faiss_hnsw` on the
host; `bm25` for the ablation; `device` for exact search on the training mesh), the saved,
checksummed format (`saved`, `python -m rag_jax.index`) and the live, hot-swappable
`retriever`. Every backend answers `search(queries[B, D], k) -> (scores[B, k], ids[B, k])`."""
