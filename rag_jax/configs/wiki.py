"""RAG over the embedded Wikipedia: `python -m rag_jax.ask`'s default config.

MiniLM (all-MiniLM-L6-v2) retrieves from the 10,033 embedded article leads, split into passages
of at most 100 words (12,324 of them) and embedded once into an exact index cached under
$RAG_JAX_CACHE; SmolLM2-135M-Instruct (GGUF Q4_1, dequantised) answers, marginalising over the
top k passages: RAG-Token by default, RAG-Sequence with `kind = "sequence"`, greedy either way.

The doc prior p(z|x) is a softmax of the k retrieval scores divided by `doc_temperature`.
MiniLM's scores are cosines (about 0.2-0.8 for related passages), so a temperature of 1 would
give every passage nearly the same weight. The value below is the one of a sweep that gives the
dev set's gold answers (tests/data/wiki_dev.jsonl, 46 questions each answered in one article)
the highest RAG-Token likelihood: `python -m rag_jax.ask --dev tests/data/wiki_dev.jsonl
--temperatures 0.01,0.02,0.05,0.1,0.2,0.5,1` (benchmarks/RESULTS.md has the table).

`:small` holds 1,000 of the articles, chosen without randomness: the answer articles of the
default questions (`include_titles`) and 995 others spread evenly over the corpus (about every
10th article in title order), so that it samples every subject the whole corpus covers. A
question about an article outside it finds the nearest one inside.

    python -m rag_jax.ask                                  # the default questions
    python -m rag_jax.ask --question "Who painted the Mona Lisa?" --json
    python -m rag_jax.ask --kind sequence --heatmap mona.png --question "Who painted the Mona Lisa?"
    python -m rag_jax.ask --closed-book                    # the generator alone, no passages
    python -m rag_jax.ask --config rag_jax/configs/wiki.py:small
    python -m rag_jax.ask --config.index=wiki-idx          # a saved index (rag_jax.index build)
    python -m rag_jax.ask --config.generator=none          # passages only, no generator
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
  c.max_length = 256       # tokens per passage or question, for the retriever
  c.batch_size = 64        # texts per encoder call
  c.k = 5                  # passages per question

  # The generator: a GGUF file or a directory with one, an HF Llama or BART directory, or
  # "none" (passages only).
  c.generator = "asset:smollm2-135m-instruct"
  c.system_prompt = "Answer in English, in a few words."  # the chat template's system turn
  # Each passage's prompt: title + title_sep + text + doc_sep + question (HF RAG's is
  # " / " and " // "; these read as prose to an instruct model, and answered 26 of the dev
  # set's 46 questions against HF's 24).
  c.title_sep = ": "
  c.doc_sep = "\n\nQuestion: "
  c.kind = "token"         # "token" (RAG-Token) or "sequence" (RAG-Sequence)
  c.doc_temperature = 0.02
  c.max_new_tokens = 32    # answer tokens, EOS included
  c.max_prompt_length = 256  # tokens per prompt; a longer passage loses its end
  c.questions_per_batch = 8  # questions decoded together (each with its k passages)
  c.questions = [
      "Who painted the Mona Lisa?",
      "What is the largest planet in the solar system?",
      "Which scientist developed the theory of general relativity?",
      "What language is spoken in Brazil?",
      "Who wrote the novel War and Peace?",
  ]
  return c
