"""Dense retrieval over the embedded Wikipedia default (MiniLM retriever, 10,033 articles).

The retrieval half of RAG on real weights and real text, as it stands until the generator
lands: embed every article lead with the document encoder, embed the questions with the
query encoder, and return the top-k articles by inner product (exact MIPS).

    python -m rag_jax.ask --config experiments/wiki_retrieval.py
    python -m rag_jax.ask --config experiments/wiki_retrieval.py:small   # 1,000 articles
    python -m rag_jax.ask --config experiments/wiki_retrieval.py --question "Who painted the Mona Lisa?"
    python -m rag_jax.ask --config experiments/wiki_retrieval.py --config.index=wiki-idx
"""

import ml_collections


VARIANTS = ("", "small")


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; expected 'small' or none")
  c = ml_collections.ConfigDict()
  # A local HF / sentence-transformers directory, a hub name, or "asset:NAME" (rag_jax.assets).
  c.encoder = "asset:all-MiniLM-L6-v2"
  c.corpus = "asset:wiki-summaries-en"
  # A saved index (python -m rag_jax.index build) to search instead of embedding `corpus`,
  # and the questions' encoder for it ("": the index's own, which its manifest names).
  c.index = ""
  c.query_encoder = ""
  c.max_passages = 1000 if arg == "small" else 0  # 0 = all
  c.max_length = 256       # tokens per passage
  c.batch_size = 64
  c.k = 3
  c.questions = [
      "Who painted the Mona Lisa?",
      "What is the largest planet in the solar system?",
      "Which scientist developed the theory of general relativity?",
      "What language is spoken in Brazil?",
      "Who wrote the novel War and Peace?",
  ]
  return c
