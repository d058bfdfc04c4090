"""Dense retrieval over the embedded Wikipedia default (MiniLM retriever, 10,033 articles).

The retrieval half of RAG on real weights and real text, as it stands until the generator
lands: the article leads, split into passages of at most 100 words (12,324 of them), are
embedded once with the document encoder into an index cached under $RAG_JAX_CACHE; the
questions are embedded with the query encoder, and the top-k passages by inner product
(exact MIPS) are returned.

`:small` holds 1,000 of the articles, chosen without randomness: the answer articles of the
default questions (`include_titles`) and 995 others spread evenly over the corpus (about
every 10th article in title order), so that it samples every subject the whole corpus
covers. A question about an article outside it finds the nearest one inside.

    python -m rag_jax.ask --config experiments/wiki_retrieval.py
    python -m rag_jax.ask --config experiments/wiki_retrieval.py:small   # 1,000 articles
    python -m rag_jax.ask --config experiments/wiki_retrieval.py --question "Who painted the Mona Lisa?"
    python -m rag_jax.ask --config experiments/wiki_retrieval.py --config.index=wiki-idx
    python -m rag_jax.ask --config experiments/wiki_retrieval.py --config.k=5 --dev tests/data/wiki_dev.jsonl
"""

import ml_collections


VARIANTS = ("", "small")


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r}; expected 'small' or none")
  c = ml_collections.ConfigDict()
  # A local HF / sentence-transformers directory, a hub name, or "asset:NAME" (rag_jax.assets).
  c.encoder = "asset:all-MiniLM-L6-v2"
  # JSONL articles or DPR TSV passages: a path, or asset:wiki-summaries-en.
  c.corpus = "asset:wiki-summaries-en"
  # A saved index (python -m rag_jax.index build) to search instead of the corpus's, and the
  # questions' encoder for it ("": the index's own, which its manifest names).
  c.index = ""
  c.query_encoder = ""
  # 0: every article; N: N of them, those titled `include_titles` and the rest spread evenly.
  c.max_articles = 1000 if arg == "small" else 0
  c.include_titles = ["Mona Lisa", "Jupiter", "Albert Einstein", "Brazil", "War and Peace"]
  c.max_length = 256       # tokens per passage or question
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
